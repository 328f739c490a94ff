"""Label Studio's brush RLE (the `rle` of a BrushLabels result), vectorised.

Label Studio paints a brush mask as an RGBA image; its RLE runs over the row-major RGBA
bytes (each pixel's value repeated 4 times, 255 inside the mask, 0 outside). The bit
stream, most significant bit first: 32 bits value count, 5 bits word size - 1 (8 bits),
4 x 4 bits run-length field sizes - 1 (3, 4, 8, 16 bits); then per run a 1 (a series), 2
bits choosing the length field, the length - 1, and the 8-bit value. Runs longer than
2**16 are cut into pieces. The stream is zero-padded to whole bytes. This is what
label-studio-converter's `brush.encode_rle` writes and `brush.decode_rle` reads.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
LENGTH_FIELDS = (3, 4, 8, 16)
MAX_PIECE = 1 << 16
HEADER_BITS = 32 + 5 + 4 * len(LENGTH_FIELDS)
# Bits of one run piece at most: series flag, field choice, 16-bit length, value.
MAX_PIECE_BITS = 1 + 2 + 16 + WORD_BITS


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (0/255) and lengths of the runs of the mask's RGBA bytes."""
    flat = mask.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], changes))
    lengths = np.diff(np.concatenate((starts, [flat.size]))).astype(np.int64) * 4
    values = np.where(flat[starts], 255, 0).astype(np.int64)
    return values, lengths


def brush_size_bound(mask: np.ndarray) -> int:
    """Upper bound of the encoded bytes: every run piece at its longest."""
    lengths = _runs(mask)[1]
    pieces = int(((lengths + MAX_PIECE - 1) // MAX_PIECE).sum())
    return (HEADER_BITS + pieces * MAX_PIECE_BITS) // 8 + 1


def brush_rle(mask: np.ndarray) -> bytes:
    """The Label Studio RLE of a (H, W) boolean mask."""
    values, lengths = _runs(mask)
    pieces = (lengths + MAX_PIECE - 1) // MAX_PIECE
    values = np.repeat(values, pieces)
    # Each run is cut into full 2**16 pieces and a last one with the rest.
    piece_lengths = np.full(values.size, MAX_PIECE, np.int64)
    ends = np.cumsum(pieces) - 1
    piece_lengths[ends] = lengths - (pieces - 1) * MAX_PIECE
    field = np.searchsorted(np.array([1 << b for b in LENGTH_FIELDS]), piece_lengths)
    field_bits = np.array(LENGTH_FIELDS, np.int64)[field]
    nbits = 1 + 2 + field_bits + WORD_BITS
    codes = (
        (1 << (nbits - 1)) | (field << (field_bits + WORD_BITS))
        | ((piece_lengths - 1) << WORD_BITS) | values
    )  # fmt: skip
    header = (mask.size * 4 << (HEADER_BITS - 32)) | ((WORD_BITS - 1) << 16)
    for n, size in enumerate(LENGTH_FIELDS):
        header |= (size - 1) << (12 - 4 * n)
    codes = np.concatenate(([header], codes)).astype(np.int64)
    nbits = np.concatenate(([HEADER_BITS], nbits))
    # Expand every code to its bits, most significant first.
    owner = np.repeat(np.arange(codes.size), nbits)
    offsets = np.arange(owner.size) - np.repeat(np.cumsum(nbits) - nbits, nbits)
    shifts = nbits[owner] - 1 - offsets
    bits = ((codes[owner] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes()
