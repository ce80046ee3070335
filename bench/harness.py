"""What every benchmark needs: real servers, worker processes, statistics, and a report
(a table for people and one JSON line for scripts)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from orchestrator import migrate
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import Settings, load_settings
from orchestrator.supervisor import dies_with
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
CELERY = str(Path(sys.executable).with_name("celery"))


@dataclass
class Servers:
    redis: EmbeddedRedis
    postgres: EmbeddedPostgres | None
    folder: Path
    databases: list[str] = field(default_factory=list)

    def redis_url(self, db: int) -> str:
        url = self.redis.url.rsplit("/", 1)[0] + f"/{db}"
        redis.Redis.from_url(url).flushdb()
        return url

    def database_url(self, backend: str) -> str:
        """A fresh, migrated database."""
        name = f"bench_{uuid.uuid4().hex[:8]}"
        if backend == "sqlite":
            url = f"sqlite:///{self.folder / (name + '.db')}"
        else:
            assert self.postgres is not None
            self.postgres.create_database(name)
            url = self.postgres.url(name)
        migrate.upgrade(url)
        return url

    def quiesce(self, timeout: float = 60) -> None:
        """Let PostgreSQL finish what earlier contenders left it (a checkpoint for their WAL,
        autovacuum of their tables), so that it does not land in the next one's run."""
        if self.postgres is None:
            return
        engine = sa.create_engine(self.postgres.url("postgres"), poolclass=sa.pool.NullPool)
        busy = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
        )
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                deadline = time.monotonic() + timeout
                while connection.scalar(busy) and time.monotonic() < deadline:
                    time.sleep(0.2)
                connection.execute(sa.text("CHECKPOINT"))
        finally:
            engine.dispose()


@contextmanager
def servers(
    folder: Path,
    *,
    postgres: bool = True,
    durable: bool = True,
    postgres_settings: dict[str, str] | None = None,
) -> Iterator[Servers]:
    """Redis, and PostgreSQL with production's durability (fsync and synchronous commit
    on) unless `durable` is false: figures with fsync off are a labelled extra only."""
    folder.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis.start(port=free_port(), data_dir=folder / "redis") as r:
        if not postgres:
            yield Servers(r, None, folder)
            return
        with EmbeddedPostgres.start(free_port(), durable=durable, settings=postgres_settings) as pg:
            yield Servers(r, pg, folder)


def add_durability_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fsync-off",
        action="store_true",
        help="run PostgreSQL with fsync off (a labelled extra; headline figures keep it on)",
    )


def orchestrator_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "database_url": database_url,
        "redis_url": redis_url,
        "job_modules": "bench.jobs",
        "log_level": "WARNING",
        "worker_concurrency": 2,
        "worker_queues": "warmup",
        **overrides,
    }
    return load_settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    from tests.integration.stack import settings_env as env  # noqa: PLC0415

    return env(settings)


@dataclass
class Process:
    """A benchmark subprocess (worker or web server) in its own process group."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        # It dies with the benchmark, however that ends (a benchmark stopped half-way left
        # its web, dispatcher and Redis running).
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with(os.getpid(), signal.SIGTERM),  # noqa: PLW1509
            )
        return self

    def rss_mb(self) -> float:
        """Resident memory of the process and its children, in MB."""
        import psutil  # noqa: PLC0415

        assert self.popen is not None
        root = psutil.Process(self.popen.pid)
        total: int = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        return total / 2**20

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, 15)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, 9)
            self.popen.wait(10)


def celery_worker(
    app: str, env: dict[str, str], log: Path, node: str, queues: str = "warmup"
) -> Process:
    argv = [
        CELERY,
        "-A",
        app,
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        f"--queues={queues}",
        f"--hostname={node}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=WARNING",
    ]
    return Process(argv, env, log).start()


def dispatcher(settings: Settings, log: Path, timeout: float = 60) -> Process:
    """The orchestrator's dispatcher process (`orchestrator run dispatcher`), once it leads:
    it fills the workers' queues from the database."""
    from orchestrator import processes  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415
    from orchestrator.dispatcher import LEASE_NAME  # noqa: PLC0415
    from orchestrator.leader import current_holder  # noqa: PLC0415
    from orchestrator.models import utcnow  # noqa: PLC0415

    argv = processes.command("dispatcher", settings)
    process = Process(argv, settings_env(settings), log).start()
    database = Database(settings.database_url)
    try:
        deadline = time.monotonic() + timeout
        while current_holder(database, LEASE_NAME, utcnow()) is None:
            assert process.popen is not None
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dispatcher does not lead: see {log}")
            time.sleep(0.05)
    finally:
        database.dispose()
    return process


@contextmanager
def raw_celery(env: Servers, database: int, folder: Path, name: str) -> Iterator[Any]:
    """A plain Celery app and a worker of `bench.rawcelery` on Redis database `database`,
    with a Redis result backend on the next one (what `.get()`, chains and chords need);
    the worker answers before the app is yielded, and is stopped after."""
    from celery import Celery  # noqa: PLC0415 - only the raw benchmarks need it here

    broker = env.redis_url(database)
    backend = broker.rsplit("/", 1)[0] + f"/{database + 1}"
    os.environ["BENCH_BROKER"] = broker
    app = Celery("rawbench", broker=broker, backend=backend)
    node = f"{name}-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker(
        "bench.rawcelery",
        {**os.environ, "BENCH_BROKER": broker, "BENCH_BACKEND": backend},
        folder / f"{name}.log",
        node,
        queues="celery",
    )
    try:
        wait_ping(app, node)
        yield app
    finally:
        worker.stop()


def wait_ping(app: Any, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(destination=[node], timeout=0.5):
            return
    raise RuntimeError(f"worker {node} did not answer")


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(name: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Print `rows` as a table, then `summary` as one JSON line; return the summary."""
    if rows:
        headers = list(rows[0])
        widths = [max(len(h), *(len(_cell(r[h])) for r in rows)) for h in headers]
        print(f"\n== {name}")
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(_cell(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    line = {"benchmark": name, **summary}
    print(json.dumps(line), flush=True)
    results = ROOT / "bench" / "results.jsonl"
    with results.open("a") as out:
        out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **line}) + "\n")
    return line


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
