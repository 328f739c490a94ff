"""Reading the image from a request: size limit and deadline enforced while reading, and
anything past a small threshold spooled to disk, so a slow or large upload holds at most
`SEG_SPOOL_BYTES` of memory."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import IO

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import Message

from app.config import Settings
from app.errors import (
    Abandoned,
    InvalidImage,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from app.imaging.media_types import IMAGE_MEDIA_TYPES

# The formats' own media types, common aliases, and untyped bytes (the decoder sniffs).
RAW_IMAGE_TYPES = frozenset(IMAGE_MEDIA_TYPES.values()) | {
    "image/jpg", "image/x-ms-bmp", "application/octet-stream",
}  # fmt: skip


def _declared_too_large(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body has {declared} bytes; the limit is {limit} (SEG_MAX_UPLOAD_BYTES)"
        )


async def limited_stream(
    request: Request, limit: int, timeout_s: float
) -> AsyncGenerator[bytes, None]:
    """The body's chunks: 413 as soon as it passes `limit` bytes, 408 when the whole body
    has not arrived within `timeout_s`, 499 when the client hangs up mid-body."""
    _declared_too_large(request, limit)
    deadline = asyncio.get_running_loop().time() + timeout_s
    size = 0
    chunks: AsyncIterator[bytes] = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {timeout_s:g} s (SEG_BODY_TIMEOUT_S)"
            ) from None
        except ClientDisconnect:
            raise Abandoned("the client closed the connection during the upload") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the body exceeds the limit of {limit} bytes (SEG_MAX_UPLOAD_BYTES)"
            )
        yield chunk


async def read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body in memory (for bodies that must be parsed whole, such as /v2 JSON)."""
    return b"".join([chunk async for chunk in limited_stream(request, limit, timeout_s)])


async def read_image_upload(request: Request, settings: Settings) -> IO[bytes]:
    """The image file from a raw image body or the multipart field `image`, as a seekable
    file positioned at 0 (in memory up to SEG_SPOOL_BYTES, on disk above). The caller
    closes it."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    stream = limited_stream(request, settings.max_upload_bytes, settings.body_timeout_s)
    if media_type == "multipart/form-data":
        return await _multipart_image(request, stream)
    if media_type not in RAW_IMAGE_TYPES and media_type != "":
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send an image/* body "
            "or multipart/form-data with an 'image' field"
        )
    spool: IO[bytes] = SpooledTemporaryFile(max_size=settings.spool_bytes)  # noqa: SIM115
    try:
        async for chunk in stream:
            if spool.tell() + len(chunk) > settings.spool_bytes:
                await asyncio.to_thread(spool.write, chunk)  # rolls over to disk
            else:
                spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


async def _multipart_image(request: Request, stream: AsyncGenerator[bytes, None]) -> IO[bytes]:
    parser = MultiPartParser(request.headers, stream, max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidImage(f"malformed multipart body: {exc.message}") from None
    keep: IO[bytes] | None = None
    try:
        field = form.get("image")
        if field is None:
            raise InvalidImage("the multipart body has no 'image' field")
        if not isinstance(field, UploadFile):
            raise InvalidImage("the 'image' field must be a file upload, not a text field")
        keep = field.file
        keep.seek(0)
        return keep
    finally:
        for _, value in form.multi_items():  # close every other part's file
            if isinstance(value, UploadFile) and value.file is not keep:
                await value.close()


def in_memory(upload: IO[bytes]) -> bool:
    """Whether the upload is held in memory (at most SEG_SPOOL_BYTES, or python-multipart's
    1 MiB for a form field), not rolled over to disk: reading it never blocks on a disk."""
    return isinstance(upload, SpooledTemporaryFile) and not getattr(upload, "_rolled", True)


class DisconnectWatch:
    """`await watch()`: whether the client has hung up, once the body has been read whole.

    For Admission.run's polling: one pending ASGI receive per request, which the server
    completes with `http.disconnect` when the connection goes, and each poll only looks at
    it; Starlette's `request.is_disconnected` instead opens and cancels an anyio cancel scope
    on every poll, on the event loop. `close()` when the answer is ready."""

    def __init__(self, request: Request) -> None:
        self.receive = request.receive
        self.waiter: asyncio.Future[Message] | None = None
        self.gone = False

    async def __call__(self) -> bool:
        if self.gone:
            return True
        if self.waiter is not None and self.waiter.done():
            failed = self.waiter.cancelled() or self.waiter.exception() is not None
            self.gone = failed or self.waiter.result().get("type") == "http.disconnect"
            self.waiter = None  # anything else (an empty trailing body message): wait again
        if self.waiter is None and not self.gone:
            self.waiter = asyncio.ensure_future(self.receive())
        return self.gone

    def close(self) -> None:
        if self.waiter is not None:
            if self.waiter.done() and not self.waiter.cancelled():
                self.waiter.exception()  # retrieved: no "never retrieved" warning
            self.waiter.cancel()
            self.waiter = None


async def save_image_upload(
    request: Request, destination: Path, limit: int, timeout_s: float
) -> int:
    """Stream the image (raw body or multipart field `image`) into `destination` on disk,
    never into memory; its size in bytes."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    stream = limited_stream(request, limit, timeout_s)
    if media_type == "multipart/form-data":
        upload = await _multipart_image(request, stream)  # spooled to disk past 1 MiB
        try:
            return await asyncio.to_thread(_copy_to, upload, destination)
        finally:
            upload.close()
    if media_type not in RAW_IMAGE_TYPES and media_type != "":
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send an image/* body "
            "or multipart/form-data with an 'image' field"
        )
    size = 0
    with open(destination, "wb") as out:
        async for chunk in stream:
            await asyncio.to_thread(out.write, chunk)
            size += len(chunk)
    return size


def _copy_to(upload: IO[bytes], destination: Path) -> int:
    with open(destination, "wb") as out:
        shutil.copyfileobj(upload, out, 1024 * 1024)
        return out.tell()
