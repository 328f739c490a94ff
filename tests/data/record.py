"""Record the shipped models' class maps on a few shared images (run once per shipped model).

    .venv/bin/python tests/data/record.py

The torch checkpoints are not in the repository, so the maps come from the shipped ONNX
files themselves, run by onnxruntime on the CPU, with a pre-processing written here from
the model contract (app/spec.py: `(v / 255 - mean) / std`, mirror padding at the bottom
and right to the size multiple, the class the argmax of the logits), independently of
app/. tests/app/test_shipped_exact.py compares what the service answers over HTTP with
these maps; a pre-processing mistake in the service changes thousands of pixels, while
onnxruntime's float noise between the two paths changes a handful.

Writes tests/data/<model>--<image>.png (8-bit class indices) and reference_maps.json
(the model files' SHA-256, so a re-shipped model asks for a new recording).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHIPPED = ROOT / "app" / "shipped_models"
DATA = ROOT.parent / "shared" / "datasets"
IMAGES = {
    "unet-isbi": ["isbi2012/images/21.png"],
    "dilated-camvid": ["camvid/val/0016E5_08041.png", "camvid/val/0016E5_08109.png"],
}


def reference_name(model: str, image: str) -> str:
    return f"{model}--{Path(image).parent.parent.name}-{Path(image).stem}.png"


def mirror_indices(n: int, multiple: int) -> list[int]:
    total = -(-n // multiple) * multiple
    return [i if i < n else 2 * (n - 1) - i for i in range(total)]


def class_map(path: Path, image_file: Path) -> np.ndarray:
    proto = onnx.load(str(path))
    spec = json.loads({p.key: p.value for p in proto.metadata_props}["segserve.spec"])
    image = Image.open(image_file)
    pixels = np.asarray(image.convert("L" if spec["input_channels"] == 1 else "RGB"))
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    h, w = pixels.shape[:2]
    m = spec.get("size_multiple", 1)
    chw = chw[:, mirror_indices(h, m)][:, :, mirror_indices(w, m)]
    if spec.get("input_dtype", "float32") == "uint8":  # the graph normalises itself
        x = np.ascontiguousarray(chw, np.uint8)
    else:
        x = (
            (chw / 255.0 - np.asarray(spec["mean"])[:, None, None])
            / np.asarray(spec["std"])[:, None, None]
        ).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(
        [spec.get("logits_output", "logits")], {spec.get("input_name", "image"): x[None]}
    )
    return np.asarray(logits[0].argmax(0)[:h, :w], np.uint8)


def main() -> None:
    entries = []
    for model, images in IMAGES.items():
        path = SHIPPED / f"{model}.onnx"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        for image in images:
            labels = class_map(path, DATA / image)
            name = reference_name(model, image)
            Image.fromarray(labels, "L").save(HERE / name, optimize=True)
            entries.append({"model": model, "model_sha256": digest, "image": image, "map": name})
            print(name, labels.shape, np.bincount(labels.ravel()).tolist())
    document = {
        "recorded": dt.date.today().isoformat(),
        "by": "tests/data/record.py",
        "maps": entries,
    }
    (HERE / "reference_maps.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
