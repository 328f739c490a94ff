"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

A binary request or response is the JSON header followed by raw tensor bytes; the
`Inference-Header-Content-Length` header gives the JSON's length and each binary tensor
says its size in `parameters.binary_data_size`, in order. BYTES elements are each a
4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import BadInferenceRequest

DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP32": np.dtype(np.float32),
}


class TensorIn(BaseModel):
    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class OutputRequest(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorIn] = Field(min_length=1, max_length=4)
    outputs: list[OutputRequest] | None = None


def parse_request(
    body: bytes, header_length: str | None
) -> tuple[InferenceRequest, dict[str, Any]]:
    """The request and its input tensors by name (numpy arrays, or lists of bytes for BYTES)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadInferenceRequest("Inference-Header-Content-Length does not fit the body")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        request = InferenceRequest.model_validate(json.loads(head))
    except (ValueError, ValidationError) as exc:
        raise BadInferenceRequest(f"invalid inference request: {exc}") from None
    tensors: dict[str, Any] = {}
    offset = 0
    for tensor in request.inputs:
        if any(d < 0 for d in tensor.shape):
            raise BadInferenceRequest(f"input {tensor.name!r} has a negative dimension")
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadInferenceRequest(
                    f"input {tensor.name!r}: binary_data_size exceeds the body"
                )
            raw = binary[offset : offset + size]
            offset += size
            tensors[tensor.name] = _from_binary(tensor, raw)
        elif tensor.data is not None:
            tensors[tensor.name] = _from_json(tensor)
        else:
            raise BadInferenceRequest(
                f"input {tensor.name!r} has neither data nor binary_data_size"
            )
    return request, tensors


def _count(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _from_binary(tensor: TensorIn, raw: bytes) -> Any:
    if tensor.datatype == "BYTES":
        return _unpack_bytes(raw, _count(tensor.shape), tensor.name)
    dtype = _dtype(tensor)
    if len(raw) != _count(tensor.shape) * dtype.itemsize:
        raise BadInferenceRequest(
            f"input {tensor.name!r}: {len(raw)} bytes do not match shape {tensor.shape}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _from_json(tensor: TensorIn) -> Any:
    if tensor.datatype == "BYTES":
        items = np.asarray(tensor.data, dtype=object).ravel().tolist()
        if len(items) != _count(tensor.shape) or not all(isinstance(i, str) for i in items):
            raise BadInferenceRequest(
                f"input {tensor.name!r}: BYTES data must be {_count(tensor.shape)} strings"
            )
        return [i.encode("utf-8") for i in items]
    dtype = _dtype(tensor)
    try:
        values = np.asarray(tensor.data, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise BadInferenceRequest(f"input {tensor.name!r}: data must be numbers") from None
    if values.size != _count(tensor.shape):
        raise BadInferenceRequest(
            f"input {tensor.name!r}: {values.size} values do not match shape {tensor.shape}"
        )
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None and (values.min(initial=0) < info.min or values.max(initial=0) > info.max):
        raise BadInferenceRequest(
            f"input {tensor.name!r}: values out of range for {tensor.datatype}"
        )
    return values.astype(dtype).reshape(tensor.shape)


def _dtype(tensor: TensorIn) -> np.dtype[Any]:
    if tensor.datatype not in DTYPES:
        raise BadInferenceRequest(
            f"input {tensor.name!r}: datatype {tensor.datatype} is not supported here"
        )
    return DTYPES[tensor.datatype]


def _unpack_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadInferenceRequest(f"input {name!r}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadInferenceRequest(f"input {name!r}: truncated BYTES element")
        items.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise BadInferenceRequest(f"input {name!r}: extra bytes after {count} BYTES elements")
    return items


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DTYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no v2 datatype for {array.dtype}")


def encode_response(
    header: dict[str, Any], outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """Body and JSON length (None when nothing is binary) for (name, array, binary) outputs."""
    entries, blobs = [], []
    for name, array, binary in outputs:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    head = json.dumps({**header, "outputs": entries}, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
