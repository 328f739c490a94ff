"""File suffixes of the image formats the service reads, with their media types.

Standard library only: the command-line client imports it too.
"""

from __future__ import annotations

IMAGE_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                     ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp",
                     ".webp": "image/webp", ".gif": "image/gif"}  # fmt: skip
