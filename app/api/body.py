"""Reading the image from a request, with the size limit enforced while reading."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from app.imaging.media_types import IMAGE_MEDIA_TYPES

# The formats' own media types, common aliases, and untyped bytes (the decoder sniffs).
RAW_IMAGE_TYPES = frozenset(IMAGE_MEDIA_TYPES.values()) | {
    "image/jpg", "image/x-ms-bmp", "application/octet-stream",
}  # fmt: skip


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body has {declared} bytes; the limit is {limit} (SEG_MAX_UPLOAD_BYTES)"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the body exceeds the limit of {limit} bytes (SEG_MAX_UPLOAD_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_bytes(request: Request, limit: int) -> bytes:
    """Image bytes from a raw image body or the multipart field `image`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_limited(request, limit)
        return await _multipart_image(request, body)
    if media_type in RAW_IMAGE_TYPES or media_type == "":
        return await read_limited(request, limit)
    raise UnsupportedMediaType(
        f"content type {media_type!r} is not accepted; send an image/* body "
        "or multipart/form-data with an 'image' field"
    )


async def _multipart_image(request: Request, body: bytes) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidImage(f"malformed multipart body: {exc.message}") from None
    try:
        field = form.get("image")
        if field is None:
            raise InvalidImage("the multipart body has no 'image' field")
        if not isinstance(field, UploadFile):
            raise InvalidImage("the 'image' field must be a file upload, not a text field")
        return await field.read()
    finally:
        await form.close()
