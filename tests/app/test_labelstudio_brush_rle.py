"""Label Studio's brush RLE read back by a decoder written here from the format itself
(thi-ng rle-pack, which Label Studio's frontend decodes), stricter than the converter's:
every run must end inside the value count and the padding must be under a byte of zeros.
Also the size bound the answer budget trusts, and the RLE as JSON integers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.imaging.masks.brush import brush_rle, brush_size_bound
from app.imaging.masks.labelstudio import rle_json


def decode_brush_rle(rle: bytes) -> np.ndarray:
    """The RGBA bytes an rle-pack stream holds: 32 bits value count, 5 bits word size - 1,
    4 x 4 bits run-length field sizes - 1, then runs (1 bit series flag, 2 bits field,
    length - 1, then one value for a series or `length` values otherwise)."""
    bits = "".join(f"{byte:08b}" for byte in rle)
    position = 0

    def read(count: int) -> int:
        nonlocal position
        assert position + count <= len(bits), "the stream ends inside a field"
        value = int(bits[position : position + count], 2)
        position += count
        return value

    total = read(32)
    word = read(5) + 1
    fields = [read(4) + 1 for _ in range(4)]
    assert (word, fields) == (8, [3, 4, 8, 16])  # what Label Studio's encoder writes
    out: list[int] = []
    while len(out) < total:
        series = read(1)
        length = read(fields[read(2)]) + 1
        assert len(out) + length <= total, "a run goes past the value count"
        out += [read(word)] * length if series else [read(word) for _ in range(length)]
    padding = bits[position:]
    assert len(padding) < 8 and set(padding) <= {"0"}, "more than the padding follows"
    return np.array(out, np.uint8)


def painted(rle: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The mask Label Studio paints: RGBA, every channel 255 inside and 0 outside."""
    rgba = decode_brush_rle(rle).reshape(shape[0], shape[1], 4)
    assert set(np.unique(rgba).tolist()) <= {0, 255}
    assert (rgba == rgba[..., :1]).all()
    return rgba[..., 3] == 255


def test_two_pixels_bit_by_bit() -> None:
    """[inside, outside]: 8 RGBA bytes, a run of four 255s and a run of four 0s."""
    header = f"{8:032b}" + "00111" + "0010" + "0011" + "0111" + "1111"
    runs = "1" + "00" + "011" + "11111111" + "1" + "00" + "011" + "00000000"
    bits = header + runs  # 53 + 28 = 81 bits, padded to 88 with zeros
    expected = int(bits + "0" * 7, 2).to_bytes(11, "big")
    assert brush_rle(np.array([[True, False]])) == expected


def test_each_length_field_is_chosen_by_the_run_length() -> None:
    """Runs of 8, 16, 256 and 65536 RGBA bytes (2, 4, 64, 16384 pixels) take the 3, 4, 8
    and 16-bit fields; one byte more moves to the next field."""
    for pixels, field, width in ((2, 0, 3), (3, 1, 4), (4, 1, 4), (5, 2, 8), (64, 2, 8),
                                 (65, 3, 16), (16384, 3, 16)):  # fmt: skip
        mask = np.ones((1, pixels), bool)
        rle = brush_rle(mask)
        bits = "".join(f"{byte:08b}" for byte in rle)
        run = bits[53:]
        assert run[0] == "1" and int(run[1:3], 2) == field, pixels
        assert int(run[3 : 3 + width], 2) == pixels * 4 - 1
        assert run[3 + width : 11 + width] == "11111111"
        assert len(rle) == (53 + 1 + 2 + width + 8 + 7) // 8
        assert np.array_equal(painted(rle, mask.shape), mask)


@pytest.mark.parametrize(
    ("pixels", "piece_bits"),
    [
        (16383, [27]),
        (16384, [27]),  # exactly 2**16 bytes: one piece, not a full one and an empty one
        (16385, [27, 14]),  # a full piece, then 4 bytes in the 3-bit field
        (32768, [27, 27]),
        (32769, [27, 27, 14]),
        (49152, [27, 27, 27]),
    ],
)
def test_long_runs_are_cut_at_two_to_the_sixteen_bytes(pixels: int, piece_bits: list[int]) -> None:
    mask = np.zeros((1, pixels + 3), bool)
    mask[0, 1 : 1 + pixels] = True
    rle = brush_rle(mask)
    assert np.array_equal(painted(rle, mask.shape), mask)
    # Header, 1 pixel out (3-bit field), the inside in pieces, 2 pixels out (3-bit field).
    bits = 53 + 14 + sum(piece_bits) + 14
    assert len(rle) == (bits + 7) // 8


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_decode_back(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = (int(n) for n in rng.integers(1, 120, 2))
    mask = rng.random((height, width)) < [0.03, 0.5, 0.97, 0.5][seed]
    if seed == 3:
        mask = np.zeros((200, 300), bool)
        mask[20:180, 10:290] = True  # long runs along rows, short ones between them
    assert np.array_equal(painted(brush_rle(mask), mask.shape), mask)


def bits_of(pieces: int) -> int:
    """Header and `pieces` run pieces at the longest (1 + 2 + 16 + 8 bits each)."""
    return 53 + 27 * pieces


@pytest.mark.parametrize(
    ("mask", "pieces"),
    [
        (np.ones((128, 128), bool), 1),  # one run of exactly 2**16 bytes
        (np.ones((128, 129), bool), 2),
        (np.repeat([False, True, False], 8192).reshape(96, 256), 3),  # 3 runs of 2**15 bytes
        (np.tile([True, False], (3, 5)), 30),
        (np.zeros((1, 1), bool), 1),
    ],
)
def test_size_bound_is_every_piece_at_its_longest(mask: np.ndarray, pieces: int) -> None:
    bound = brush_size_bound(mask)
    assert type(bound) is int
    assert bound == bits_of(pieces) // 8 + 1
    assert len(brush_rle(mask)) <= bound


def test_size_bound_is_tight_when_every_piece_is_long() -> None:
    """With every piece in the 16-bit field the bound is the length or one byte over."""
    for width in (65, 100, 128, 300):
        for rows in (1, 2, 7, 8):
            mask = np.zeros((rows * 2, width), bool)
            mask[::2] = True
            slack = brush_size_bound(mask) - len(brush_rle(mask))
            assert slack in (0, 1), (width, rows)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\x00\x07", bytes(range(256)) * 3])
@pytest.mark.parametrize("chunk", [1, 2, 5, 1 << 20])
def test_rle_json_is_the_bytes_as_a_json_array(data: bytes, chunk: int) -> None:
    text = rle_json(data, chunk)
    assert json.loads(text) == list(data)
    assert text == json.dumps(list(data), separators=(",", ":")).encode()


def test_rle_json_default_chunk() -> None:
    data = bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))
    assert rle_json(data) == json.dumps(list(data), separators=(",", ":")).encode()
