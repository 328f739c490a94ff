"""One memory budget for every path: pixels before and after padding, and answer sizes.

Peak memory of a request grows with (README, "Memory budget"):
- the decoded image and its padded copy: at most `max_pixels` pixels each, counted after
  padding to the model's size multiple (a 262,144 x 1 image is 16 rows high to a U-Net);
- the model's activations: a one-pass image has at most `whole_image_max_pixels` padded
  pixels; anything larger is cut into tiles of a fixed shape;
- the answer: at most `max_answer_bytes`, estimated before it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.errors import AnswerTooLarge, PayloadTooLarge
from app.inference.pipeline import padded_size
from app.spec import ModelSpec

# Bytes per element of an answer as JSON text, upper estimates ("255," and "0.12345678,").
JSON_BYTES_PER_LABEL = 4
JSON_BYTES_PER_FLOAT = 16


@dataclass(frozen=True)
class Limits:
    max_pixels: int  # one image, decoded and padded to the size multiple
    whole_image_max_pixels: int  # padded pixels of one pass; larger images are tiled
    max_answer_bytes: int  # largest answer body, estimated before it is built

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_pixels, settings.whole_image_max_pixels, settings.max_answer_bytes)


def check_image(spec: ModelSpec, height: int, width: int, limits: Limits) -> None:
    """413 unless the image fits `max_pixels` both as given and padded for this model."""
    padded_h, padded_w = padded_size(spec, height, width)
    if height * width > limits.max_pixels or padded_h * padded_w > limits.max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} pixels, {padded_w}x{padded_h} padded to the "
            f"model's size multiple {spec.size_multiple}; the limit is {limits.max_pixels} "
            "pixels (SEG_MAX_PIXELS)"
        )


def check_answer(size: int, what: str, limits: Limits, hint: str = "") -> None:
    """413 when an answer of `size` bytes (an upper estimate) would pass the budget."""
    if size > limits.max_answer_bytes:
        raise AnswerTooLarge(
            f"{what} would be about {size} bytes; the limit is {limits.max_answer_bytes} "
            f"(SEG_MAX_ANSWER_BYTES){'; ' + hint if hint else ''}"
        )
