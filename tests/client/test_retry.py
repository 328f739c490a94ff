import email.utils

import httpx
import pytest

from segserve.retry import RetryPolicy, parse_retry_after


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    in_five = email.utils.formatdate(now + 5, usegmt=True)
    assert parse_retry_after(in_five, now=now) == pytest.approx(5.0)
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    for unusable in (None, "", "soon", "-1", "1.5", "٣"):  # ٣: a non-ASCII digit
        assert parse_retry_after(unusable) is None


def test_policy_retries_503_502_504_only_and_stops_after_retries() -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.5, max_backoff_s=0.5)
    assert policy.wait_for_status(503, 7.0, 0) == 7.0  # Retry-After wins over the backoff
    for status in (502, 503, 504):
        wait = policy.wait_for_status(status, None, 1)
        assert wait is not None and 0.25 <= wait <= 0.5
    for status in (400, 401, 404, 413, 422, 500, 501):
        assert policy.wait_for_status(status, 1.0, 0) is None
    assert policy.wait_for_status(503, 1.0, 2) is None  # the retries are spent


def test_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RetryPolicy(backoff_s=1.0, max_backoff_s=4.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)]:
        waits = [policy.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)


def test_transport_failures_retried_when_safe() -> None:
    policy = RetryPolicy(retries=3)
    request = httpx.Request("POST", "http://x/")
    refused = httpx.ConnectError("refused", request=request)
    broken = httpx.RemoteProtocolError("closed", request=request)
    slow = httpx.ReadTimeout("slow", request=request)
    assert policy.wait_for_failure(refused, 0, idempotent=False) is not None  # never sent
    assert policy.wait_for_failure(broken, 0, idempotent=True) is not None
    assert policy.wait_for_failure(broken, 0, idempotent=False) is None  # may have run
    assert policy.wait_for_failure(slow, 0, idempotent=True) is None  # still computing
    assert policy.wait_for_failure(refused, 3, idempotent=True) is None
