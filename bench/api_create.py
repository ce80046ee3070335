"""API creation throughput: jobs created per second over HTTP by concurrent keep-alive
clients against gunicorn (the production server), beside raw `apply_async()` from one
process; and the batch endpoint (`POST /v1/jobs:batch`, 1,000 jobs a request)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from celery import Celery

from bench import loadgen
from bench.harness import (
    Process,
    Servers,
    add_durability_option,
    median,
    orchestrator_settings,
    report,
    servers,
    settings_env,
)
from bench.latency import _wait_http
from orchestrator import processes
from tests.servers import free_port


def http_rate(base: str, clients: int, seconds: float) -> float:
    """Jobs created per second by `clients` keep-alive connections (one tenant each)."""
    port = int(base.rsplit(":", 1)[1])
    requests = [
        [
            loadgen.encode_post(
                "127.0.0.1", port, "/v1/jobs", {"type": "BENCH_NOOP"}, {"X-Tenant-ID": f"t{i}"}
            )
        ]
        for i in range(clients)
    ]
    return _created_per_second(loadgen.run("127.0.0.1", port, requests, seconds))


def batch_rate(base: str, clients: int, seconds: float, size: int = 1000) -> float:
    """Jobs created per second through `POST /v1/jobs:batch`, `size` jobs a request, by
    `clients` keep-alive connections sending one request after another."""
    port = int(base.rsplit(":", 1)[1])
    body = {"jobs": [{"type": "BENCH_NOOP"}] * size}
    request = loadgen.encode_post(
        "127.0.0.1", port, "/v1/jobs:batch", body, {"X-Tenant-ID": "batch"}
    )
    return (
        _created_per_second(loadgen.run("127.0.0.1", port, [[request]] * clients, seconds)) * size
    )


def _created_per_second(result: loadgen.LoadResult) -> float:
    """Requests answered 201 per second; any other answer stops the benchmark."""
    unexpected = {status: n for status, n in result.statuses.items() if status != 201}
    if unexpected:
        raise RuntimeError(f"creation answered {unexpected}; see the web log")
    return result.rate(201)


def raw_rate(env: Servers, seconds: float) -> float:
    broker = env.redis_url(6)
    app = Celery("rawbench", broker=broker)
    sent = 0
    stop = time.monotonic() + seconds
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        while time.monotonic() < stop:
            app.send_task("raw.noop", producer=producer)
            sent += 1
    return sent / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_durability_option(parser)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-seconds", type=float, default=6)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    with servers(args.folder, durable=not args.fsync_off) as env:
        for backend in args.backends.split(","):
            port = free_port()
            settings = orchestrator_settings(env.database_url(backend), env.redis_url(7), port=port)
            web = Process(
                processes.command("web", settings), settings_env(settings), args.folder / "api.log"
            ).start()
            base = f"http://127.0.0.1:{port}"
            rows = []
            try:
                _wait_http(f"{base}/healthz")
                http_rate(base, args.clients, 1)  # warm-up: connections, prepared statements
                for number in range(1, args.rounds + 1):
                    ours = http_rate(base, args.clients, args.seconds)
                    raw = raw_rate(env, args.seconds)
                    batch_one = batch_rate(base, 1, args.batch_seconds)
                    batch = batch_rate(base, args.batch_clients, args.batch_seconds)
                    rows.append(
                        {
                            "round": number,
                            "http creates/s": ours,
                            "raw apply_async/s": raw,
                            "batch jobs/s (1 client)": batch_one,
                            f"batch jobs/s ({args.batch_clients} clients)": batch,
                            "http vs raw": ours / raw,
                        }
                    )
            finally:
                web.stop()
            report(
                f"API creation ({backend}, {args.clients} clients, gunicorn)",
                rows,
                {
                    "backend": backend,
                    "http_per_s": median([r["http creates/s"] for r in rows]),
                    "raw_apply_async_per_s": median([r["raw apply_async/s"] for r in rows]),
                    "batch_one_client_per_s": median([r["batch jobs/s (1 client)"] for r in rows]),
                    "batch_per_s": median(
                        [r[f"batch jobs/s ({args.batch_clients} clients)"] for r in rows]
                    ),
                    "batch_clients": args.batch_clients,
                    "ratio_http_vs_raw": median([r["http vs raw"] for r in rows]),
                    "cpu_count": os.cpu_count(),
                },
            )


if __name__ == "__main__":
    main()
