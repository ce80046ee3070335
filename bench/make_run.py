"""`make run` as a newcomer gets it: how soon it answers, and how fast it runs pipelines.

Starts `orchestrator dev` (what `make run` runs once `.venv` is installed) with its embedded
defaults (PostgreSQL and Redis from their wheels, in a fresh state folder) and times:

- start -> `/healthz` answering 200, for a fresh state folder (the cluster is created) and
  again for the same folder (what every later `make run` does);
- `--pipelines` two-step pipelines (`BENCH_PIPELINE`, two no-op steps) created over HTTP by
  `--clients` threads, from the first create to the last step's success;

then raw Celery chains of two no-op tasks, created by as many threads, drained by a
prefork worker of the same concurrency as `make run`'s, right after on the same machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import requests
import sqlalchemy as sa
from celery import Celery, chain

from bench.harness import ROOT, celery_worker, report, wait_ping
from orchestrator.dev import CREDENTIALS_FILE
from orchestrator.embedded_redis import EmbeddedRedis
from tests.servers import free_port

ORCHESTRATOR = str(Path(sys.executable).with_name("orchestrator"))
TENANT = {"X-Tenant-ID": "tnt_bench"}


class DevRun:
    """One `orchestrator dev` in `state`, on free ports."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port = free_port()
        self.postgres_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env.update(
            ORCH_ENV="development",
            PORT=str(self.port),
            ORCH_FLOWER_PORT=str(free_port()),
            ORCH_EMBEDDED_REDIS_PORT=str(free_port()),
            ORCH_EMBEDDED_POSTGRES_PORT=str(self.postgres_port),
            ORCH_STATE_DIR=str(state),
            ORCH_JOB_MODULES="bench.jobs",
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._engine: sa.Engine | None = None

    def start(self, timeout: float = 120) -> float:
        """Seconds from the start to /healthz answering 200."""
        started = time.perf_counter()
        with (self.state / "dev.log").open("ab") as log:
            self.process = subprocess.Popen(
                [ORCHESTRATOR, "dev"], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"orchestrator dev exited: see {self.state / 'dev.log'}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no /healthz within {timeout} s: see {self.state / 'dev.log'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def succeeded(self) -> int:
        """Jobs of the benchmark's tenant that succeeded (one connection for the whole run:
        polling must cost the system under test next to nothing)."""
        if self._engine is None:
            secret = (self.state / CREDENTIALS_FILE).read_text().strip()
            self._engine = sa.create_engine(
                f"postgresql+psycopg://postgres:{secret}@127.0.0.1:{self.postgres_port}/"
                "orchestrator",
                pool_size=1,
            )
        done = sa.text(
            "SELECT count(*) FROM jobs WHERE tenant_id = 'tnt_bench' AND status = 'succeeded'"
        )
        with self._engine.connect() as connection:
            return int(connection.scalar(done) or 0)


def in_threads(clients: int, count: int, create: Callable[[], object]) -> None:
    """`count` calls of `create()`, shared by `clients` threads."""
    shares = [count // clients + (i < count % clients) for i in range(clients)]
    threads = [threading.Thread(target=lambda n=n: [create() for _ in range(n)]) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def pipelines_rate(run: DevRun, pipelines: int, clients: int) -> float:
    local = threading.local()

    def create() -> None:
        http = getattr(local, "http", None) or requests.Session()
        local.http = http
        answer = http.post(
            f"{run.url}/v1/jobs", json={"type": "BENCH_PIPELINE", "input": {}}, headers=TENANT
        )
        answer.raise_for_status()

    started = time.perf_counter()
    in_threads(clients, pipelines, create)
    _wait(lambda: run.succeeded() >= 2 * pipelines)
    return pipelines / (time.perf_counter() - started)


def raw_chains_rate(folder: Path, chains: int, clients: int) -> float:
    with EmbeddedRedis.start(port=free_port(), data_dir=folder / "redis") as broker_server:
        broker = broker_server.url
        counter = redis.Redis.from_url(broker)
        env = {**os.environ, "BENCH_BROKER": broker, "BENCH_COUNT": "1"}
        node = f"raw-{uuid.uuid4().hex[:6]}@bench"
        worker = celery_worker("bench.rawcelery", env, folder / "raw.log", node, "celery")
        os.environ["BENCH_BROKER"] = broker
        app = Celery("rawbench", broker=broker)
        try:
            wait_ping(app, node)
            started = time.perf_counter()
            # Each chain's second task counts itself as a no-op (`BENCH_COUNT`): both do.
            second = app.signature("raw.noop").set(immutable=True)
            in_threads(
                clients, chains, lambda: chain(app.signature("raw.noop"), second).apply_async()
            )
            _wait(lambda: int(counter.get("bench:raw:done") or 0) >= 2 * chains)
            return chains / (time.perf_counter() - started)
        finally:
            worker.stop()


def _wait(done: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipelines", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-")))
    args = parser.parse_args()
    run = DevRun(args.folder / "state")
    args.folder.mkdir(parents=True, exist_ok=True)
    run.state.mkdir(parents=True, exist_ok=True)
    try:
        fresh = run.start()
        run.stop()
        again = run.start()
        rate = pipelines_rate(run, args.pipelines, args.clients)
    finally:
        run.stop()
    raw = raw_chains_rate(args.folder, args.pipelines, args.clients)
    report(
        f"make run ({args.pipelines} two-step pipelines over HTTP, {args.clients} clients)",
        [
            {
                "healthz fresh s": fresh,
                "healthz again s": again,
                "pipelines/s": rate,
                "raw chains/s": raw,
                "vs raw": rate / raw,
            }
        ],
        {
            "pipelines": args.pipelines,
            "clients": args.clients,
            "healthz_fresh_s": fresh,
            "healthz_again_s": again,
            "pipelines_per_s": rate,
            "raw_chains_per_s": raw,
            "ratio_vs_raw": rate / raw,
        },
    )


if __name__ == "__main__":
    main()
