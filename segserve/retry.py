"""When to try a request again, and how long to wait first."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

# Transport failures after which the request certainly never reached the application.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures where it may have: retried only for requests without side effects. A read
# timeout is not among them: the service may still be computing the answer.
BROKEN = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout)
RETRIED_STATUSES = frozenset({502, 503, 504})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a naive one is read as such
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts at most, none started past `deadline_s` after the first.

    503 waits for its Retry-After (or the backoff when it has none); 502, 504 and broken
    connections wait the backoff: `backoff_s` doubled per attempt up to `max_backoff_s`,
    with jitter so that many clients refused at once do not come back at once.
    """

    retries: int = 3
    deadline_s: float | None = 600.0
    backoff_s: float = 0.25
    max_backoff_s: float = 10.0

    def backoff(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1` (attempt 0 is the first)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def wait_for_status(self, status: int, retry_after: float | None, attempt: int) -> float | None:
        """Seconds before retrying an answer with `status`, or None not to retry it."""
        if attempt >= self.retries or status not in RETRIED_STATUSES:
            return None
        if status == 503 and retry_after is not None:
            return retry_after
        return self.backoff(attempt)

    def wait_for_failure(
        self, error: httpx.TransportError, attempt: int, idempotent: bool
    ) -> float | None:
        """Seconds before retrying after a transport failure, or None not to retry."""
        if attempt >= self.retries:
            return None
        if isinstance(error, NOT_SENT) or (idempotent and isinstance(error, BROKEN)):
            return self.backoff(attempt)
        return None
