"""The one error model (app/errors.py): the problem type, title and status a client
dispatches on for every error class, the /v2 error shape, request ids, validation
details, routing errors, hang-ups and unexpected failures (no internals leak)."""

from __future__ import annotations

import logging
from http import HTTPStatus

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app import errors

BASE = "https://segserve.dev/problems/"
# (class, status, type slug, title; None: the status's standard phrase, which differs
# between Python versions for 413 and 422): the contract clients read.
TABLE = [
    (errors.ProblemError, 400, "bad-request", None),
    (errors.BadInferenceRequest, 400, "bad-inference-request", None),
    (errors.InvalidImage, 400, "invalid-image", None),
    (errors.ModelNotFound, 404, "model-not-found", None),
    (errors.RepositoryOff, 404, "not-found", None),
    (errors.AdminKeyRequired, 401, "unauthorized", None),
    (errors.LoadFailed, 400, "load-failed", None),
    (errors.PayloadTooLarge, 413, "payload-too-large", None),
    (errors.RequestTimeout, 408, "request-timeout", None),
    (errors.AnswerTooLarge, 413, "answer-too-large", "Answer Too Large"),
    (errors.InsufficientStorage, 507, "insufficient-storage", None),
    (errors.JobNotReady, 409, "job-not-finished", None),
    (errors.UnsupportedMediaType, 415, "unsupported-media-type", None),
    (errors.InvalidParameter, 422, "invalid-parameter", None),
    (errors.ScoresUnavailable, 422, "scores-unavailable", "Scores Unavailable"),
    (errors.ModelNotReady, 503, "model-not-ready", None),
    (errors.Overloaded, 503, "overloaded", None),
    (errors.ShuttingDown, 503, "shutting-down", None),
    (errors.DeadlineExceeded, 504, "deadline-exceeded", None),
    (errors.Abandoned, 499, "client-closed-request", "Client Closed Request"),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    errors.install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next):  # type: ignore[no-untyped-def]
        request.state.request_id = request.headers.get("x-id", "")
        return await call_next(request)

    @app.get("/raise/{index}")
    @app.get("/v2/raise/{index}")
    async def raise_problem(index: int) -> None:
        raise TABLE[index][0]("what went wrong", headers={"X-Hint": "h"})

    @app.get("/numbers")
    async def numbers(count: int = Query(ge=1)) -> int:
        return count

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, detail=None, headers={"X-Tea": "1"})

    @app.get("/gone")
    async def gone() -> None:
        raise ClientDisconnect()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("/secret/path/weights.onnx")

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("index", range(len(TABLE)), ids=[row[2] for row in TABLE])
def test_every_problem_class_has_its_type_title_and_status(client: TestClient, index: int) -> None:
    _, status, slug, title = TABLE[index]
    title = title or HTTPStatus(status).phrase
    response = client.get(f"/raise/{index}", headers={"x-id": "req-7"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-hint"] == "h"
    assert response.json() == {
        "type": BASE + slug,
        "title": title,
        "status": status,
        "detail": "what went wrong",
        "instance": f"/raise/{index}",
        "request_id": "req-7",
    }


def test_v2_errors_have_the_protocols_shape(client: TestClient) -> None:
    response = client.get("/v2/raise/3")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "what went wrong"}


def test_no_request_id_is_left_out(client: TestClient) -> None:
    body = client.get("/raise/0").json()
    assert "request_id" not in body and body["instance"] == "/raise/0"


def test_invalid_parameters_are_422_with_each_error_located(client: TestClient) -> None:
    response = client.get("/numbers", params={"count": 0})
    assert response.status_code == 422
    body = response.json()
    assert body["type"] == BASE + "invalid-parameter"
    assert body["title"] == HTTPStatus(422).phrase
    assert len(body["errors"]) == 1
    assert body["errors"][0]["loc"] == ["query", "count"]
    assert body["detail"] == "query.count: " + body["errors"][0]["msg"]
    assert "greater than or equal to 1" in body["detail"]


def test_routing_errors_are_problems_that_keep_their_headers(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no route for GET /nowhere"
    assert missing.json()["type"] == BASE + "not-found"
    wrong_method = client.post("/numbers")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert wrong_method.json()["detail"] == "Method Not Allowed"
    assert wrong_method.json()["type"] == BASE + "method-not-allowed"
    teapot = client.get("/teapot")
    assert teapot.status_code == 418 and teapot.headers["x-tea"] == "1"
    assert teapot.json()["detail"] == "I'm a Teapot"
    assert teapot.json()["type"] == BASE + "i'm-a-teapot"


def test_a_client_hanging_up_is_a_499_problem(client: TestClient) -> None:
    response = client.get("/gone")
    assert response.status_code == 499
    assert response.json()["type"] == BASE + "client-closed-request"
    assert response.json()["title"] == "Client Closed Request"
    assert response.json()["detail"] == "the client closed the connection"


def test_an_unexpected_error_is_a_500_that_leaks_nothing(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="segserve.errors"):
        response = client.get("/boom", headers={"x-id": "req-9"})
    assert response.status_code == 500
    body = response.json()
    assert "secret" not in response.text
    assert body["type"] == BASE + "internal-server-error"
    assert body["detail"] == "internal error; see the server log for this request id"
    assert body["request_id"] == "req-9"
    logged = [r for r in caplog.records if r.name == "segserve.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert logged[0].request_id == "req-9"  # type: ignore[attr-defined]
