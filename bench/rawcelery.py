"""The anchor: plain Celery with the same reliability settings (late acks, prefetch 1).

`BENCH_BACKEND` picks the result backend: unset (none), `redis` (to wait on a result), or a
`db+...` SQLAlchemy URL with `result_extended`, which is how people keep task state in a
database today. `BENCH_COUNTER` counts executions in Redis, so throughput runs can tell
when the queue is drained without a result backend.

`BENCH_ROUND_TRIPS`, a PostgreSQL URL, makes each task send two `SELECT 1` on its own
connection: the least that any design which records a start before the work and an
outcome after it must pay (the floor the throughput benchmark can show beside us).
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import redis
from celery import Celery

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


_round_trips: list[Any] = []


@app.task(name="raw.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    if url := os.environ.get("BENCH_ROUND_TRIPS"):
        if not _round_trips:
            _round_trips.append(psycopg.connect(url, autocommit=True))
        for _ in range(2):
            _round_trips[0].execute("SELECT 1").fetchone()
    if os.environ.get("BENCH_COUNT"):
        _counter.incr(COUNTER)


@app.task(name="raw.step")  # type: ignore[untyped-decorator]
def step(*_: object) -> None:
    return None
