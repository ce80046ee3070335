"""Re-sends under a backlog of pipelines: N two-step pipelines of no-op jobs are recorded
(a backlog of N first steps; each success releases a second step behind them), then a
worker (`prefork -c 2`) and the dispatcher drain them, on PostgreSQL with its durability
defaults.

What the open-loop design got wrong here: a released step that still waited in the broker
10 s later was sent again, so second steps went out twice and the Redis list doubled. With
the closed loop nothing is sent again unless it went missing from the broker. Counted:
deliveries admitted again as missing (the dispatcher's `dispatch_missing` lines),
deliveries a worker skipped (a duplicate or a stale message: `delivery` events), and the
deepest the queue's lists got (sampled every 0.2 s) against the window's bound.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from bench.fairness import running_system
from bench.harness import add_durability_option, report, servers
from orchestrator.dispatch.celery import queue_depths
from orchestrator.models import LIVE_STATES_SQL, Job, JobEvent
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.window import WindowSizes

CHUNK = 500
TENANTS = 16
_MISSING = re.compile(r"(\d+) admitted job\(s\) were not in the broker")


def record_pipelines(runtime: Runtime, count: int) -> None:
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        runtime.service.create_batch(
            [
                NewJob(tenant_id=f"t{(start + i) % TENANTS}", type="BENCH_PIPELINE")
                for i in range(size)
            ]
        )


def drain(runtime: Runtime, timeout: float) -> tuple[float, int]:
    """Seconds until nothing is live; the deepest the `default` queue's lists were."""
    client = redis.Redis.from_url(runtime.settings.redis_url)
    deepest = 0
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        deepest = max(deepest, queue_depths(client, ["default"])["default"])
        with runtime.database.session() as session:
            live = session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(sa.text(LIVE_STATES_SQL))
            )
        if not live:
            return time.monotonic() - started, deepest
        time.sleep(0.2)
    raise TimeoutError(f"jobs still live after {timeout} s")


def skipped_deliveries(runtime: Runtime) -> int:
    with runtime.database.session() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).select_from(JobEvent).where(JobEvent.kind == "delivery")
            )
            or 0
        )


def missing_in(log: Path) -> int:
    return sum(int(n) for n in _MISSING.findall(log.read_text(errors="replace")))


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        servers(args.folder, durable=not args.fsync_off) as env,
        running_system(env, args.folder, "resends") as runtime,
    ):
        record_pipelines(runtime, args.pipelines)
        seconds, deepest = drain(runtime, args.timeout)
        skipped = skipped_deliveries(runtime)
        with runtime.database.session() as session:
            succeeded = session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(Job.status == "succeeded")
            )
    missing = missing_in(args.folder / "resends-dispatcher.log")
    return {
        "pipelines": args.pipelines,
        "jobs_succeeded": succeeded,
        "seconds": seconds,
        "jobs_per_s": (succeeded or 0) / seconds,
        "admitted_again_missing": missing,
        "deliveries_skipped": skipped,
        "deepest_queue": deepest,
        "window_bound": WindowSizes.LARGEST,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--pipelines", type=int, default=18_000, help="two steps each")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    summary = run(parser.parse_args())
    rows = [
        {
            k: summary[k]
            for k in (
                "pipelines",
                "seconds",
                "admitted_again_missing",
                "deliveries_skipped",
                "deepest_queue",
            )
        }
    ]
    report("re-sends under a backlog of pipelines (prefork -c 2, dispatcher)", rows, summary)


if __name__ == "__main__":
    main()
