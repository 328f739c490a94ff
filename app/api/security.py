"""Optional API keys (SEG_API_KEYS) and CORS (SEG_CORS_ORIGINS, closed by default)."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.errors import problem

HEALTH_PATHS = ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready")
PAGE_PATHS = ("/", "/favicon.ico")  # the page and its static files hold no data
ADMIN_PREFIX = "/v2/repository/"  # checks SEG_ADMIN_KEYS itself (app/api/routes/repository.py)


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    if scheme.lower() == "basic" and token:
        # Label Studio connects to ML backends with Basic auth only: the key is the password.
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return request.headers.get("x-api-key")


def key_matches(candidate: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key (no early exit on the first match)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


class ApiKeyMiddleware:
    """401 problem+json unless the request carries one of the keys; open paths pass."""

    def __init__(self, app: ASGIApp, keys: list[str], open_paths: set[str]) -> None:
        self.app, self.keys, self.open_paths = app, keys, open_paths

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(("/static/", ADMIN_PREFIX))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        candidate = presented_key(request)
        if candidate is not None and key_matches(candidate, self.keys):
            await self.app(scope, receive, send)
            return
        detail = "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"
        if candidate is not None:
            detail = "the API key is not valid"
        response = problem(401, detail, "unauthorized", request)
        response.headers["WWW-Authenticate"] = 'Bearer realm="segserve"'
        await response(scope, receive, send)


def install_security(app: FastAPI, settings: Settings) -> None:
    keys = settings.api_key_list
    if keys:
        open_paths = set(PAGE_PATHS)
        if settings.open_health:
            open_paths |= set(HEALTH_PATHS)
        if settings.open_metrics:
            open_paths.add("/metrics")
        app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths=open_paths)
    if settings.cors_origin_list:  # added last: outermost, so preflights never need a key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type", "accept"],
            expose_headers=[
                "x-model-name",
                "x-model-version",
                "x-inference-time-ms",
                "x-tiles",
                "x-request-id",
                "retry-after",
            ],
            max_age=600,
        )
