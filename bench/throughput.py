"""Worker throughput: drain N pre-created no-op jobs with `prefork -c 2`.

Three contenders, each with late acks and prefetch 1, in every round:
- orchestrator: jobs recorded in the database, admitted into the broker's window by the
  dispatcher process as the worker empties it, claimed, fenced, recorded;
- raw Celery: N no-op tasks, no result backend;
- Celery + SQLAlchemy result backend (`result_extended`): how people keep task state in a
  database today.
With `--floor` (PostgreSQL), three more, all raw Celery: a task making two `SELECT 1`
round trips; a task recording its start and its end (two small writes); a task running
the orchestrator's own claim and success for a recorded job, with no runner around them.
The clock starts when an idle, warmed-up worker is told to consume the queue, and stops when
the last job is done. Ratios are taken within each round; medians across rounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import redis
import sqlalchemy as sa
from celery import Celery

from bench.harness import (
    Servers,
    add_durability_option,
    celery_worker,
    dispatcher,
    median,
    orchestrator_settings,
    report,
    servers,
    settings_env,
    wait_ping,
)
from orchestrator.dispatch.celery import UNACKED, create_celery_app, queue_depths
from orchestrator.models import LIVE_STATES_SQL, Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob

CHUNK = 1000
# The `celery+2 writes` floor's table: a task's start and end, nothing else.
RUNS_TABLE = "CREATE TABLE IF NOT EXISTS bench_runs (id uuid PRIMARY KEY, finished boolean)"


def record_jobs(env: Servers, database_url: str, jobs: int) -> Runtime:
    """`jobs` no-op jobs recorded, ready (the first window's worth sent already)."""
    settings = orchestrator_settings(database_url, env.redis_url(1))
    runtime = Runtime.build(settings)
    for start in range(0, jobs, CHUNK):
        runtime.service.create_batch(
            [
                NewJob(tenant_id=f"t{i % 50}", type="BENCH_NOOP")
                for i in range(start, min(start + CHUNK, jobs))
            ]
        )
    # Planner statistics, as autovacuum would have them on a live system: without them
    # PostgreSQL may read the claim through the status index instead of the primary key.
    with runtime.database.transaction() as session:
        session.execute(sa.text("ANALYZE jobs"))
    return runtime


class WindowWatch:
    """How long the orchestrator's window held no message during a drain (`--watch-window`):
    its depth in Redis read from a thread every `EVERY` seconds. Empty, the workers may
    wait for the dispatcher. The reads cost a percent or two of a core: the figure, not
    that run's rate, is what the option is for."""

    EVERY = 0.005

    def __init__(self, redis_url: str, queue: str = "default") -> None:
        self.broker = redis.Redis.from_url(redis_url)
        self.queue = queue
        self.empty_seconds = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        self._done.set()
        if self._thread.ident is not None:  # started
            self._thread.join()
        return self.empty_seconds

    def _watch(self) -> None:
        last = time.perf_counter()
        while not self._done.is_set():
            empty = not queue_depths(self.broker, [self.queue])[self.queue]
            now = time.perf_counter()
            if empty:
                self.empty_seconds += now - last
            last = now
            time.sleep(self.EVERY)


def orchestrator_rate(
    env: Servers, backend: str, jobs: int, folder: Path, watch: list[float] | None = None
) -> float:
    """Jobs a second; with `watch`, the seconds the window was empty are appended to it."""
    runtime = record_jobs(env, env.database_url(backend), jobs)
    settings = runtime.settings
    node = f"orch-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker("tasks.worker", settings_env(settings), folder / "orch.log", node)
    app = create_celery_app(settings)
    feeder = None
    watcher = WindowWatch(settings.redis_url) if watch is not None else None
    try:
        env.quiesce()
        wait_ping(app, node)
        feeder = dispatcher(settings, folder / "dispatcher.log")
        broker = redis.Redis.from_url(settings.redis_url)
        started = time.perf_counter()
        app.control.add_consumer("default", destination=[node], reply=True)
        if watcher is not None:
            watcher.start()
        _wait(lambda: _none_live(runtime, broker))
        elapsed = time.perf_counter() - started
        if watcher is not None and watch is not None:
            watch.append(watcher.stop())
        assert _succeeded(runtime) == jobs, "jobs were lost or failed"
        return jobs / elapsed
    finally:
        if watcher is not None:
            watcher.stop()
        if feeder is not None:
            feeder.stop()
        worker.stop()
        runtime.database.dispose()


def statements_rate(env: Servers, jobs: int, folder: Path) -> float:
    """Raw Celery running the orchestrator's claim and success for recorded jobs, with no
    runner: what the two transitions cost by themselves."""
    url = env.database_url("postgresql")
    runtime = record_jobs(env, url, jobs)
    with runtime.database.session() as session:
        job_ids = list(session.scalars(sa.select(Job.id)))
    runtime.database.dispose()
    return raw_rate(env, jobs, folder, None, database_url=url, job_ids=job_ids)


def _driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def raw_rate(
    env: Servers,
    jobs: int,
    folder: Path,
    backend_url: str | None,
    *,
    round_trips: str = "",
    writes: str = "",
    database_url: str = "",
    job_ids: Sequence[str] = (),
) -> float:
    broker = env.redis_url(2)
    os.environ["BENCH_BROKER"] = broker  # the app module reads it at import
    app = Celery("rawbench", broker=broker)
    counter = redis.Redis.from_url(broker)
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task("raw.statements", args=[job_id], producer=producer)
        for _ in range(jobs - len(job_ids)):
            app.send_task("raw.noop", producer=producer)
    node = f"raw-{uuid.uuid4().hex[:6]}@bench"
    env_vars = {
        **os.environ,
        "BENCH_BROKER": broker,
        "BENCH_COUNT": "1",
        "BENCH_BACKEND": backend_url or "",
        "BENCH_ROUND_TRIPS": round_trips,
        "BENCH_WRITES": writes,
        "BENCH_DATABASE_URL": database_url,
    }
    if writes:
        with psycopg.connect(writes, autocommit=True) as connection:
            connection.execute(RUNS_TABLE)
            connection.execute("TRUNCATE bench_runs")
    worker = celery_worker("bench.rawcelery", env_vars, folder / "raw.log", node)
    try:
        env.quiesce()
        wait_ping(app, node)
        started = time.perf_counter()
        app.control.add_consumer("celery", destination=[node], reply=True)
        _wait(lambda: int(counter.get("bench:raw:done") or 0) >= jobs)
        return jobs / (time.perf_counter() - started)
    finally:
        worker.stop()


def _none_live(runtime: Runtime, broker: redis.Redis) -> bool:
    """Whether every job has finished. The broker first: while it holds a message of the
    queue, or one taken and not acknowledged, some job is live, and asking Redis costs the
    system under test next to nothing. Only when it holds none (between two fills, or at
    the end), one probe of the live jobs' index, which holds nothing else. (Probed every
    time, that index cost about 1% of the machine's CPU during a drain: the probe walks
    the entries of the jobs finished since it was last vacuumed. A count of 20,000 rows
    cost several percent.)"""
    if queue_depths(broker, ["default"])["default"] or broker.hlen(UNACKED):
        return False
    with runtime.database.session() as session:
        live = sa.select(Job.id).where(sa.text(LIVE_STATES_SQL)).limit(1)
        return session.execute(live).first() is None


def _succeeded(runtime: Runtime) -> int:
    with runtime.database.session() as session:
        return (
            session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(Job.status == "succeeded")
            )
            or 0
        )


def _wait(done: object, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        time.sleep(0.1)


def one_round(env: Servers, args: argparse.Namespace, backend: str, number: int) -> dict[str, Any]:
    """Every contender once, ratios within the round."""
    jobs, folder = args.jobs, args.folder
    empty: list[float] | None = [] if args.watch_window else None
    contenders: dict[str, Callable[[], float]] = {
        "raw celery/s": partial(raw_rate, env, jobs, folder, None),
        "celery+db backend/s": partial(
            raw_rate, env, jobs, folder, f"db+{env.database_url(backend)}"
        ),
        "orchestrator/s": partial(orchestrator_rate, env, backend, jobs, folder, watch=empty),
    }
    if args.floor and backend == "postgresql":
        plain = _driver_url(env.database_url(backend))
        contenders["celery+2 round trips/s"] = partial(
            raw_rate, env, jobs, folder, None, round_trips=plain
        )
        contenders["celery+2 writes/s"] = partial(raw_rate, env, jobs, folder, None, writes=plain)
        contenders["celery+our 2 statements/s"] = partial(statements_rate, env, jobs, folder)
    # The machine's speed drifts over minutes: each round starts with another contender,
    # so that none always runs at the same point of a round.
    names = list(contenders)
    first = number % len(names)
    order = names[first:] + names[:first]
    rate = {name: contenders[name]() for name in order}
    ours = rate["orchestrator/s"]
    row: dict[str, Any] = {"round": number, "first": order[0].split("/")[0], **rate}
    row["vs raw"] = ours / rate["raw celery/s"]
    row["vs db backend"] = ours / rate["celery+db backend/s"]
    if empty:
        row["window empty s"] = empty[0]
    if "celery+2 round trips/s" in rate:
        row["floor vs raw"] = rate["celery+2 round trips/s"] / rate["raw celery/s"]
        row["writes vs raw"] = rate["celery+2 writes/s"] / rate["raw celery/s"]
        row["vs writes"] = ours / rate["celery+2 writes/s"]
        row["statements vs raw"] = rate["celery+our 2 statements/s"] / rate["raw celery/s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run raw Celery whose task makes two PostgreSQL round trips (SELECT 1), "
        "two PostgreSQL writes, or the orchestrator's own two statements",
    )
    parser.add_argument(
        "--watch-window",
        action="store_true",
        help="also report how long the orchestrator's window held no message in its drains, "
        "the last jobs' own moments included (Redis read every 5 ms; the reads cost a "
        "little of the rate)",
    )
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        for backend in args.backends.split(","):
            rows = [one_round(env, args, backend, n) for n in range(1, args.rounds + 1)]
            summary = {
                "backend": backend,
                "jobs": args.jobs,
                "rounds": args.rounds,
                "orchestrator_per_s": median([r["orchestrator/s"] for r in rows]),
                "raw_per_s": median([r["raw celery/s"] for r in rows]),
                "db_backend_per_s": median([r["celery+db backend/s"] for r in rows]),
                "ratio_vs_raw": median([r["vs raw"] for r in rows]),
                "ratio_vs_db_backend": median([r["vs db backend"] for r in rows]),
            }
            if "floor vs raw" in rows[0]:
                summary["floor_ratio_vs_raw"] = median([r["floor vs raw"] for r in rows])
                summary["writes_ratio_vs_raw"] = median([r["writes vs raw"] for r in rows])
                summary["ratio_vs_writes"] = median([r["vs writes"] for r in rows])
                summary["statements_ratio_vs_raw"] = median([r["statements vs raw"] for r in rows])
            report(f"worker throughput ({backend}, {args.jobs} jobs, prefork -c 2)", rows, summary)


if __name__ == "__main__":
    main()
