"""What one job costs each process, measured: the figures behind docs/scaling.md.

PostgreSQL runs with production's durability and `pg_stat_statements`. Two phases, each
over `--jobs` no-op jobs:

- create: one `POST /v1/jobs` at a time through the web app (Flask's test client, in this
  process: the web process's work without the network), with no worker running;
- drain: a prefork worker (`-c 2`) and the dispatcher take them all.

For each phase, per job: the statements PostgreSQL ran (and the most frequent), its
commits, WAL bytes and WAL fsyncs, and the CPU milliseconds of each process (web, worker,
dispatcher, PostgreSQL's backends, Redis), from /proc.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from api import create_app
from bench.harness import (
    Servers,
    celery_worker,
    dispatcher,
    orchestrator_settings,
    report,
    servers,
    settings_env,
    wait_ping,
)
from bench.throughput import _none_live
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.runtime import Runtime

STATEMENTS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SELF = os.getpid()


@dataclass(frozen=True)
class Database:
    """Counters of the server, read before and after a phase."""

    commits: int
    wal_bytes: int
    wal_fsyncs: int
    statements: dict[str, int]


def read_database(engine: sa.Engine) -> Database:
    # An idle backend publishes its counters within ten seconds (PGSTAT_IDLE_INTERVAL).
    time.sleep(11)
    with engine.connect() as connection:
        commits = connection.scalar(
            sa.text("SELECT sum(xact_commit) FROM pg_stat_database WHERE datname LIKE 'bench_%'")
        )
        wal = connection.scalar(sa.text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        fsyncs = connection.scalar(
            sa.text("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'")
        )
        rows = connection.execute(
            sa.text(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname LIKE 'bench_%'"
            )
        ).all()
    return Database(int(commits or 0), int(wal), int(fsyncs), {q: int(c) for q, c in rows})


def _role(pid: int, found: dict[int, tuple[int, str, str, int]], roots: dict[int, str]) -> str:
    """The role of the nearest of `pid`'s ancestors (itself included) that is a root."""
    seen = 0
    while pid not in roots and pid in found and seen < 64:
        pid, seen = found[pid][3], seen + 1
    return roots.get(pid, "")


def _processes() -> dict[int, tuple[int, str, str, int]]:
    """pid -> (CPU ticks, comm, command line, parent pid) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry)] = (int(fields[11]) + int(fields[12]), comm, command, int(fields[1]))
    return found


@contextmanager
def cpu_by_role(roots: dict[int, str]) -> Iterator[dict[str, float]]:
    """CPU seconds each role used inside the block: each process counts for its nearest
    ancestor in `roots` (pid -> role; filled in by the block), so that nothing else running
    on the machine does. Sampled, so that processes that come and go (PostgreSQL backends)
    count too."""
    before = _processes()
    last: dict[int, tuple[int, str, str, int]] = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            last.update(_processes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    used: dict[str, float] = collections.defaultdict(float)
    try:
        yield used
    finally:
        stop.set()
        sampler.join()
        last.update(_processes())
        for pid, (ticks, *_) in last.items():
            spent = (ticks - before.get(pid, (0,))[0]) / CLOCK_TICKS
            if spent > 0 and (role := _role(pid, last, roots)):
                used[role] += spent


def measure(
    engine: sa.Engine, jobs: int, roots: dict[int, str], phase: Callable[[], None]
) -> dict[str, Any]:
    start = read_database(engine)
    with cpu_by_role(roots) as cpu:
        phase()
    end = read_database(engine)
    calls = collections.Counter(end.statements)
    calls.subtract(start.statements)
    ours = {q: n for q, n in calls.items() if n > 0 and "pg_stat" not in q}
    return {
        "statements": sum(ours.values()) / jobs,
        "commits": (end.commits - start.commits) / jobs,
        "wal_bytes": (end.wal_bytes - start.wal_bytes) / jobs,
        "wal_fsyncs": (end.wal_fsyncs - start.wal_fsyncs) / jobs,
        "cpu_ms": {role: 1000 * seconds / jobs for role, seconds in sorted(cpu.items())},
        "top": [
            (round(n / jobs, 3), " ".join(q.split())[:90])
            for q, n in collections.Counter(ours).most_common(6)
        ],
    }


def run(env: Servers, jobs: int, folder: Path) -> dict[str, dict[str, Any]]:
    assert env.postgres is not None
    admin = sa.create_engine(env.postgres.url("postgres"), poolclass=sa.pool.NullPool)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    settings = orchestrator_settings(env.database_url("postgresql"), env.redis_url(1))
    runtime = Runtime.build(settings)
    client = create_app(runtime=runtime).test_client()

    def create() -> None:
        for _ in range(jobs):
            answer = client.post(
                "/v1/jobs", json={"type": "BENCH_NOOP", "input": {}}, headers={"X-Tenant-ID": "t1"}
            )
            assert answer.status_code == 201, answer.text

    node = f"capacity-{uuid.uuid4().hex[:6]}@bench"
    worker = celery_worker("tasks.worker", settings_env(settings), folder / "worker.log", node)
    assert worker.popen is not None
    roots = {SELF: "web (this process)", worker.popen.pid: "worker", env.redis.pid: "redis"}
    roots[env.postgres.pid] = "postgresql"
    feeder = None
    app = create_celery_app(settings)
    try:
        created = measure(admin, jobs, roots, create)
        env.quiesce()
        wait_ping(app, node)
        feeder = dispatcher(settings, folder / "dispatcher.log")
        assert feeder.popen is not None
        roots[feeder.popen.pid] = "dispatcher"

        broker = redis.Redis.from_url(settings.redis_url)

        def drain() -> None:
            app.control.add_consumer("default", destination=[node], reply=True)
            while not _none_live(runtime, broker):
                time.sleep(0.05)

        drained = measure(admin, jobs, roots, drain)
    finally:
        if feeder is not None:
            feeder.stop()
        worker.stop()
        runtime.database.dispose()
        admin.dispose()
    return {"create": created, "drain": drained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-")))
    args = parser.parse_args()
    with servers(args.folder, postgres_settings=STATEMENTS) as env:
        phases = run(env, args.jobs, args.folder)
    rows = []
    for name, figures in phases.items():
        cpu = figures["cpu_ms"]
        rows.append(
            {
                "phase": name,
                "statements": figures["statements"],
                "commits": figures["commits"],
                "WAL bytes": figures["wal_bytes"],
                "WAL fsyncs": figures["wal_fsyncs"],
                **{f"{role} ms": cpu.get(role, 0.0) for role in ROLES},
            }
        )
    report(f"capacity: per job ({args.jobs} jobs, PostgreSQL fsync on)", rows, {"phases": phases})
    for name, figures in phases.items():
        print(f"\n{name}: most frequent statements (calls per job)")
        for calls, query in figures["top"]:
            print(f"  {calls:6.3f}  {query}")


ROLES = ("web (this process)", "worker", "dispatcher", "postgresql", "redis")

if __name__ == "__main__":
    main()
