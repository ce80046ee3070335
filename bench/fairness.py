"""Fairness under contention: the dispatcher process and a real worker (`prefork -c 2`), on
PostgreSQL with its durability defaults, and nothing configured (fair by default).

- flood: tenant A floods N jobs of 20 ms; then, one every 0.1 s, tenant B creates 20 jobs
  and A creates 20 of priority 10. How long B's jobs and A's urgent ones wait to start
  (p50/p95, from their creation to their start).
- ten tenants: ten flood at once; each tenant's share of the starts in every 10 s window,
  as its deviation from an equal share (0.10 = 10% off).
- tiers: a pro tenant and a free one flood at once; the pro tenant's share of the starts
  (weights 3:1 by default, so 0.75).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.harness import (
    Servers,
    add_durability_option,
    celery_worker,
    dispatcher,
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
from orchestrator.tenants import set_tier

SLOW = "BENCH_SLOW"  # 20 ms
CHUNK = 500
WINDOW = timedelta(seconds=10)


@contextmanager
def running_system(
    env: Servers, folder: Path, name: str, tiers: dict[str, str] | None = None
) -> Iterator[Runtime]:
    """A fresh database, a worker on the `default` queue, and the dispatcher."""
    settings = orchestrator_settings(
        env.database_url("postgresql"), env.redis_url(10), worker_queues="default"
    )
    runtime = Runtime.build(settings)
    for tenant, tier in (tiers or {}).items():
        set_tier(runtime.database, settings, tenant, tier)
    node = f"fair-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker(
        "tasks.worker", settings_env(settings), folder / f"{name}.log", node, queues="default"
    )
    feeder = None
    try:
        env.quiesce()
        wait_ping(create_celery_app(settings), node)
        feeder = dispatcher(settings, folder / f"{name}-dispatcher.log")
        yield runtime
    finally:
        if feeder is not None:
            feeder.stop()
        worker.stop()
        runtime.database.dispose()


def flood(runtime: Runtime, tenants: Sequence[str], per_tenant: int) -> None:
    """Each tenant's `per_tenant` jobs, created a chunk of each tenant at a time, so that all
    of them have a backlog within moments of each other."""
    for start in range(0, per_tenant, CHUNK):
        for tenant in tenants:
            count = min(CHUNK, per_tenant - start)
            runtime.service.create_batch([NewJob(tenant_id=tenant, type=SLOW)] * count)


def waits_to_start(runtime: Runtime, ids: Sequence[str], timeout: float = 600) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with runtime.database.session() as session:
            rows = session.execute(
                sa.select(Job.created_at, Job.started_at).where(
                    Job.id.in_(ids), Job.started_at.is_not(None)
                )
            ).all()
        if len(rows) == len(ids):
            return [(started - created).total_seconds() for created, started in rows if started]
        time.sleep(0.2)
    raise TimeoutError("jobs never started")


def shares(runtime: Runtime, since: datetime, windows: int) -> list[dict[str, float]]:
    """Each tenant's share of the starts in each of `windows` windows of 10 s from `since`."""
    time.sleep(max(0.0, (since + windows * WINDOW - runtime.service.clock()).total_seconds()))
    with runtime.database.session() as session:
        rows = session.execute(
            sa.select(Job.tenant_id, Job.started_at).where(
                Job.started_at >= since, Job.started_at < since + windows * WINDOW
            )
        ).all()
    counts = [Counter[str]() for _ in range(windows)]
    for tenant, started in rows:
        if started is not None:
            counts[int((started - since) / WINDOW)][tenant] += 1
    return [{t: n / sum(c.values()) for t, n in c.items()} for c in counts]


def flood_then_others(env: Servers, args: argparse.Namespace) -> dict[str, Any]:
    with running_system(env, args.folder, "fair-flood") as runtime:
        flood(runtime, ["tenant_a"], args.flood)
        others, urgent = [], []
        for _ in range(args.b_jobs):
            created = runtime.service.create(NewJob(tenant_id="tenant_b", type=SLOW))
            others.append(created.details.job.id)
            created = runtime.service.create(NewJob(tenant_id="tenant_a", type=SLOW, priority=10))
            urgent.append(created.details.job.id)
            time.sleep(0.1)
        b = waits_to_start(runtime, others)
        a10 = waits_to_start(runtime, urgent)
    return {
        "b_p50_s": percentile(b, 0.5),
        "b_p95_s": percentile(b, 0.95),
        "urgent_p50_s": percentile(a10, 0.5),
        "urgent_p95_s": percentile(a10, 0.95),
    }


def ten_tenants(env: Servers, args: argparse.Namespace) -> dict[str, Any]:
    tenants = [f"tenant_{n}" for n in range(10)]
    with running_system(env, args.folder, "fair-ten") as runtime:
        flood(runtime, tenants, args.per_tenant)
        found = shares(runtime, runtime.service.clock() + timedelta(seconds=1), args.windows)
    equal = 1 / len(tenants)
    worst = max(abs(w.get(t, 0.0) / equal - 1) for w in found for t in tenants)
    return {"ten_tenants_worst_deviation": worst, "ten_tenants_windows": len(found)}


def tiers(env: Servers, args: argparse.Namespace) -> dict[str, Any]:
    with running_system(env, args.folder, "fair-tiers", {"tenant_pro": "pro"}) as runtime:
        flood(runtime, ["tenant_pro", "tenant_free"], args.per_tenant * 5)
        found = shares(runtime, runtime.service.clock() + timedelta(seconds=1), args.windows)
    pro = [w.get("tenant_pro", 0.0) for w in found]
    return {"pro_share_min": min(pro), "pro_share_max": max(pro)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--flood", type=int, default=10_000, help="tenant A's jobs")
    parser.add_argument("--b-jobs", type=int, default=20)
    parser.add_argument("--per-tenant", type=int, default=500, help="jobs per flooding tenant")
    parser.add_argument("--windows", type=int, default=3, help="10 s windows measured")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        summary = {
            "flood": args.flood,
            "b_jobs": args.b_jobs,
            **flood_then_others(env, args),
            **ten_tenants(env, args),
            **tiers(env, args),
        }
    rows = [
        {
            "scenario": f"B behind A's {args.flood}",
            "p50 s": summary["b_p50_s"],
            "p95 s": summary["b_p95_s"],
        },
        {
            "scenario": "A's priority 10",
            "p50 s": summary["urgent_p50_s"],
            "p95 s": summary["urgent_p95_s"],
        },
    ]
    report("fairness (jobs of 20 ms, prefork -c 2, dispatcher)", rows, summary)


if __name__ == "__main__":
    main()
