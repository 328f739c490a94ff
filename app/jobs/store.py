"""Job state in SQLite (WAL): one row a job, written by the API and the job worker."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


@dataclass
class Job:
    id: str
    owner: str  # a hash of the API key that made it ("" without keys)
    model: str
    model_version: str
    state: JobState
    options: dict[str, Any]
    width: int
    height: int
    created: float
    started: float | None = None
    finished: float | None = None
    tiles_done: int = 0
    tiles_total: int = 0
    error: dict[str, Any] | None = None
    disk_bytes: int = 0
    cancel_requested: bool = False


COLUMNS = (
    "id", "owner", "model", "model_version", "state", "options", "width", "height", "created",
    "started", "finished", "tiles_done", "tiles_total", "error", "disk_bytes", "cancel_requested",
)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL,
    state TEXT NOT NULL, options TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, tiles_done INTEGER NOT NULL DEFAULT 0,
    tiles_total INTEGER NOT NULL DEFAULT 0, error TEXT, disk_bytes INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created);
"""


class JobStore:
    """Thread-safe: one connection, serialised by a lock (the work is tiny rows)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def add(self, job: Job) -> None:
        values = self._row(job)
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({','.join(COLUMNS)}) VALUES "
                       f"({','.join('?' * len(COLUMNS))})", values)  # fmt: skip

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            row = self.db.execute(
                f"SELECT {','.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return self._job(row) if row else None

    def find(self, owner: str | None = None, states: tuple[JobState, ...] = ()) -> list[Job]:
        query, params = f"SELECT {','.join(COLUMNS)} FROM jobs WHERE 1=1", []
        if owner is not None:
            query += " AND owner = ?"
            params.append(owner)
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            params += [s.value for s in states]
        with self.lock:
            rows = self.db.execute(query + " ORDER BY created, id", params).fetchall()
        return [self._job(row) for row in rows]

    def update(self, job_id: str, **changes: Any) -> None:
        if not changes:
            return
        encoded = {k: self._encode(k, v) for k, v in changes.items()}
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*encoded.values(), job_id])

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def count(self, states: tuple[JobState, ...]) -> int:
        with self.lock:
            (n,) = self.db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(states))})",
                [s.value for s in states],
            ).fetchone()
        return int(n)

    def disk_bytes(self) -> int:
        with self.lock:
            (n,) = self.db.execute("SELECT COALESCE(SUM(disk_bytes), 0) FROM jobs").fetchone()
        return int(n)

    def expired(self, ttl_s: float, now: float | None = None) -> list[Job]:
        cutoff = (now or time.time()) - ttl_s
        with self.lock:
            rows = self.db.execute(
                f"SELECT {','.join(COLUMNS)} FROM jobs WHERE finished IS NOT NULL "
                "AND finished < ?", (cutoff,)
            ).fetchall()  # fmt: skip
        return [self._job(row) for row in rows]

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @staticmethod
    def _encode(key: str, value: Any) -> Any:
        if key in ("options", "error"):
            return None if value is None else json.dumps(value)
        if key == "state":
            return JobState(value).value
        if key == "cancel_requested":
            return int(bool(value))
        return value

    def _row(self, job: Job) -> list[Any]:
        return [self._encode(c, getattr(job, c)) for c in COLUMNS]

    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        values = dict(zip(COLUMNS, row, strict=True))
        values["state"] = JobState(values["state"])
        values["options"] = json.loads(values["options"])
        values["error"] = json.loads(values["error"]) if values["error"] else None
        values["cancel_requested"] = bool(values["cancel_requested"])
        return Job(**values)
