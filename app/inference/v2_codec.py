"""Open Inference Protocol (KServe v2) tensors: JSON and the binary tensor data extension.

A binary request or response is the JSON header followed by raw tensor bytes; the
`Inference-Header-Content-Length` header gives the JSON's length and each binary tensor
says its size in `parameters.binary_data_size`, in order. BYTES elements are each a
4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import BadInferenceRequest, PayloadTooLarge

DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP32": np.dtype(np.float32),
}
# Nesting a request needs: the document, `inputs`, a tensor, `data` nested by up to its 8
# dimensions, and room for `parameters`. Deeper documents are refused before json.loads,
# which would recurse once per level.
MAX_JSON_DEPTH = 32
MAX_DIMENSION = 2**31 - 1
HEADER_LENGTH_FORMAT = re.compile(r"[0-9]{1,12}")  # ASCII digits only: "²".isdigit() is True
# Every byte but quotes and brackets, deleted before the nesting scan.
_NOT_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')
_DEPTH_CHUNK = 1 << 20


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
    outputs: list[OutputRequest] | None = Field(default=None, max_length=8)


def parse_request(
    body: bytes, header_length: str | None, max_json_bytes: int | None = None
) -> tuple[InferenceRequest, dict[str, Any]]:
    """The request and its input tensors by name (numpy arrays, or lists of bytes for BYTES).

    Every way an untrusted body can be wrong is a BadInferenceRequest (400); sizes are
    checked with Python ints against the body's length before any array is made. A JSON
    part above `max_json_bytes` is PayloadTooLarge (413), before it is parsed.
    """
    if max_json_bytes is not None:
        json_bytes = len(body)
        if header_length is not None:
            valid = HEADER_LENGTH_FORMAT.fullmatch(header_length)
            json_bytes = min(int(header_length), len(body)) if valid else 0
        if json_bytes > max_json_bytes:
            raise PayloadTooLarge(
                f"the JSON part has {json_bytes} bytes; the limit is {max_json_bytes} "
                "(SEG_V2_MAX_JSON_BYTES): send large tensors with the binary tensor data "
                "extension"
            )
    if header_length is not None:
        if not HEADER_LENGTH_FORMAT.fullmatch(header_length) or int(header_length) > len(body):
            raise BadInferenceRequest("Inference-Header-Content-Length does not fit the body")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    request = _parse_head(head)
    tensors: dict[str, Any] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise BadInferenceRequest(f"input {_quote(tensor.name)} is given twice")
        count = _count(tensor, len(body))
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise BadInferenceRequest(
                    f"input {_quote(tensor.name)}: binary_data_size exceeds the body"
                )
            raw = binary[offset : offset + size]
            offset += size
            tensors[tensor.name] = _from_binary(tensor, raw, count)
        elif tensor.data is not None:
            tensors[tensor.name] = _from_json(tensor, count)
        else:
            raise BadInferenceRequest(
                f"input {_quote(tensor.name)} has neither data nor binary_data_size"
            )
    return request, tensors


def _parse_head(head: bytes) -> InferenceRequest:
    if _nested_deeper(head, MAX_JSON_DEPTH):
        raise BadInferenceRequest(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = json.loads(head, parse_constant=_no_constant)
    except Exception as exc:  # untrusted bytes: whatever json raises, the body is bad
        raise BadInferenceRequest(f"the body is not valid JSON: {_printable(exc)}") from None
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise BadInferenceRequest(f"invalid inference request: {_printable(problems)}") from None


def _nested_deeper(head: bytes, limit: int) -> bool:
    """Whether [ and { nest deeper than `limit` outside JSON strings: linear, no recursion.

    Escaped backslashes, then escaped quotes, are dropped first (bytes.replace runs left to
    right, so a run of backslashes keeps its parity); what is left of the quotes toggles
    "inside a string". Exact for valid JSON; for invalid JSON json.loads stops at the
    first stray backslash, before any nesting this scan could misjudge.
    """
    marks = head.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_MARKS)
    depth = inside = 0
    for start in range(0, len(marks), _DEPTH_CHUNK):
        chunk = np.frombuffer(marks[start : start + _DEPTH_CHUNK], np.uint8)
        quotes = chunk == ord('"')
        outside = (np.cumsum(quotes, dtype=np.int32) + inside) % 2 == 0
        brackets = chunk[outside & ~quotes]
        if brackets.size:
            # "[" and "{" have bit 1 set, "]" and "}" do not: +1 for an opener, -1 for a closer.
            levels = np.cumsum((brackets & 2).astype(np.int32) - 1) + depth
            if int(levels.max()) > limit:
                return True
            depth = int(levels[-1])
        inside = int(not outside[-1])
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _count(tensor: TensorIn, body_length: int) -> int:
    """The element count, with Python ints: each element takes at least one body byte."""
    if any(d < 0 for d in tensor.shape):
        raise BadInferenceRequest(f"input {_quote(tensor.name)} has a negative dimension")
    if any(d > MAX_DIMENSION for d in tensor.shape):
        raise BadInferenceRequest(
            f"input {_quote(tensor.name)}: a dimension above {MAX_DIMENSION} in its shape"
        )
    count = math.prod(tensor.shape)
    if count > body_length:
        raise BadInferenceRequest(
            f"input {_quote(tensor.name)}: shape {tensor.shape} declares {count} elements, "
            f"more than a body of {body_length} bytes holds"
        )
    return count


def _from_binary(tensor: TensorIn, raw: bytes, count: int) -> Any:
    if tensor.datatype == "BYTES":
        return _unpack_bytes(raw, count, tensor.name)
    dtype = _dtype(tensor)
    if len(raw) != count * dtype.itemsize:
        raise BadInferenceRequest(
            f"input {_quote(tensor.name)}: {len(raw)} bytes do not match shape {tensor.shape}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _from_json(tensor: TensorIn, count: int) -> Any:
    name = _quote(tensor.name)
    if tensor.datatype == "BYTES":
        return _json_strings(tensor, count)
    dtype = _dtype(tensor)
    try:
        values = np.array(tensor.data)
    except Exception:  # ragged nesting, ints beyond 64 bits, ...
        values = np.array(None)
    if values.dtype.kind not in "iuf":
        raise BadInferenceRequest(
            f"input {name}: data must be a flat or evenly nested list of numbers"
        )
    values = values.ravel()
    if values.size != count:
        raise BadInferenceRequest(
            f"input {name}: {values.size} values do not match shape {tensor.shape}"
        )
    if dtype.kind in "iu":
        if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
            raise BadInferenceRequest(
                f"input {name}: {tensor.datatype} data must be whole numbers (no NaN, no 1.5)"
            )
        info = np.iinfo(dtype)
        if values.dtype.kind == "f":
            # As floats, info.max + 1 is exact (a power of two) where info.max may not be.
            low, high = float(values.min(initial=0)), float(values.max(initial=0))
            out_of_range = low < info.min or high >= float(info.max) + 1
        else:
            low, high = int(values.min(initial=0)), int(values.max(initial=0))
            out_of_range = low < info.min or high > info.max
        if out_of_range:
            raise BadInferenceRequest(f"input {name}: values out of range for {tensor.datatype}")
    elif values.size and not np.abs(values).max() <= np.finfo(dtype).max:  # NaN, inf too
        raise BadInferenceRequest(f"input {name}: data must be finite {tensor.datatype} numbers")
    return values.astype(dtype).reshape(tensor.shape)


def _json_strings(tensor: TensorIn, count: int) -> list[bytes]:
    name = _quote(tensor.name)
    try:
        items = np.array(tensor.data, dtype=object).ravel().tolist()
    except Exception:
        items = [None]
    if len(items) != count or not all(isinstance(i, str) for i in items):
        raise BadInferenceRequest(f"input {name}: BYTES data must be {count} strings")
    try:
        return [i.encode("utf-8") for i in items]
    except UnicodeEncodeError:
        raise BadInferenceRequest(f"input {name}: a BYTES string is not valid Unicode") from None


def _quote(name: str) -> str:
    """A client-given name for a message: quoted, printable, at most about 60 characters."""
    return _printable(repr(name[:60]) + ("..." if len(name) > 60 else ""))


def _printable(text: object) -> str:
    """Text safe in a JSON answer (no lone surrogates) and of bounded length."""
    return str(text)[:500].encode("utf-8", "backslashreplace").decode("utf-8")


def _dtype(tensor: TensorIn) -> np.dtype[Any]:
    if tensor.datatype not in DTYPES:
        raise BadInferenceRequest(
            f"input {_quote(tensor.name)}: datatype {_quote(tensor.datatype)} is not supported here"
        )
    return DTYPES[tensor.datatype]


def _unpack_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadInferenceRequest(f"input {_quote(name)}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadInferenceRequest(f"input {_quote(name)}: truncated BYTES element")
        items.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise BadInferenceRequest(f"input {_quote(name)}: extra bytes after {count} BYTES elements")
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
