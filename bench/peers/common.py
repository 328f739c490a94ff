"""What both peer services do per request, written the way their users write it: Pillow
decodes the upload, numpy mirror-pads and normalises, onnxruntime runs the graph's argmax
output, Pillow encodes a palette PNG. No segserve code but `app.spec`, which reads the
model's metadata (mean, std, size multiple, palette) from the ONNX file.

Environment of a peer server: PEER_MODEL (the .onnx file), PEER_INTRA_OP_THREADS
(onnxruntime threads per inference; default the CPU count), PEER_DEVICE (cpu or cuda).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from app.spec import ModelSpec

ENV_MODEL = "PEER_MODEL"
ENV_THREADS = "PEER_INTRA_OP_THREADS"
ENV_DEVICE = "PEER_DEVICE"


@dataclass
class PeerModel:
    session: ort.InferenceSession
    spec: ModelSpec


def load_model(
    path: Path | str, threads: int, device: str = "cpu", spinning: bool = True
) -> PeerModel:
    """An InferenceSession on the file and the spec from its metadata. The peers keep
    onnxruntime's defaults (`spinning`: idle intra-op threads spin for work)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    spec = ModelSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
    if spec.labels_output is None:
        raise ValueError(f"{path} has no argmax output")
    return PeerModel(session, spec)


def model_from_env() -> PeerModel:
    threads = int(os.environ.get(ENV_THREADS, os.cpu_count() or 1))
    return load_model(os.environ[ENV_MODEL], threads, os.environ.get(ENV_DEVICE, "cpu"))


def decode(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """A Pillow image as (H, W) or (H, W, 3) uint8 pixels for the model's channels."""
    return np.asarray(image.convert("L" if spec.input_channels == 1 else "RGB"))


def to_input(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(1, C, H', W') graph input: mirror-padded at the bottom/right to the size multiple,
    then `(v / 255 - mean) / std` as float32, or the uint8 pixels for a graph that
    normalises itself (`input_dtype` uint8)."""
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    h, w = chw.shape[1:]
    m = spec.size_multiple
    pad = ((0, 0), (0, -h % m), (0, -w % m))
    chw = np.pad(chw, pad, mode="reflect" if min(h, w) > 1 else "edge")
    if spec.input_dtype == "uint8":
        return np.ascontiguousarray(chw[None])
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    return ((chw.astype(np.float32) / 255 - mean) / std)[None]


def predict(model: PeerModel, pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices for the pixels."""
    h, w = pixels.shape[:2]
    spec = model.spec
    (labels,) = model.session.run([spec.labels_output], {spec.input_name: to_input(pixels, spec)})
    return np.asarray(labels[0, :h, :w], dtype=np.uint8)


def palette_image(labels: np.ndarray, spec: ModelSpec) -> Image.Image:
    """Mode-P image whose pixel values are the class indices, coloured by the palette."""
    image = Image.fromarray(labels)  # mode L; a palette makes it mode P
    image.putpalette([v for colour in spec.palette for v in colour])
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def segment_png(model: PeerModel, data: bytes) -> bytes:
    """The whole request: image file bytes in, palette PNG bytes out."""
    labels = predict(model, decode(Image.open(io.BytesIO(data)), model.spec))
    return png_bytes(palette_image(labels, model.spec))
