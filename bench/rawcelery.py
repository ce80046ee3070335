"""The anchor: plain Celery with the same reliability settings (late acks, prefetch 1).

`BENCH_BACKEND` picks the result backend: unset (none), `redis` (to wait on a result), or a
`db+...` SQLAlchemy URL with `result_extended`, which is how people keep task state in a
database today. `BENCH_COUNTER` counts executions in Redis, so throughput runs can tell
when the queue is drained without a result backend.

`BENCH_ROUND_TRIPS`, a PostgreSQL URL, makes each task send two `SELECT 1` on its own
connection: the round trips that any design which records a start before the work and an
outcome after it must pay. `BENCH_WRITES` (a PostgreSQL URL) makes each task record its
start and its end instead, each a transaction of its own (an insert, then an update by
primary key, on a two-column table): the least such a design writes, with no status,
fencing, events or indexes of ours (the floors the throughput benchmark can show beside
us).
`raw.statements` runs the orchestrator's own claim and success for a job id, on the
database at `BENCH_DATABASE_URL`, with no runner around them: what those two transitions
cost by themselves.
"""

from __future__ import annotations

import os
import uuid
from functools import cache
from typing import TYPE_CHECKING, Any

import psycopg
import redis
from celery import Celery

if TYPE_CHECKING:
    from orchestrator.db import Database

# The orchestrator's modules are imported by `raw.statements` only, when it first runs: at
# import, they would sit in every raw worker's heap (SQLAlchemy, pydantic, the models),
# and Python's collector walk them at each full collection, slowing the anchor itself.

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


@cache
def _connection(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


@app.task(name="raw.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    if url := os.environ.get("BENCH_ROUND_TRIPS"):
        for _ in range(2):
            _connection(url).execute("SELECT 1").fetchone()
    if url := os.environ.get("BENCH_WRITES"):
        run = uuid.uuid4()
        _connection(url).execute("INSERT INTO bench_runs (id) VALUES (%s)", (run,))
        _connection(url).execute("UPDATE bench_runs SET finished = true WHERE id = %s", (run,))
    if os.environ.get("BENCH_COUNT"):
        _counter.incr(COUNTER)


@cache
def _database() -> Database:
    from orchestrator.db import Database  # noqa: PLC0415 - see the imports above

    return Database(os.environ["BENCH_DATABASE_URL"])


@app.task(name="raw.statements")  # type: ignore[untyped-decorator]
def claim_and_succeed(job_id: str) -> None:
    # The worker's own two transitions, with none of the runner around them (no
    # heartbeat, context, input validation or outcome mapping).
    from orchestrator import transitions  # noqa: PLC0415 - see the imports above
    from orchestrator.models import utcnow  # noqa: PLC0415
    from orchestrator.states import Attempt  # noqa: PLC0415

    database = _database()
    started = transitions.claim_alone(
        database, job_id, worker="raw", lease_seconds=30, now=utcnow()
    )
    assert started is not None, f"{job_id} was not claimable"
    run, now = Attempt.of(started.job), utcnow()
    assert transitions.succeed_alone(database, run, None, now, has_next=False)
    _counter.incr(COUNTER)


@app.task(name="raw.step")  # type: ignore[untyped-decorator]
def step(*_: object) -> None:
    return None
