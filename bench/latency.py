"""Latency, one job at a time: HTTP create (gunicorn) to `succeeded`, p50/p95/p99, beside raw
Celery `apply_async` to a finished result; and the two-step pipeline beside a raw `chain`.

The orchestrator's end is the job's own `finished_at` (written by the worker), read back
from the database, so polling adds nothing to the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy as sa
from celery import chain

from bench.harness import (
    Process,
    Servers,
    add_durability_option,
    celery_worker,
    dispatcher,
    median,
    orchestrator_settings,
    percentile,
    raw_celery,
    report,
    servers,
    settings_env,
    wait_ping,
)
from orchestrator import processes
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from tests.servers import free_port


def orchestrator_latencies(
    env: Servers, backend: str, job_type: str, count: int, folder: Path
) -> list[float]:
    port = free_port()
    settings = orchestrator_settings(
        env.database_url(backend), env.redis_url(3), worker_queues="default", port=port
    )
    node = f"lat-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker(
        "tasks.worker", settings_env(settings), folder / "lat.log", node, queues="default"
    )
    web = Process(
        processes.command("web", settings), settings_env(settings), folder / "web.log"
    ).start()
    runtime = Runtime.build(settings)
    http = requests.Session()
    feeder = None
    try:
        # A pipeline's next step, made ready by the worker, is admitted by the dispatcher.
        feeder = dispatcher(settings, folder / "lat-dispatcher.log")
        wait_ping(create_celery_app(settings), node)
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        return [_one_job(http, port, runtime, job_type) for _ in range(count)]
    finally:
        if feeder is not None:
            feeder.stop()
        web.stop()
        worker.stop()
        runtime.database.dispose()


def _one_job(http: requests.Session, port: int, runtime: Runtime, job_type: str) -> float:
    started = datetime.now(UTC)
    created = http.post(
        f"http://127.0.0.1:{port}/v1/jobs",
        json={"type": job_type},
        headers={"X-Tenant-ID": "bench"},
        timeout=10,
    ).json()
    last = created["pipeline"]["steps"][-1]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with runtime.database.session() as session:
            finished = session.scalar(
                sa.select(Job.finished_at).where(Job.id == last, Job.status == "succeeded")
            )
        if finished is not None:
            return (finished - started).total_seconds() * 1000
        time.sleep(0.0005)
    raise TimeoutError(f"job {last} did not finish")


def raw_latencies(env: Servers, pipeline: bool, count: int, folder: Path) -> list[float]:
    with raw_celery(env, 4, folder, "rawlat") as app:
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            if pipeline:
                chain(app.signature("raw.step"), app.signature("raw.step")).apply_async().get(
                    timeout=30
                )
            else:
                app.send_task("raw.noop").get(timeout=30)
            timings.append((time.perf_counter() - started) * 1000)
        return timings


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        for backend in args.backends.split(","):
            rows, summary = [], {"backend": backend, "jobs": args.jobs}
            for label, job_type, chained in (
                ("one job", "BENCH_NOOP", False),
                ("pipeline", "BENCH_PIPELINE", True),
            ):
                ours = orchestrator_latencies(env, backend, job_type, args.jobs, args.folder)
                raw = raw_latencies(env, chained, args.jobs, args.folder)
                for name, values in (("orchestrator", ours), ("raw celery", raw)):
                    rows.append(
                        {
                            "case": label,
                            "system": name,
                            "p50 ms": percentile(values, 0.5),
                            "p95 ms": percentile(values, 0.95),
                            "p99 ms": percentile(values, 0.99),
                        }
                    )
                key = label.replace(" ", "_")
                summary[f"{key}_p50_ms"] = percentile(ours, 0.5)
                summary[f"{key}_p99_ms"] = percentile(ours, 0.99)
                summary[f"{key}_raw_p50_ms"] = percentile(raw, 0.5)
                summary[f"{key}_ratio_p50"] = median(ours) / median(raw)
            report(f"latency ({backend})", rows, summary)


if __name__ == "__main__":
    main()
