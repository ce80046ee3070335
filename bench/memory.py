"""Memory: resident memory of a worker (with its pool) and of the web server after a small
and a large number of jobs; growth beyond ~10% means something accumulates per job."""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import requests
import sqlalchemy as sa

from bench.harness import (
    Process,
    add_durability_option,
    celery_worker,
    orchestrator_settings,
    report,
    servers,
    settings_env,
    wait_ping,
)
from bench.latency import _wait_http
from orchestrator import processes
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from tests.servers import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        port = free_port()
        settings = orchestrator_settings(
            env.database_url(args.backend), env.redis_url(9), port=port, worker_queues="default"
        )
        node = f"mem-{uuid.uuid4().hex[:6]}@bench"
        worker = celery_worker(
            "tasks.worker", settings_env(settings), args.folder / "mem.log", node, queues="default"
        )
        web = Process(
            processes.command("web", settings), settings_env(settings), args.folder / "memweb.log"
        ).start()
        runtime = Runtime.build(settings)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ping(create_celery_app(settings), node)
            _wait_http(f"{base}/healthz")
            rows = []
            for total in (args.small, args.large):
                _run_until(base, runtime, total)
                rows.append(
                    {"jobs": total, "worker RSS MB": worker.rss_mb(), "web RSS MB": web.rss_mb()}
                )
        finally:
            web.stop()
            worker.stop()
        growth = {key: rows[1][key] / rows[0][key] for key in ("worker RSS MB", "web RSS MB")}
        report(
            "memory",
            rows,
            {
                "small": args.small,
                "large": args.large,
                **{f"{k} growth": v for k, v in growth.items()},
            },
        )


def _run_until(base: str, runtime: Runtime, total: int) -> None:
    """Create jobs through the web (batches) until `total` exist, and wait for them all."""
    http = requests.Session()
    with runtime.database.session() as session:
        present = session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0
    while present < total:
        size = min(1000, total - present)
        answer = http.post(
            f"{base}/v1/jobs:batch",
            json={"jobs": [{"type": "BENCH_NOOP"}] * size},
            headers={"X-Tenant-ID": "mem"},
            timeout=120,
        )
        assert answer.status_code == 201, answer.text[:200]
        present += size
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        with runtime.database.session() as session:
            done = (
                session.scalar(
                    sa.select(sa.func.count()).select_from(Job).where(Job.status == "succeeded")
                )
                or 0
            )
        if done >= total:
            return
        time.sleep(0.5)
    raise TimeoutError("jobs did not finish")


if __name__ == "__main__":
    main()
