"""Overlap-tile inference: seam-free stitching, mirror padding, plans and the HTTP options."""

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Device, Settings
from app.errors import InvalidParameter
from app.inference.pipeline import mirror_pad, padded_channels, segment
from app.inference.registry import ModelRegistry
from app.inference.tiling import (
    Stopped,
    TilePlan,
    TileSource,
    choose_plan,
    segment_tiled,
    tile_shape,
    tile_starts,
)
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import spec_for, write_model


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("tiling-models")
    write_model(folder, "box", "tiny-box")
    write_model(folder, "brightest", "tiny-rgb")
    registry = ModelRegistry(Settings(model_dir=folder, device=Device.cpu, intra_op_threads=1))
    registry.discover()
    registry.load_all()
    return registry


def entry(registry: ModelRegistry, name: str):  # type: ignore[no-untyped-def]
    (model,) = [e for e in registry.served() if e.name == name]
    return model


def noise(height: int, width: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (50, 1), (63, 64), (200, 131), (97, 300)])
@pytest.mark.parametrize("plan", [TilePlan(32, 8), TilePlan(48, 4, batch=3)])
def test_pixelwise_model_tiled_equals_whole(
    registry: ModelRegistry, shape: tuple[int, int], plan: TilePlan
) -> None:
    model = entry(registry, "tiny-rgb")
    pixels = noise(*shape, channels=3)
    tiled = segment_tiled(model, pixels, plan)
    assert np.array_equal(tiled.labels, segment(model, pixels).labels)
    tile_h, tile_w = tile_shape(plan.size, *shape, multiple=1)
    rows = len(tile_starts(shape[0], tile_h, plan.overlap))
    assert tiled.tiles == rows * len(tile_starts(shape[1], tile_w, plan.overlap))


def test_context_model_is_seam_free_with_overlap_and_not_without(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-box")
    pixels = noise(150, 170)
    whole = segment(model, pixels).labels
    with_overlap = segment_tiled(model, pixels, TilePlan(40, 4)).labels
    without = segment_tiled(model, pixels, TilePlan(40, 0)).labels
    assert np.array_equal(with_overlap, whole)  # borders too: tiles end at the image edge
    assert not np.array_equal(without, whole)  # seams without context


def test_tile_starts_cover_the_axis_with_the_last_tile_flush() -> None:
    assert tile_starts(100, 64, 8) == [0, 36]
    assert tile_starts(120, 64, 8) == [0, 48, 56]
    assert tile_starts(64, 64, 8) == [0]
    assert tile_starts(1000, 512, 96) == [0, 320, 488]


def test_size_multiple_padding_is_mirrored(tmp_path: Path) -> None:
    write_model(tmp_path, "box", "tiny-box-16", size_multiple=16)
    registry = ModelRegistry(Settings(model_dir=tmp_path, device=Device.cpu, intra_op_threads=1))
    registry.discover()
    registry.load_all()
    (model,) = registry.served()
    pixels = noise(101, 77, seed=4)
    whole = segment(model, pixels).labels
    assert np.array_equal(segment_tiled(model, pixels, TilePlan(48, 8)).labels, whole)


def test_mirror_pad_repeats_reflection_for_pads_wider_than_the_image() -> None:
    pixels = np.arange(3, dtype=np.uint8).reshape(1, 1, 3)
    padded = mirror_pad(np.repeat(pixels, 2, axis=1), 0, 5)
    assert padded[0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]


@pytest.mark.parametrize("options", [{}, {"confidence": True}, {"tta": True}])
def test_pipelined_tiles_give_the_same_maps(
    registry: ModelRegistry, options: dict[str, bool]
) -> None:
    """Preparing the next batch while one runs (the CUDA default) changes no pixel, also
    with a short last batch."""
    model = entry(registry, "tiny-box")
    pixels = noise(150, 170, seed=3)
    plan = TilePlan(40, 4, batch=4)  # 30 tiles: the last batch is short
    plain = segment_tiled(model, pixels, plan, **options)
    model.pipelined_tiles = True
    try:
        pipelined = segment_tiled(model, pixels, plan, **options)
    finally:
        model.pipelined_tiles = False
    assert pipelined.tiles == plain.tiles and pipelined.tiles % plan.batch != 0
    assert np.array_equal(pipelined.labels, plain.labels)
    if options.get("confidence"):
        assert np.array_equal(pipelined.confidence, plain.confidence)  # type: ignore[arg-type]


def test_confidence_and_tta(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-rgb")
    pixels = noise(70, 90, channels=3, seed=5)
    plain = segment(model, pixels, confidence=True)
    assert plain.confidence is not None and plain.confidence.shape == (70, 90)
    assert plain.confidence.min() >= 255 // 3  # top of 3 classes is at least a third
    tiled = segment_tiled(model, pixels, TilePlan(32, 8), confidence=True, tta=True)
    # A pixelwise model is unchanged by flips and rotations: TTA gives the same answer.
    assert np.array_equal(tiled.labels, plain.labels)
    assert np.abs(tiled.confidence.astype(int) - plain.confidence).max() <= 1  # type: ignore[union-attr]


def test_choose_plan_rules() -> None:
    spec = spec_for("threshold", "t", size_multiple=8, tile={"size": 256, "overlap": 32})
    assert choose_plan(spec, 104, 104, 104 * 104) is None  # fits one pass
    assert choose_plan(spec, 104, 105, 104 * 104) == TilePlan(256, 32)
    # The one-pass limit counts padded pixels: 100 x 100 is 104 x 104 to this model.
    assert choose_plan(spec, 100, 100, 104 * 104) is None
    assert choose_plan(spec, 100, 100, 104 * 104 - 1) == TilePlan(256, 32)
    # A thin strip is 8 rows to the model: tiled, however few pixels it has as given.
    assert choose_plan(spec, 1, 4096, 8 * 4096 - 1) == TilePlan(256, 32)
    assert choose_plan(spec, 10, 10, 10**6, "on", 64, 16) == TilePlan(64, 16)
    for bad in [("off", None, None), ("on", 60, 8), ("on", 64, 12), ("on", 64, 32)]:
        size = 10 if bad[0] != "off" else 2000
        with pytest.raises(InvalidParameter):
            choose_plan(spec, size, size, 10**6, *bad)  # type: ignore[arg-type]


def test_http_tiling_options_and_confidence_format(tmp_path: Path) -> None:
    write_model(tmp_path, "box", "tiny-box")
    settings = Settings(
        model_dir=tmp_path, device=Device.cpu, intra_op_threads=1, whole_image_max_pixels=64 * 64
    )
    pixels = noise(100, 120, seed=9)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        whole = client.post(
            "/v1/models/tiny-box/segment?tiling=off", content=png_bytes(pixels),
            headers={"content-type": "image/png"},
        )  # fmt: skip
        assert whole.status_code == 422  # 12000 px > SEG_WHOLE_IMAGE_MAX_PIXELS
        auto = client.post(
            "/v1/models/tiny-box/segment?tile_size=64&tile_overlap=8",
            content=png_bytes(pixels), headers={"content-type": "image/png"},
        )  # fmt: skip
        assert auto.status_code == 200
        assert auto.headers["x-tiles"] == "6"  # rows start at 0, 36; columns at 0, 48, 56
        confidence = client.post(
            "/v1/models/tiny-box/segment?format=confidence",
            content=png_bytes(pixels), headers={"content-type": "image/png"},
        )  # fmt: skip
        image = Image.open(io.BytesIO(confidence.content))
        assert image.mode == "L" and image.size == (120, 100)
        assert np.asarray(image).min() >= 127  # top of 2 classes is at least a half
        bad = client.post(
            "/v1/models/tiny-box/segment?tiling=on&tile_size=64&tile_overlap=40",
            content=png_bytes(pixels), headers={"content-type": "image/png"},
        )  # fmt: skip
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"


def test_tiled_work_stops_between_tiles_when_told(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-rgb")
    checks: list[int] = []

    def should_stop() -> bool:
        checks.append(1)
        return len(checks) > 3

    with pytest.raises(Stopped, match="after 3 of"):
        segment_tiled(model, noise(200, 200, 3), TilePlan(32, 8), should_stop=should_stop)


def test_thin_images_get_long_tiles_of_the_same_area() -> None:
    assert tile_shape(512, 16, 1_000_000, 16) == (16, 16384)
    assert tile_shape(512, 1_000_000, 16, 16) == (16384, 16)
    assert tile_shape(512, 16, 3000, 16) == (16, 3000)  # one tile holds it all
    assert tile_shape(512, 100, 100, 4) == (100, 100)
    assert tile_shape(512, 2048, 4096, 16) == (512, 512)
    assert tile_shape(512, 24, 20_000, 8) == (24, 10920)  # a multiple of 8 within the area


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 41), (8, 100), (3, 3), (129, 7)])
@pytest.mark.parametrize("size", [16, 24, 64])
def test_tile_source_equals_slices_of_the_whole_padded_image(
    channels: int, height: int, width: int, size: int
) -> None:
    spec = spec_for("threshold", "t", size_multiple=8)
    pixels = noise(height, width, channels=channels, seed=height * width)
    whole = padded_channels(pixels, spec)
    padded_h, padded_w = whole.shape[1:]
    tile_h, tile_w = tile_shape(size, padded_h, padded_w, 8)
    source = TileSource(pixels, spec, tile_h, tile_w)
    for y in tile_starts(padded_h, tile_h, 4):
        for x in tile_starts(padded_w, tile_w, 4):
            expected = whole[:, y : y + tile_h, x : x + tile_w]
            assert np.array_equal(source.tile(y, x, tile_h, tile_w), expected), (y, x)


def test_tiles_before_first_tile_are_skipped_and_progress_is_reported(
    registry: ModelRegistry,
) -> None:
    model = entry(registry, "tiny-rgb")
    pixels = noise(90, 100, channels=3, seed=3)
    full = segment_tiled(model, pixels, TilePlan(32, 8))
    out = np.full((90, 100), 255, np.uint8)
    seen: list[tuple[int, int]] = []
    resumed = segment_tiled(model, pixels, TilePlan(32, 8), labels_out=out, first_tile=5,
                            on_progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert resumed.labels is out
    assert seen[0] == (6, full.tiles) and seen[-1] == (full.tiles, full.tiles)
    assert len(seen) == full.tiles - 5
    # Tiles 0-4 were not run again: their centres keep the marker, the rest is the map.
    assert (out == 255).any()
    done_again = segment_tiled(model, pixels, TilePlan(32, 8), labels_out=out)
    assert np.array_equal(done_again.labels, full.labels)


def test_plan_counts_padding_on_each_axis_and_takes_the_models_batch() -> None:
    spec = spec_for("threshold", "t", size_multiple=8, tile={"size": 64, "overlap": 8, "batch": 3})
    # 8 x 101 pads to 8 x 104 (not 8 x 106): the one-pass limit sees 832 pixels.
    assert choose_plan(spec, 8, 101, 8 * 104) is None
    assert choose_plan(spec, 8, 101, 8 * 104 - 1) == TilePlan(64, 8, 3)
    assert choose_plan(spec, 101, 8, 104 * 8) is None
    # An overlap just under half the tile is allowed; the model's batch is the default.
    assert choose_plan(spec, 10, 10, 10**6, "on", 64, 24) == TilePlan(64, 24, 3)
    assert choose_plan(spec, 10, 10, 10**6, "on", 64, 24, batch=2) == TilePlan(64, 24, 2)
    bare = spec_for("threshold", "t", size_multiple=8)
    assert choose_plan(bare, 10, 10, 10**6, "on", 64, 8) == TilePlan(64, 8, 1)


def test_session_inputs_are_multiples_of_the_size_multiple(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-box")
    shapes = []
    runner = model.runner

    def recording(output: str, x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return runner(output, x)  # type: ignore[no-any-return, misc]

    model.runner = recording
    try:
        from dataclasses import replace

        assert model.spec is not None
        eight = replace(model, spec=model.spec.model_copy(update={"size_multiple": 8}))
        segment_tiled(eight, noise(101, 203), TilePlan(64, 8))
    finally:
        model.runner = runner
    assert shapes and all(s[2] % 8 == 0 and s[3] % 8 == 0 for s in shapes), shapes


def test_tiled_probabilities_and_confidence_equal_one_pass(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-rgb")
    pixels = noise(90, 130, channels=3, seed=4)
    whole = segment(model, pixels, probabilities=True, confidence=True)
    tiled = segment_tiled(model, pixels, TilePlan(32, 8), probabilities=True, confidence=True)
    assert tiled.probabilities is not None and whole.probabilities is not None
    assert np.allclose(tiled.probabilities, whole.probabilities, atol=1e-6)
    assert np.array_equal(tiled.confidence, whole.confidence)  # type: ignore[arg-type]
    plain = segment_tiled(model, pixels, TilePlan(32, 8))
    assert plain.probabilities is None and plain.confidence is None


def test_resuming_rounds_down_to_a_whole_batch(registry: ModelRegistry) -> None:
    model = entry(registry, "tiny-rgb")
    pixels = noise(90, 100, channels=3, seed=3)
    seen: list[tuple[int, int]] = []
    segment_tiled(model, pixels, TilePlan(32, 8, batch=3), first_tile=5,
                  on_progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen[0][0] == 6  # tiles 3-5 again (the batch holding tile 5), then on
    assert seen[-1][0] == seen[-1][1]


def test_choose_plan_refusals_say_what_to_change() -> None:
    """Each 400's detail names the limit or the rule and the parameter to change."""
    spec = spec_for("threshold", "t", size_multiple=8, tile={"size": 256, "overlap": 32})
    details = []
    for size, bad in [(2000, ("off", None, None)), (10, ("on", 60, 8)), (10, ("on", 64, 32))]:
        with pytest.raises(InvalidParameter) as refused:
            choose_plan(spec, size, size, 10**6, *bad)  # type: ignore[arg-type]
        details.append(refused.value.detail)
    assert details == [
        "tiling=off allows at most 1000000 pixels (padded to the size multiple 8) in one "
        "pass; use tiling=auto",
        "tile_size and tile_overlap must be multiples of 8 for this model",
        "tile_overlap must be less than half of tile_size",
    ]
