"""segserve's Python client: `from segserve import Client`.

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        classes = client.segment("slice.png", "unet-isbi")  # (H, W) uint8 class map

Standalone from the service's own `app` package (which a user's `app` would shadow): it needs
httpx, numpy and Pillow only.
"""

from segserve.batch import Item
from segserve.client import DEFAULT_URL, Answer, ClassMap, Client, Format, ParamValue
from segserve.errors import (
    BadRequest,
    GatewayTimeout,
    InputError,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    SegserveError,
    ServiceError,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    UnsupportedMediaType,
)
from segserve.images import ImageInput
from segserve.jobs import JobFailed, Jobs
from segserve.retry import RetryPolicy

__all__ = [
    "DEFAULT_URL",
    "Answer",
    "BadRequest",
    "ClassMap",
    "Client",
    "Format",
    "GatewayTimeout",
    "ImageInput",
    "InputError",
    "InvalidParameter",
    "Item",
    "JobFailed",
    "Jobs",
    "NotFound",
    "ParamValue",
    "PayloadTooLarge",
    "RetryPolicy",
    "SegserveError",
    "ServiceError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "UnsupportedMediaType",
]
