"""The class-map PNG's palette: the model's colours at their class indices, then black
for every unused entry of the 256 (a viewer shows an out-of-range index as black)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.imaging.encode import palette_png


def test_unused_palette_entries_are_black() -> None:
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    data = palette_png(labels, [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P"
        assert np.asarray(image).tolist() == [[0, 1], [2, 1]]
        palette = image.getpalette()
    assert palette == [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9)
