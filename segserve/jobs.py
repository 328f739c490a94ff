"""Jobs from Python: submit an image too large or too slow for one request, follow its
progress, fetch the result; `Jobs(client)` or `client.jobs`."""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from segserve.errors import TransportError, UnexpectedAnswer, service_error
from segserve.images import ImageInput, class_map, image_body

if TYPE_CHECKING:
    from segserve.client import Client, ParamValue

FINISHED = ("succeeded", "failed", "cancelled")
STREAM_ABOVE = 32 * 1024 * 1024  # files above this are streamed from disk, not read whole


class JobFailed(Exception):
    """The job ended failed or cancelled; `job` is its last state (with `error`)."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(f"job {job.get('id')} {job.get('state')}: {error.get('detail', '')}")
        self.job = job


class Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, image: ImageInput, model: str, **params: ParamValue) -> dict[str, Any]:
        """POST /v1/models/{model}/jobs; the job's first state (its `id` is what to keep).
        A large file is streamed from disk in one attempt; smaller inputs are retried like
        any call while the service answers 503 (the service refuses before reading)."""
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}/jobs"
        query = {
            k: ("true" if v else "false") if isinstance(v, bool) else str(v)
            for k, v in params.items()
            if v is not None
        }
        if isinstance(image, str | os.PathLike) and os.path.getsize(image) > STREAM_ABOVE:
            with open(image, "rb") as body:
                try:
                    response = self.client.http.post(
                        path,
                        content=body,
                        params=query,
                        headers={"content-type": "application/octet-stream"},
                        timeout=httpx.Timeout(None, connect=self.client.connect_timeout),
                    )
                except httpx.TransportError as exc:
                    raise TransportError(f"POST {self.client.url}{path}: {exc}") from exc
            if not response.is_success:
                raise service_error(response.status_code, response.reason_phrase, response.content)
        else:
            content, content_type = image_body(image)
            response = self.client.send(
                "POST", path, content=content, params=query, headers={"content-type": content_type}
            )
        return self._json(response)

    def status(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: state, tiles_done, tiles_total, elapsed_s, eta_s, error."""
        return self._json(self.client.send("GET", self._path(job_id)))

    def list(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._json(self.client.send("GET", "/v1/jobs"))["jobs"]
        return jobs

    def cancel(self, job_id: str) -> None:
        """DELETE: a running job stops between tile batches; a finished one is deleted."""
        self.client.send("DELETE", self._path(job_id), idempotent=False)

    def wait(
        self,
        job_id: str,
        progress: bool = True,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        stream: TextIO | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends, drawing `tiles done/total` and the time left; the last
        state when it succeeded, JobFailed otherwise. Interrupting only stops the waiting:
        the job goes on, and `wait(job_id)` picks it up again."""
        out = stream if stream is not None else sys.stderr
        started = time.monotonic()
        while True:
            job = self.status(job_id)
            if progress:
                total, done = job.get("tiles_total") or 0, job.get("tiles_done") or 0
                filled = 30 * done // total if total else 0
                eta = f", ~{job['eta_s']:.0f} s left" if job.get("eta_s") is not None else ""
                out.write(
                    f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total or '?'} "
                    f"tiles, {job['state']}{eta}   "
                )
                out.flush()
            if job["state"] in FINISHED:
                if progress:
                    out.write("\n")
                if job["state"] != "succeeded":
                    raise JobFailed(job)
                return job
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout_s} s")
            time.sleep(poll_s)

    def result(self, job_id: str, format: str = "png", to: Path | None = None) -> Any:
        """The result: with `to`, streamed into that file (a BigTIFF may be GBs) and its path
        returned; else the (H, W) class map for png, the parsed JSON for json, bytes for
        tiff."""
        path = f"{self._path(job_id)}/result"
        if to is not None:
            with self.client.http.stream("GET", path, params={"format": format}) as response:
                if not response.is_success:
                    raise service_error(
                        response.status_code, response.reason_phrase, response.read()
                    )
                with open(to, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
            return to
        response = self.client.send("GET", path, params={"format": format})
        if format == "png":
            return class_map(response.content)
        if format == "json":
            return self._json(response)
        return response.content

    @staticmethod
    def _path(job_id: str) -> str:
        return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}"

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise UnexpectedAnswer(f"{response.request.url} did not answer JSON") from exc
        if not isinstance(body, dict):
            raise UnexpectedAnswer(f"{response.request.url} did not answer a JSON object")
        return body
