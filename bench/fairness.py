"""Per-tenant fairness: tenant A floods N jobs, then tenant B creates a few; how long do B's
jobs wait to start, with and without `ORCH_TENANT_MAX_RUNNING`? (p50/p95 of B's queue wait,
from B's create to its job's start.)"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench.harness import (
    Servers,
    add_durability_option,
    celery_worker,
    orchestrator_settings,
    percentile,
    report,
    servers,
    settings_env,
    wait_ping,
)
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob


def b_waits(env: Servers, flood: int, b_jobs: int, limit: int, folder: Path) -> list[float]:
    settings = orchestrator_settings(
        env.database_url("postgresql"),
        env.redis_url(10),
        worker_queues="default",
        tenant_max_running=limit,
    )
    node = f"fair-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker(
        "tasks.worker", settings_env(settings), folder / "fair.log", node, queues="default"
    )
    runtime = Runtime.build(settings)
    stop = threading.Event()

    def sweep() -> None:  # what beat does in a deployment: send parked jobs once released
        while not stop.wait(0.2):
            runtime.maintenance.sweep_outbox()

    sweeper = threading.Thread(target=sweep, daemon=True)
    try:
        wait_ping(create_celery_app(settings), node)
        sweeper.start()
        for start in range(0, flood, 1000):
            runtime.service.create_batch(
                [
                    NewJob(tenant_id="tenant_a", type="BENCH_SLOW")
                    for _ in range(min(1000, flood - start))
                ]
            )
        ids = [
            runtime.service.create(NewJob(tenant_id="tenant_b", type="BENCH_NOOP")).details.job.id
            for _ in range(b_jobs)
        ]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with runtime.database.session() as session:
                rows = session.execute(
                    sa.select(Job.created_at, Job.started_at).where(
                        Job.id.in_(ids), Job.started_at.is_not(None)
                    )
                ).all()
            if len(rows) == len(ids):
                return [
                    (started - created).total_seconds()
                    for created, started in rows
                    if started is not None
                ]
            time.sleep(0.2)
        raise TimeoutError("tenant B's jobs never started")
    finally:
        stop.set()
        worker.stop()
        runtime.database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--b-jobs", type=int, default=5)
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        without = b_waits(env, args.flood, args.b_jobs, 0, args.folder)
        limited = b_waits(env, args.flood, args.b_jobs, 1, args.folder)
    rows = [
        {"limits": name, "B p50 s": percentile(waits, 0.5), "B p95 s": percentile(waits, 0.95)}
        for name, waits in (("none", without), ("max running 1", limited))
    ]
    report(
        f"fairness (A floods {args.flood} jobs of 20 ms)",
        rows,
        {
            "flood": args.flood,
            "b_jobs": args.b_jobs,
            "b_p95_without_limits_s": percentile(without, 0.95),
            "b_p95_with_limits_s": percentile(limited, 0.95),
        },
    )


if __name__ == "__main__":
    main()
