"""ModelInferRequest inputs to numpy, and v2 results to a ModelInferResponse.

Inputs come either all in `raw_input_contents` (one entry per input: row-major elements,
BYTES elements each a 4-byte little-endian length and the bytes) or each in its typed
`contents`. Every size is checked in Python integers against the bytes at hand before
numpy sees it. Typed contents are unpacked element by element, so they are bounded
(SEG_V2_MAX_JSON_BYTES elements, as /v2's JSON is): large images go in raw contents.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from app.config import Settings
from app.errors import BadInferenceRequest, PayloadTooLarge
from app.grpc_v2 import grpc_predict_v2_pb2 as pb
from app.service.v2_infer import INPUTS, ONE_INPUT, Wanted, check_output_name, shown

MAX_DIMS = 8
DATATYPES = {"image": "UINT8", "image_bytes": "BYTES"}
OUTPUT_DATATYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "labels": ("UINT8", np.dtype(np.uint8)),
    "probabilities": ("FP32", np.dtype("<f4")),
}


def input_tensors(request: pb.ModelInferRequest, settings: Settings) -> dict[str, Any]:
    """{input name: uint8 array | list of bytes}, the form `request_images` takes."""
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name not in INPUTS:
        raise BadInferenceRequest(ONE_INPUT)
    tensor = inputs[0]
    if tensor.datatype != DATATYPES[tensor.name]:
        raise BadInferenceRequest(
            f"{tensor.name!r} must be a {DATATYPES[tensor.name]} tensor, "
            f"not {shown(tensor.datatype)!r}"
        )
    shape = list(tensor.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        described = f"shape {shape}" if len(shape) <= MAX_DIMS else f"{len(shape)} dimensions"
        raise BadInferenceRequest(f"{tensor.name!r} has an invalid shape: {described}")
    count = math.prod(shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(inputs) or tensor.HasField("contents"):
            raise BadInferenceRequest(
                "raw_input_contents needs one entry per input, and then no input has contents"
            )
        if tensor.name == "image":
            return {"image": _raw_pixels(raw[0], shape, count)}
        return {"image_bytes": _raw_bytes(raw[0], count)}
    if not tensor.HasField("contents"):
        raise BadInferenceRequest(f"{tensor.name!r} has no data: set contents or raw contents")
    if tensor.name == "image":
        return {"image": _typed_pixels(tensor.contents, shape, count, settings)}
    files = list(tensor.contents.bytes_contents)
    if len(files) != count:
        raise BadInferenceRequest(
            f"'image_bytes' of shape {shape} needs {count} elements in bytes_contents, "
            f"not {len(files)}"
        )
    return {"image_bytes": files}


def _raw_pixels(raw: bytes, shape: list[int], count: int) -> np.ndarray:
    if len(raw) != count:
        raise BadInferenceRequest(
            f"'image' of shape {shape} needs {count} bytes of raw contents, not {len(raw)}"
        )
    return np.frombuffer(raw, np.uint8).reshape(shape)


def _raw_bytes(raw: bytes, count: int) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw) and len(elements) < count:
        if offset + 4 > len(raw):
            break
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            break
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count or offset != len(raw):
        raise BadInferenceRequest(
            f"the raw contents of 'image_bytes' are not {count} length-prefixed elements "
            "(a 4-byte little-endian length before each)"
        )
    return elements


def _typed_pixels(
    contents: pb.InferTensorContents, shape: list[int], count: int, settings: Settings
) -> np.ndarray:
    values = contents.uint_contents
    if count > settings.v2_max_json_bytes:
        raise PayloadTooLarge(
            f"'image' has {count} elements; typed contents carry at most "
            f"{settings.v2_max_json_bytes} (SEG_V2_MAX_JSON_BYTES): send large images in "
            "raw_input_contents"
        )
    if len(values) != count:
        raise BadInferenceRequest(
            f"'image' of shape {shape} needs {count} elements in uint_contents, not {len(values)}"
        )
    array = np.array(values, dtype=np.uint32)
    if array.size and int(array.max()) > 255:
        raise BadInferenceRequest("'image' is UINT8: every element must be 0 to 255")
    return array.astype(np.uint8).reshape(shape)


def wanted_outputs(request: pb.ModelInferRequest) -> Wanted:
    """The outputs asked for, by name ('labels' when none is); raw, so binary-sized."""
    if not request.outputs:
        return [("labels", True)]
    for output in request.outputs:
        check_output_name(output.name)
    return [(output.name, True) for output in request.outputs]


def infer_response(
    model: str, version: str, request_id: str, arrays: dict[str, np.ndarray], wanted: Wanted
) -> pb.ModelInferResponse:
    """The wanted outputs in raw_output_contents, in the order asked for."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name, _ in wanted:
        datatype, dtype = OUTPUT_DATATYPES[name]
        array = np.ascontiguousarray(arrays[name], dtype=dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response
