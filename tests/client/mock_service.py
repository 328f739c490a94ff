"""A scripted service behind httpx.MockTransport: the client's behaviour without a server."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

from segserve import Client
from segserve.retry import RetryPolicy

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, title: str, detail: str, **headers: str) -> httpx.Response:
    body = {"type": "https://segserve.dev/problems/x", "title": title, "status": status,
            "detail": detail, "request_id": "rid-from-problem"}  # fmt: skip
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", **headers},
    )


def palette_png(labels: np.ndarray) -> bytes:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (768 - 9))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Script:
    """Answers each request with the next of `responses` (the last one repeats), and keeps
    every request it saw."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            request.read()
            self.requests.append(request)
            answer = self.responses[min(len(self.requests), len(self.responses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def client(
        self, api_key: str | None = None, retries: int = 3, deadline_s: float | None = 600.0
    ) -> Client:
        client = Client("http://segserve.test", api_key, retries=retries, deadline_s=deadline_s,
                        transport=httpx.MockTransport(self))  # fmt: skip
        # Backoffs of milliseconds: the tests wait for Retry-After only.
        client.policy = RetryPolicy(retries, deadline_s, backoff_s=0.01, max_backoff_s=0.02)
        return client
