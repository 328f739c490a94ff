"""Open Inference Protocol (KServe v2) inference, whatever the transport (REST /v2, gRPC).

Inputs: `image` (UINT8, [N, H, W, C] with C 1 or 3) or `image_bytes` (BYTES, [1], an
encoded image file). Outputs: `labels` (UINT8, [N, H, W]) and, when asked for,
`probabilities` (FP32, [N, K, H, W]; not for a model that answers labels only, which
answers 422). Each transport decodes its tensors into
`{name: numpy array | list of bytes}` and encodes `V2Result.arrays` its own way.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app import tracing
from app.config import Settings
from app.errors import BadInferenceRequest, PayloadTooLarge
from app.imaging.decode import declared_pixels, decode_image
from app.inference.pipeline import Stopped, require_scores
from app.inference.registry import ModelEntry
from app.inference.registry import shown as shown
from app.inference.v2_codec import InferenceRequest
from app.service.budget import JSON_BYTES_PER_FLOAT, JSON_BYTES_PER_LABEL, Limits, check_answer
from app.service.segmenting import infer_pixels

INPUTS = ("image", "image_bytes")
OUTPUTS = ("labels", "probabilities")
ONE_INPUT = "send exactly one input: 'image' (UINT8) or 'image_bytes' (BYTES)"
# (output name, binary): binary outputs cost their raw size, JSON ones their text's.
Wanted = list[tuple[str, bool]]


@dataclass(frozen=True)
class V2Result:
    arrays: dict[str, np.ndarray]  # output name -> [N, ...] array, for the outputs wanted
    inference_ms: float  # session time over every image


def model_metadata(entry: ModelEntry, versions: list[str]) -> dict[str, Any]:
    """The protocol's model metadata: inputs, outputs, and segserve's parameters;
    `versions`: every version of the model that serves."""
    spec = entry.spec
    outputs: list[dict[str, Any]] = [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]}]
    if spec.has_scores:  # a model whose graph answers labels only has no probabilities
        outputs.append(
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, spec.num_classes, -1, -1]}
        )
    return {
        "name": spec.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, spec.input_channels]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [1]},
        ],
        "outputs": outputs,
        "parameters": {
            "classes": spec.classes,
            "providers": entry.providers,
            "version": spec.version,
            "precision": spec.precision,
            "precisions": entry.variants,
        },
    }


def request_images(tensors: Mapping[str, Any], settings: Settings) -> list[np.ndarray]:
    """The request's images as canonical (H, W) or (H, W, 3) uint8 arrays."""
    given = [n for n in tensors if n in INPUTS]
    if len(given) != 1 or len(tensors) != 1:
        raise BadInferenceRequest(ONE_INPUT)
    if given[0] == "image_bytes":
        files = tensors["image_bytes"]
        if not isinstance(files, list) or len(files) != 1:
            raise BadInferenceRequest("'image_bytes' must be a BYTES tensor of shape [1]")
        with tracing.span("decode"):
            return [decode_image(files[0], settings.max_pixels).pixels]
    array = tensors["image"]
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise BadInferenceRequest("'image' must be a UINT8 tensor")
    if array.ndim != 4 or array.shape[3] not in (1, 3) or 0 in array.shape:
        raise BadInferenceRequest(
            "'image' must have shape [N, H, W, C] with C 1 or 3 and no empty side"
        )
    count, height, width = array.shape[:3]
    if count > settings.v2_max_batch:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.v2_max_batch} "
            "(SEG_V2_MAX_BATCH)"
        )
    if count * height * width > settings.max_pixels:
        raise PayloadTooLarge(
            f"{count} images of {width}x{height} exceed SEG_MAX_PIXELS={settings.max_pixels} "
            "pixels in all"
        )
    return [image[..., 0] if image.shape[2] == 1 else image for image in array]


def tensor_pixels(tensors: Mapping[str, Any]) -> int:
    """The pixels a request's images hold, for the pixel budget: N x H x W of an `image`
    tensor, or what an `image_bytes` file's header declares (0 when neither can be told)."""
    image = tensors.get("image")
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return int(image.shape[0]) * int(image.shape[1]) * int(image.shape[2])
    files = tensors.get("image_bytes")
    if isinstance(files, list) and len(files) == 1 and isinstance(files[0], bytes):
        return declared_pixels(io.BytesIO(files[0]))
    return 0


def check_output_name(name: str) -> None:
    if name not in OUTPUTS:
        raise BadInferenceRequest(f"unknown output {shown(name)!r}; outputs are {list(OUTPUTS)}")


def wanted_outputs(request: InferenceRequest) -> Wanted:
    """(output name, binary) pairs of a REST request, following the binary tensor data
    extension's rules."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    if not request.outputs:
        return [("labels", default_binary)]
    wanted = []
    for output in request.outputs:
        check_output_name(output.name)
        wanted.append((output.name, bool(output.parameters.get("binary_data", default_binary))))
    return wanted


def check_answer_size(
    entry: ModelEntry, images: list[np.ndarray], wanted: Wanted, limits: Limits
) -> None:
    """Refuse, before any inference, outputs that would pass SEG_MAX_ANSWER_BYTES."""
    pixels = sum(image.shape[0] * image.shape[1] for image in images)
    size = 0
    for name, binary in wanted:
        if name == "labels":
            size += pixels * (1 if binary else JSON_BYTES_PER_LABEL)
        else:
            size += pixels * entry.spec.num_classes * (4 if binary else JSON_BYTES_PER_FLOAT)
    check_answer(size, "the requested outputs", limits, "ask for binary_data or fewer pixels")


def infer_images(
    entry: ModelEntry,
    images: list[np.ndarray],
    wanted: Wanted,
    settings: Settings,
    stop: threading.Event,
) -> V2Result:
    """Each image of `request_images` through the same service path as /v1 (overlap tiles
    above SEG_WHOLE_IMAGE_MAX_PIXELS), after the answer's size is checked, stopping between
    images and tiles once `stop` is set. In the inference executor, like `request_images`
    (which decodes `image_bytes`)."""
    with_probs = any(name == "probabilities" for name, _ in wanted)
    require_scores(entry.spec, probabilities=with_probs)  # 422 for a labels-only model
    limits = Limits.from_settings(settings)
    check_answer_size(entry, images, wanted, limits)
    results = []
    for done, image in enumerate(images):
        if stop.is_set():
            raise Stopped(f"stopped after {done} of {len(images)} images")
        results.append(infer_pixels(entry, image, limits, probabilities=with_probs, stop=stop))
    arrays = {"labels": np.stack([r.labels for r in results])}
    if with_probs:
        arrays["probabilities"] = np.stack(
            [r.probabilities for r in results if r.probabilities is not None]
        )
    return V2Result(arrays, sum(r.timings_ms["inference"] for r in results))
