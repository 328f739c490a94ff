"""Paired A/B of the request stages issue 15 changed, old and new alternating in one process.

    .venv/bin/python -m bench.stage_ab [--repeats 60] [--out bench/results/stage_ab.json]

On a shared, noisy machine two runs of bench/profile_stages.py minutes apart differ by
more than the changes (the session's own CPU time moved 15-30 % between runs); here each
old/new pair runs back to back, so both see the same load, and the ratio of the paired
medians of thread CPU time is what to read. Old and new:

- decode: Pillow alone (app/imaging/decode.py with the direct decoders switched off: the
  Pillow path as it is now, without the copy exif_transpose used to make) vs
  decode_image (libspng for plain PNG, simplejpeg for plain JPEG);
- encode: the palette PNG as before (zlib level 3, default strategy) vs palette_png
  (Z_RLE); the sizes too;
- normalise: float32 in the transposed (H, W, C) layout numpy picks by itself, as before,
  vs normalise (a C-contiguous output).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from PIL import Image

from app.config import SHIPPED_MODEL_DIR, Settings
from app.imaging.decode import decode_image
from app.imaging.encode import palette_png
from app.inference.pipeline import normalise, padded_channels
from app.inference.registry import ModelEntry
from app.service.budget import Limits
from app.service.segmenting import infer_pixels
from app.spec import ModelSpec
from bench.common import SAMPLE, loaded_registry

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stage_ab.json"


def paired(old: Callable[[], object], new: Callable[[], object], repeats: int) -> dict[str, float]:
    """Medians of thread CPU ms, old and new alternating, and new / old."""
    old(), new()  # warm-up
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        for key, fn in (("old", old), ("new", new)):
            started = time.thread_time()
            fn()
            times[key].append((time.thread_time() - started) * 1000)
    o, n = statistics.median(times["old"]), statistics.median(times["new"])
    return {"old_ms": round(o, 3), "new_ms": round(n, 3), "new_over_old": round(n / o, 3)}


def pillow_only(data: bytes) -> np.ndarray:
    with mock.patch("app.imaging.decode.fast_pixels", return_value=None):
        return decode_image(data, 1 << 30).pixels


def encoded(path: Path, fmt: str, scale: int = 1) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as opened:
        size = (opened.width * scale, opened.height * scale)
        image = opened.resize(size, Image.Resampling.BICUBIC) if scale > 1 else opened
        options: dict[str, Any] = {"quality": 90, "subsampling": 2} if fmt == "JPEG" else {}
        image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def old_palette_png(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def old_normalise(chw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    x: np.ndarray = np.multiply(chw, np.float32(1 / 255), dtype=np.float32)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return x


def decode_rows(repeats: int) -> dict[str, dict[str, float]]:
    files = {
        "ISBI 512x512 grey PNG": SAMPLE["unet-isbi"].read_bytes(),
        "CamVid 480x360 RGB PNG": SAMPLE["dilated-camvid"].read_bytes(),
        "ISBI 512x512 JPEG q90": encoded(SAMPLE["unet-isbi"], "JPEG"),
        "CamVid 480x360 JPEG q90 4:2:0": encoded(SAMPLE["dilated-camvid"], "JPEG"),
        "CamVid x4 1920x1440 JPEG q90 4:2:0": encoded(SAMPLE["dilated-camvid"], "JPEG", 4),
    }
    rows = {}
    for name, data in files.items():
        assert np.array_equal(pillow_only(data), decode_image(data, 1 << 30).pixels)
        new = functools.partial(decode_image, data, 1 << 30)
        rows[name] = paired(functools.partial(pillow_only, data), new, repeats)
    return rows


def one_model(model: ModelEntry, settings: Settings, repeats: int) -> dict[str, dict[str, Any]]:
    assert model.spec is not None
    spec = model.spec
    pixels = decode_image(SAMPLE[spec.name].read_bytes(), 1 << 30).pixels
    labels = infer_pixels(model, pixels, Limits.from_settings(settings)).labels
    old_png, new_png = old_palette_png(labels, spec.palette), palette_png(labels, spec.palette)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(new_png))), labels)
    encode = paired(lambda: old_palette_png(labels, spec.palette),
                    lambda: palette_png(labels, spec.palette), repeats)  # fmt: skip
    chw = padded_channels(pixels, spec)
    assert np.array_equal(old_normalise(chw, spec), normalise(chw, spec))
    return {
        f"{spec.name}: palette PNG": {**encode, "old_bytes": len(old_png),
                                      "new_bytes": len(new_png)},
        f"{spec.name}: normalise": paired(lambda: old_normalise(chw, spec),
                                          lambda: normalise(chw, spec), repeats),
    }  # fmt: skip


def model_rows(repeats: int) -> dict[str, dict[str, Any]]:
    settings = Settings(model_dir=SHIPPED_MODEL_DIR, device="cpu")
    registry = loaded_registry(settings)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name in SAMPLE:
            rows.update(one_model(registry.get(name), settings, repeats))
    finally:
        registry.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    os.environ.setdefault("SEG_PRECISION", "fp32")
    rows = {**decode_rows(args.repeats), **model_rows(args.repeats)}
    print(f"{'stage':<44}{'old ms':>9}{'new ms':>9}{'new/old':>9}")
    for name, row in rows.items():
        sizes = f"  ({row['old_bytes']} -> {row['new_bytes']} bytes)" if "old_bytes" in row else ""
        print(f"{name:<44}{row['old_ms']:>9.3f}{row['new_ms']:>9.3f}"
              f"{row['new_over_old']:>9.3f}{sizes}")  # fmt: skip
    document = {
        "what": "paired medians of thread CPU ms, old and new alternating in one process "
        "(bench/stage_ab.py); the machine is shared and noisy: read the ratios",
        "repeats": args.repeats,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
