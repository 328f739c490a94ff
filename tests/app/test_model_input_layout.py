"""The graph input is built C-contiguous from the decoded (H, W, C) pixels: normalising
the transposed view in its own layout measured 4x slower (issue 15, bench/profile_stages.py),
and the values must not depend on the layout."""

from __future__ import annotations

import numpy as np

from app.inference.pipeline import normalise, padded_channels, preprocess
from tests.app.tiny_models import spec_for


def test_rgb_input_is_c_contiguous_with_the_same_values() -> None:
    spec = spec_for("rgb", "layout", mean=[0.2, 0.5, 0.7], std=[0.3, 0.25, 0.2])
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    chw = padded_channels(pixels, spec)
    x = normalise(chw, spec)
    assert x.flags.c_contiguous and x.dtype == np.float32
    assert np.array_equal(x, normalise(np.ascontiguousarray(chw), spec))
    batch = preprocess(pixels, spec)
    assert batch.flags.c_contiguous and batch.shape == (1, 3, 37, 53)
    assert np.array_equal(batch[0], x)


def test_written_into_a_given_buffer() -> None:
    spec = spec_for("rgb", "layout")
    chw = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8).transpose(2, 0, 1)
    out = np.empty((3, 5, 7), np.float32)
    assert normalise(chw, spec, out) is out
    assert np.array_equal(out, normalise(np.ascontiguousarray(chw), spec))
