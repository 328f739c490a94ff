"""Which tile writes which pixel, pinned with hand-written expected maps.

A numpy "model" (a ModelEntry whose runner is plain numpy, no onnxruntime) answers, at
every pixel, the pixel's row or column inside its tile as the class. The stitched map then
shows, pixel by pixel, which part of which tile was kept: the expected rows below are
written out by hand from the overlap-tile rule (keep all but `overlap` on each inner side,
the whole tile edge at the image borders, the last tile flush with the end).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.inference.model_entry import ModelEntry
from app.inference.pipeline import Stopped
from app.inference.tiling import TilePlan, TileSource, segment_tiled
from tests.app.tiny_models import spec_for

K = 24  # classes: enough for any local row/column index used below


def positional_entry(
    axis: str, size_multiple: int = 1, input_dtype: str = "float32", pipelined: bool = False
) -> tuple[ModelEntry, list[np.ndarray]]:
    """A model whose logits are one-hot at the pixel's index along `axis` inside the tile
    (logits 10 for it, 0 elsewhere); every input batch it is given is recorded."""
    spec = spec_for(
        "threshold", "positions", size_multiple=size_multiple,
        classes=[f"c{i}" for i in range(K)], palette=[(i, i, i) for i in range(K)],
        labels_output=None, input_dtype=input_dtype,
    )  # fmt: skip
    seen: list[np.ndarray] = []

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        assert output == "logits"
        seen.append(x.copy())
        n, _, h, w = x.shape
        index = np.arange(h)[:, None] if axis == "row" else np.arange(w)[None, :]
        index = np.broadcast_to(index, (h, w))
        logits = np.zeros((n, K, h, w), np.float32)
        for k in range(K):
            logits[:, k][:, index == k] = 10.0
        return logits

    entry = ModelEntry(
        file="positions.onnx", spec=spec, session=None,
        providers=["numpy"], runner=runner, pipelined_tiles=pipelined,
    )  # fmt: skip
    return entry, seen


# 20 pixels, tiles of 8 with overlap 2: starts 0, 4, 8, 12 (the last flush with the end);
# kept: 0-5 from the first (image border: no overlap dropped), 6-9, 10-13, 14-19 from the
# last. The class is the index inside the tile.
TWENTY = [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("pipelined", [False, True])
def test_columns_come_from_the_centres_of_overlapping_tiles(pipelined: bool) -> None:
    model, seen = positional_entry("column", pipelined=pipelined)
    result = segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2, batch=3))
    assert result.tiles == 16
    assert result.labels.tolist() == [TWENTY] * 20
    assert [x.shape for x in seen] == [(3, 1, 8, 8)] * 6  # 16 tiles: 5 full batches, 1 short


def test_rows_come_from_the_centres_of_overlapping_tiles() -> None:
    model, _ = positional_entry("row")
    result = segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2))
    assert result.labels[:, 0].tolist() == TWENTY
    assert (result.labels == np.array(TWENTY)[:, None]).all()


def test_size_multiple_padding_is_cut_off_after_stitching() -> None:
    # 18 columns pad to 20 (multiple of 4): the same tiles as for 20, the map cut at 18.
    model, seen = positional_entry("column", size_multiple=4)
    result = segment_tiled(model, np.zeros((6, 18), np.uint8), TilePlan(8, 2))
    assert result.labels.shape == (6, 18)
    assert result.labels[0].tolist() == TWENTY[:18]
    # 6 rows pad to 8: one tile high; 4 tiles across.
    assert [x.shape for x in seen] == [(1, 1, 8, 8)] * 4


def test_probabilities_and_confidence_are_stitched_from_the_same_centres() -> None:
    model, _ = positional_entry("column")
    result = segment_tiled(
        model, np.zeros((8, 20), np.uint8), TilePlan(8, 2), probabilities=True, confidence=True
    )
    probabilities, confidence = result.probabilities, result.confidence
    assert probabilities is not None and confidence is not None
    assert probabilities.shape == (K, 8, 20) and probabilities.dtype == np.float32
    top = np.exp(10) / (np.exp(10) + K - 1)  # softmax of one 10 among K - 1 zeros
    expected = np.zeros((K, 8, 20), np.float32) + (1 - top) / (K - 1)
    for column, k in enumerate(TWENTY):
        expected[k, :, column] = top
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert (confidence == round(top * 255)).all() and confidence.dtype == np.uint8
    assert (result.labels == np.array(TWENTY)).all()


def test_nothing_but_labels_is_made_when_nothing_else_is_asked() -> None:
    model, _ = positional_entry("column")
    result = segment_tiled(model, np.zeros((8, 20), np.uint8), TilePlan(8, 2))
    assert result.probabilities is None and result.confidence is None
    only_confidence = segment_tiled(model, np.zeros((8, 20), np.uint8), TilePlan(8, 2),
                                    confidence=True)  # fmt: skip
    assert only_confidence.probabilities is None and only_confidence.confidence is not None


def test_a_short_last_batch_repeats_the_first_tile_of_the_batch() -> None:
    model, seen = positional_entry("column")
    pixels = (np.arange(20 * 20).reshape(20, 20) % 251).astype(np.uint8)
    segment_tiled(model, pixels, TilePlan(8, 2, batch=3))
    last = seen[-1]  # tile 15 alone, then two copies of it
    assert np.array_equal(last[1], last[0]) and np.array_equal(last[2], last[0])
    expected = (pixels[12:20, 12:20] / 255 - 0.5) / 0.5  # spec mean 0.5, std 0.5
    assert np.allclose(last[0, 0], expected, atol=1e-6)


def test_uint8_graphs_get_the_raw_tile_pixels_in_uint8_batches() -> None:
    model, seen = positional_entry("column", size_multiple=4, input_dtype="uint8")
    pixels = (np.arange(18 * 18).reshape(18, 18) % 253).astype(np.uint8)
    result = segment_tiled(model, pixels, TilePlan(8, 2, batch=3))
    assert result.labels[0].tolist() == TWENTY[:18]
    assert all(x.dtype == np.uint8 for x in seen)
    # tile (12, 12): rows/columns 12-17 and the mirrored 16, 15 (padding to 20)
    index = [12, 13, 14, 15, 16, 17, 16, 15]
    assert np.array_equal(seen[-1][0, 0], pixels[np.ix_(index, index)])
    assert np.array_equal(seen[-1][1], seen[-1][0])  # the short batch's filler


def test_progress_is_reported_after_every_batch_with_the_running_count() -> None:
    model, _ = positional_entry("column")
    seen: list[tuple[int, int]] = []
    segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2, batch=3),
                  on_progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(3, 16), (6, 16), (9, 16), (12, 16), (15, 16), (16, 16)]
    resumed: list[tuple[int, int]] = []
    segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2, batch=3), first_tile=7,
                  on_progress=lambda done, total: resumed.append((done, total)))  # fmt: skip
    assert resumed == [(9, 16), (12, 16), (15, 16), (16, 16)]  # from tile 6, the batch of 7


@pytest.mark.parametrize("pipelined", [False, True])
def test_stop_is_asked_before_every_batch_and_no_batch_runs_after_it(pipelined: bool) -> None:
    model, seen = positional_entry("column", pipelined=pipelined)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(len(seen))
        return len(asked) == 3

    with pytest.raises(Stopped, match=r"^stopped after 6 of 16 tiles$"):
        segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2, batch=3),
                      should_stop=should_stop)  # fmt: skip
    assert len(asked) == 3
    assert len(seen) == 2  # the two batches before the stop, none after


def stop_after(calls: int) -> Callable[[], bool]:
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > calls

    return should_stop


def test_tta_inside_a_tile_batch_stops_between_views() -> None:
    model, seen = positional_entry("column")
    with pytest.raises(Stopped, match=r"^stopped after 5 of 8 test-time views$"):
        # the first check is the batch's, then one before each view
        segment_tiled(model, np.zeros((8, 8), np.uint8), TilePlan(8, 2), tta=True,
                      should_stop=stop_after(6))  # fmt: skip
    assert len(seen) == 5


def test_a_tile_thinner_than_its_margin_mirrors_the_whole_image() -> None:
    # 9 x 9 pads to 16 x 16 (multiple 8): the 8 x 8 tile at row 8 holds one real row and 7
    # of padding, which mirror rows 7 .. 1 of the image, not the tile's own row.
    spec = spec_for("threshold", "t", size_multiple=8)
    pixels = (np.arange(81).reshape(9, 9) * 3).astype(np.uint8)
    source = TileSource(pixels, spec, 8, 8)
    mirrored = [8, 7, 6, 5, 4, 3, 2, 1]
    assert source.tile(8, 8, 8, 8)[0].tolist() == pixels[np.ix_(mirrored, mirrored)].tolist()
    assert source.tile(0, 8, 8, 8)[0].tolist() == pixels[np.ix_(range(8), mirrored)].tolist()
    assert source.tile(8, 0, 8, 8)[0].tolist() == pixels[np.ix_(mirrored, range(8))].tolist()
    assert source.tile(0, 0, 8, 8)[0].tolist() == pixels[:8, :8].tolist()


def test_probabilities_alone_are_stitched() -> None:
    model, _ = positional_entry("column")
    result = segment_tiled(model, np.zeros((8, 20), np.uint8), TilePlan(8, 2), probabilities=True)
    assert result.confidence is None and result.probabilities is not None
    top = np.exp(10) / (np.exp(10) + K - 1)
    assert np.allclose(result.probabilities.max(axis=0), top, atol=1e-6)
    assert (result.probabilities.argmax(axis=0) == np.array(TWENTY)).all()


class StrictRegions:
    """An image read a region at a time that takes only integer bounds inside the image."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        bounds = (y0, y1, x0, x1)
        assert all(isinstance(b, int) for b in bounds), bounds
        assert 0 <= y0 < y1 <= self.shape[0] and 0 <= x0 < x1 <= self.shape[1], bounds
        return self.pixels[y0:y1, x0:x1]


@pytest.mark.parametrize(("height", "width"), [(9, 8), (8, 9), (12, 8), (8, 12), (9, 9)])
@pytest.mark.parametrize("regions", [False, True])
def test_tiles_at_a_thick_margin_mirror_the_whole_image(
    height: int, width: int, regions: bool
) -> None:
    # multiple 8, tiles of 8: a margin of 7 (9 -> 16) or 4 (12 -> 16) is at least the
    # tile's real rows there, so mirroring within the tile would differ from the image's.
    spec = spec_for("threshold", "t", size_multiple=8)
    pixels = (np.arange(height * width).reshape(height, width) * 2).astype(np.uint8)
    source = TileSource(StrictRegions(pixels) if regions else pixels, spec, 8, 8)
    rows = [*range(height), *range(height - 2, height - 2 - (-height) % 8, -1)]
    cols = [*range(width), *range(width - 2, width - 2 - (-width) % 8, -1)]
    for y in range(0, len(rows), 8):
        for x in range(0, len(cols), 8):
            expected = pixels[np.ix_(rows[y : y + 8], cols[x : x + 8])]
            assert source.tile(y, x, 8, 8)[0].tolist() == expected.tolist(), (y, x)
