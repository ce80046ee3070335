"""Growth: reading a job and the first page of a tenant's list with a small and a large jobs
table (many tenants); a pipeline step's claim and success with few and many pipelines in
flight; and the nightly archival of a large table (time, peak memory, and the API's p99
while it runs versus before it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from flask.testing import FlaskClient

import api
from bench.harness import (
    ROOT,
    add_durability_option,
    orchestrator_settings,
    percentile,
    report,
    servers,
    settings_env,
)
from orchestrator import transitions
from orchestrator.ids import new_job_id
from orchestrator.models import Job, Tenant, utcnow
from orchestrator.runtime import Runtime
from orchestrator.states import Attempt

CLI = str(Path(sys.executable).with_name("orchestrator"))
TENANTS = 1000
PROBE_TENANT = "t0"
PROBE_JOBS = 100
PROBE_STEPS = 300
CHUNK = 10_000  # rows an insert writes (and the most the benchmark holds at once)


def fill(runtime: Runtime, total: int, finished_days_ago: float) -> None:
    """Bring the jobs table up to `total` finished rows, spread over TENANTS tenants."""
    with runtime.database.session() as session:
        present = (
            session.scalar(
                sa.select(sa.func.count()).where(
                    Job.type == "BENCH_NOOP", Job.status == "succeeded"
                )
            )
            or 0
        )
    now = datetime.now(UTC)
    finished = now - timedelta(days=finished_days_ago)
    for start in range(present, total, CHUNK):
        rows = []
        for index in range(start, min(start + CHUNK, total)):
            stamp = int((now - timedelta(seconds=total - index)).timestamp() * 1000)
            job_id = new_job_id(now_ms=stamp)
            # The probe tenant's first page is full at every size: like for like.
            tenant = PROBE_TENANT if index < PROBE_JOBS else f"t{index % TENANTS}"
            finish = {"started_at": finished, "finished_at": finished}
            rows.append(_row(job_id, tenant, "succeeded", finished, **finish))
        _insert(runtime, rows, analyze=False)
    _analyze(runtime)


def add_pipelines(runtime: Runtime, count: int, head_status: str) -> list[str]:
    """`count` two-step pipelines, each a head in `head_status` and its successor waiting
    for it; the heads' ids."""
    now = datetime.now(UTC)
    heads, rows = [], []
    for index in range(count):
        head, then = new_job_id(), new_job_id()
        tenant = f"p{index % TENANTS}"  # the probe tenant's list stays as it was
        rows.append(_row(head, tenant, head_status, now, type="BENCH_PIPELINE", pipeline_id=head))
        rows.append(
            _row(then, tenant, "waiting", now, pipeline_id=head, parent_id=head, step_index=1)
        )
        heads.append(head)
    _insert(runtime, rows)
    return heads


def _row(job_id: str, tenant: str, status: str, at: datetime, **values: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "tenant_id": tenant,
        "type": "BENCH_NOOP",
        "subject": None,
        "input": {},
        "status": status,
        "priority": 5,
        "queue": "default",
        "attempt": 1 if status == "succeeded" else 0,
        "max_attempts": 3,
        "pipeline_id": job_id,
        "parent_id": None,
        "step_index": 0,
        "created_at": at,
        "updated_at": at,
        "started_at": None,
        "finished_at": None,
        "requeues": 0,
        "result": None,
        "ready_since": at if status == "queued" else None,
        **values,
    }


def _insert(runtime: Runtime, rows: list[dict[str, Any]], *, analyze: bool = True) -> None:
    for start in range(0, len(rows), CHUNK):
        with runtime.database.transaction() as session:
            session.execute(sa.insert(Job), rows[start : start + CHUNK])
    if analyze:
        _analyze(runtime)


def _analyze(runtime: Runtime) -> None:
    with runtime.database.transaction() as session:
        session.execute(sa.text("ANALYZE"))  # fresh planner statistics, as autovacuum keeps


def step_latencies(runtime: Runtime, count: int) -> dict[str, float]:
    """A worker's claim and success of a pipeline's first step (which releases the next),
    for `count` new pipelines, one after another."""
    database, samples = runtime.database, []
    for head in add_pipelines(runtime, count, "queued"):
        started = time.perf_counter()
        claimed = transitions.claim_alone(
            database, head, worker="bench", lease_seconds=60, now=utcnow()
        )
        assert claimed is not None, f"{head} was not claimable"
        now = utcnow()
        assert transitions.succeed_alone(database, Attempt.of(claimed.job), None, now)
        samples.append((time.perf_counter() - started) * 1000)
    return {"step p50 ms": percentile(samples, 0.5), "step p99 ms": percentile(samples, 0.99)}


def read_latencies(client: FlaskClient, runtime: Runtime, count: int) -> dict[str, float]:
    with runtime.database.session() as session:
        ids = list(
            session.scalars(
                sa.select(Job.id)
                .where(Job.tenant_id == PROBE_TENANT)
                .order_by(Job.id.desc())
                .limit(200)
            )
        )
    headers = {"X-Tenant-ID": PROBE_TENANT}
    single, page = [], []
    for _ in range(count):
        started = time.perf_counter()
        assert client.get(f"/v1/jobs/{random.choice(ids)}", headers=headers).status_code == 200
        single.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert client.get("/v1/jobs?limit=50", headers=headers).status_code == 200
        page.append((time.perf_counter() - started) * 1000)
    return {
        "get p50 ms": percentile(single, 0.5),
        "get p99 ms": percentile(single, 0.99),
        "page p50 ms": percentile(page, 0.5),
        "page p99 ms": percentile(page, 0.99),
    }


def archival(client: FlaskClient, runtime: Runtime, env: dict[str, str]) -> dict[str, float]:
    """The CLI's archival in its own process (as a worker would run it), while this process
    reads the API: the API's p99 during the run versus before it, and the run's peak RSS."""
    idle = read_latencies(client, runtime, 200)
    during: list[float] = []
    done = threading.Event()

    def probe() -> None:
        headers = {"X-Tenant-ID": PROBE_TENANT}
        while not done.is_set():
            started = time.perf_counter()
            client.get("/v1/jobs?limit=50", headers=headers)
            during.append((time.perf_counter() - started) * 1000)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    archive = subprocess.Popen(
        [CLI, "maintenance", "archive", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watched = psutil.Process(archive.pid)
    peak = 0
    while archive.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    done.set()
    prober.join()
    output = json.loads((archive.stdout.read() if archive.stdout else b"") or b"{}")
    return {
        "archived": output.get("archived", -1),
        "seconds": seconds,
        "peak RSS MB": peak / 2**20,
        "idle page p99 ms": idle["page p99 ms"],
        "during page p99 ms": percentile(during, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--waiting", type=int, default=100_000, help="pipelines in flight in the large table"
    )
    parser.add_argument("--backends", default="postgresql")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        for backend in args.backends.split(","):
            settings = orchestrator_settings(
                env.database_url(backend), env.redis_url(8), dispatch_mode="inline"
            )
            runtime = Runtime.build(settings)
            with runtime.database.transaction() as session:
                session.add_all(
                    Tenant(id=f"t{i}", created_at=datetime.now(UTC)) for i in range(TENANTS)
                )
            client = api.create_app(runtime=runtime).test_client()
            fill(runtime, args.small, finished_days_ago=400)
            small = read_latencies(client, runtime, args.requests)
            add_pipelines(runtime, args.small, "running")
            small |= step_latencies(runtime, PROBE_STEPS)
            fill(runtime, args.large, finished_days_ago=400)
            large = read_latencies(client, runtime, args.requests)
            add_pipelines(runtime, args.waiting - args.small, "running")
            large |= step_latencies(runtime, PROBE_STEPS)
            rows = [
                {"rows": args.small, "waiting pipelines": args.small, **small},
                {"rows": args.large, "waiting pipelines": args.waiting, **large},
            ]
            ratios = {f"{key} ratio": large[key] / small[key] for key in small}
            archive = archival(client, runtime, settings_env(settings))
            report(
                f"growth ({backend})",
                rows,
                {
                    "backend": backend,
                    "small": args.small,
                    "large": args.large,
                    **ratios,
                    **{f"archival {k}": v for k, v in archive.items()},
                    "archival p99 ratio": archive["during page p99 ms"]
                    / archive["idle page p99 ms"],
                },
            )
            runtime.database.dispose()


if __name__ == "__main__":
    main()
