"""The served numbers, pinned against hand-computed values through HTTP.

Normalisation with an asymmetric mean and std, mirror padding to the size multiple,
16-bit and 1-bit conversion, the PNG palette and test-time augmentation are each compared
with the independent numpy reference in tests/app/probes.py, on probe models that have
no symmetry a mistake could hide behind. Every test also checks that the plausible
mistake (zero padding, `v >> 8`, no TTA, ...) would give a different answer.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging.decode import decode_image
from tests.app.conftest import png_bytes
from tests.app.probes import (
    BOX_MEAN,
    BOX_STD,
    BOX_WEIGHT,
    RGB_MEAN,
    RGB_PALETTE,
    RGB_STD,
    TTA_MEAN,
    TTA_STD,
    TTA_WEIGHT,
    logits_against_last,
    reference_conv,
    reference_mirror_pad,
    reference_normalised,
    reference_softmax,
    reference_tta,
    v2_probabilities,
)

PNG = {"content-type": "image/png"}
TILED = "tiling=on&tile_size=64&tile_overlap=16"


def served_labels(client: TestClient, model: str, data: bytes, query: str = "") -> np.ndarray:
    response = client.post(
        f"/v1/models/{model}/segment?format=json&encoding=list&{query}", content=data, headers=PNG
    )
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["class_map"]["rows"])


def served_png(client: TestClient, model: str, data: bytes, query: str = "") -> Image.Image:
    response = client.post(f"/v1/models/{model}/segment?{query}", content=data, headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def rgb_argmax(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probe-rgb's expected class map, and a mask of pixels not within float noise of a tie."""
    x = reference_normalised(pixels, RGB_MEAN, RGB_STD)
    logits = np.concatenate([x, np.zeros((1, *x.shape[1:]))])
    ordered = np.sort(logits, axis=0)
    return logits.argmax(0), (ordered[-1] - ordered[-2]) > 1e-4


def test_normalisation_uses_each_channels_own_mean_and_std(probe_client: TestClient) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    served = logits_against_last(v2_probabilities(probe_client, "probe-rgb", png_bytes(pixels)))
    expected = reference_normalised(pixels, RGB_MEAN, RGB_STD)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    # Swapped mean/std or no division by std would be far off (sanity of the probe).
    assert np.abs(reference_normalised(pixels, RGB_STD, RGB_MEAN) - expected).max() > 1
    assert np.abs(reference_normalised(pixels, RGB_MEAN, [1, 1, 1]) - expected).max() > 1


@pytest.mark.parametrize("query", ["tiling=off", TILED])
def test_class_map_and_palette_follow_the_normalisation(
    probe_client: TestClient, query: str
) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    expected, clear = rgb_argmax(pixels)
    assert clear.mean() > 0.99 and len(np.unique(expected)) == 4
    labels = served_labels(probe_client, "probe-rgb", png_bytes(pixels), query)
    assert np.array_equal(labels[clear], expected[clear])
    image = served_png(probe_client, "probe-rgb", png_bytes(pixels), query)
    assert image.mode == "P" and image.size == (90, 70)
    palette = image.getpalette()
    assert palette is not None
    entries = [tuple(palette[3 * i : 3 * i + 3]) for i in range(4)]
    assert entries == RGB_PALETTE  # entry by entry, in class order
    assert np.array_equal(np.asarray(image)[clear], expected[clear])


def test_mirror_padding_reaches_the_border_pixels(probe_client: TestClient) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (13, 21), dtype=np.uint8)  # pads to 16x24
    served = logits_against_last(v2_probabilities(probe_client, "probe-box", png_bytes(grey)))[0]
    normalised = reference_normalised(grey, BOX_MEAN, BOX_STD)
    expected = reference_conv(reference_mirror_pad(normalised, 8), BOX_WEIGHT)[0, :13, :21]
    np.testing.assert_allclose(served, expected, atol=1e-4)
    zero_padded = np.zeros((1, 16, 24)) - np.asarray(BOX_MEAN)[0] / BOX_STD[0]
    zero_padded[:, :13, :21] = normalised
    wrong = reference_conv(zero_padded, BOX_WEIGHT)[0, :13, :21]
    assert np.abs(wrong - expected)[-1].min() > 0.01  # the whole bottom row would differ


@pytest.mark.parametrize("query", ["tiling=off", TILED])
def test_mirror_padding_decides_the_served_border_classes(
    probe_client: TestClient, query: str
) -> None:
    # Uniform 80: normalised +0.127, so every 3x3 mean is positive (class 0) when the
    # padding mirrors the image; zero bytes (-0.5) would turn the last row/column to 1.
    grey = np.full((100, 75), 80, np.uint8)  # pads to 104x80
    labels = served_labels(probe_client, "probe-box", png_bytes(grey), query)
    assert labels.shape == (100, 75)
    assert not labels.any(), np.argwhere(labels)[:5]


def test_16_bit_grey_is_scaled_by_257_and_rounded(probe_client: TestClient) -> None:
    values = np.arange(0, 65536, 113, dtype=np.uint16)[:576].reshape(24, 24)
    values[0, :4] = [65535, 65280, 33025, 1000]
    data = png_bytes(values)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert (expected != values >> 8).mean() > 0.2  # where the two rules disagree
    decoded = decode_image(data, 10_000)
    assert decoded.mode.startswith("I")
    assert np.array_equal(decoded.pixels, expected)
    # Through HTTP: probe-rgb gets the grey in all three channels; read channel 0 back.
    x = logits_against_last(v2_probabilities(probe_client, "probe-rgb", data))[0]
    served = np.rint((x * RGB_STD[0] + RGB_MEAN[0]) * 255)
    assert np.array_equal(served, expected)


def test_bilevel_images_decode_to_exact_0_and_255(probe_client: TestClient) -> None:
    pattern = np.random.default_rng(4).random((9, 14)) > 0.5
    buffer = io.BytesIO()
    Image.fromarray(pattern).save(buffer, format="PNG")
    data = buffer.getvalue()
    decoded = decode_image(data, 10_000)
    assert decoded.mode == "1"
    assert np.array_equal(decoded.pixels, np.where(pattern, 255, 0))
    labels = served_labels(probe_client, "tiny-grey", data)  # class 0 = bright
    assert np.array_equal(labels, np.where(pattern, 0, 1))
    x = logits_against_last(v2_probabilities(probe_client, "probe-rgb", data))[0]
    assert np.array_equal(np.rint((x * RGB_STD[0] + RGB_MEAN[0]) * 255), np.where(pattern, 255, 0))


def tta_model(chw: np.ndarray) -> np.ndarray:
    return reference_conv(chw, TTA_WEIGHT)


@pytest.mark.parametrize(("shape", "query"), [((19, 26), "tiling=off"), ((70, 90), TILED)])
def test_tta_over_http_is_the_average_of_the_eight_views(
    probe_client: TestClient, shape: tuple[int, int], query: str
) -> None:
    grey = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    x = reference_normalised(grey, TTA_MEAN, TTA_STD)
    averaged = reference_tta(x, tta_model)
    plain = reference_softmax(tta_model(x))
    expected = np.rint(averaged.max(0) * 255)
    assert (expected != np.rint(plain.max(0) * 255)).mean() > 0.5  # TTA matters here
    image = served_png(
        probe_client, "probe-tta", png_bytes(grey), f"format=confidence&tta=true&{query}"
    )
    assert image.mode == "L"
    assert np.abs(np.asarray(image, np.int16) - expected).max() <= 1
    labels = served_labels(probe_client, "probe-tta", png_bytes(grey), f"tta=true&{query}")
    clear = np.abs(averaged[0] - 0.5) > 1e-4
    assert np.array_equal(labels[clear], averaged.argmax(0)[clear])
