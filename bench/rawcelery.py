"""The anchor: plain Celery with the same reliability settings (late acks, prefetch 1).

`BENCH_BACKEND` picks the result backend: unset (none), `redis` (to wait on a result), or a
`db+...` SQLAlchemy URL with `result_extended`, which is how people keep task state in a
database today. `BENCH_COUNTER` counts executions in Redis, so throughput runs can tell
when the queue is drained without a result backend.

`BENCH_ROUND_TRIPS`, a PostgreSQL URL, makes each task send two `SELECT 1` on its own
connection: the least that any design which records a start before the work and an
outcome after it must pay (the floor the throughput benchmark can show beside us).
`raw.statements` runs the orchestrator's own claim and success for a job id on such a
connection, with no runner around them: what those two statements cost by themselves.
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import cache
from typing import Any

import psycopg
import redis
from celery import Celery
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

from orchestrator import transition_statements as statements
from orchestrator.db import PreparedStatement
from orchestrator.models import utcnow

BROKER = os.environ["BENCH_BROKER"]
BACKEND = os.environ.get("BENCH_BACKEND") or None
COUNTER = "bench:raw:done"

app = Celery("rawbench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_extended=bool(BACKEND and BACKEND.startswith("db+")),
    task_ignore_result=BACKEND is None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_counter = redis.Redis.from_url(BROKER)


_connections: list[psycopg.Connection[Any]] = []


def _connection() -> psycopg.Connection[Any]:
    if not _connections:
        _connections.append(psycopg.connect(os.environ["BENCH_ROUND_TRIPS"], autocommit=True))
    return _connections[0]


@app.task(name="raw.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    if os.environ.get("BENCH_ROUND_TRIPS"):
        for _ in range(2):
            _connection().execute("SELECT 1").fetchone()
    if os.environ.get("BENCH_COUNT"):
        _counter.incr(COUNTER)


@cache
def _hot_statements() -> tuple[PreparedStatement, PreparedStatement]:
    dialect = postgresql_psycopg.dialect()  # type: ignore[no-untyped-call]
    return (
        PreparedStatement.compile(statements.claim_postgresql(False), dialect),
        PreparedStatement.compile(statements.succeed_postgresql(False), dialect),
    )


@app.task(name="raw.statements")  # type: ignore[untyped-decorator]
def claim_and_succeed(job_id: str) -> None:
    claim, succeed = _hot_statements()
    now = utcnow()
    params = {
        "b_job_id": job_id,
        "b_source": "queued",
        "b_attempt": None,
        "b_due_by": now,
        "b_claimer": "raw",
        "b_now": now,
        "b_lease_until": now + timedelta(seconds=30),
        "b_event_data": {"worker": "raw"},
    }
    row = _connection().execute(claim.sql, claim.bind(params)).fetchone()
    assert row is not None, f"{job_id} was not claimable"
    attempt = claim.row(row)["attempt"]
    done = {"b_job_id": job_id, "b_attempt": attempt, "b_now": utcnow(), "b_outcome": None}
    _connection().execute(succeed.sql, succeed.bind(done)).fetchone()
    _counter.incr(COUNTER)


@app.task(name="raw.step")  # type: ignore[untyped-decorator]
def step(*_: object) -> None:
    return None
