"""What a job's claim and success cost by themselves: the two statements a worker runs per
job (`transitions.claim_alone`, `transitions.succeed_alone`), one after the other in one
process, with nothing else running, on PostgreSQL with its durability defaults.

Per job: the wall time, this process's CPU (building, sending and reading the statements)
and the CPU of every PostgreSQL process (backend, WAL writer, checkpointer). Each round
runs twice, the second time with `synchronous_commit` off for the database (a labelled
extra, never a headline): the wall time that this takes away is the wait for the disk.

It is the floor under `bench.throughput`'s drain: the worker's two processes pay these
figures for each job on top of what raw Celery pays, on the same two cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import sqlalchemy as sa

from bench.harness import Servers, median, orchestrator_settings, report, servers
from orchestrator import transitions
from orchestrator.models import Job, utcnow
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.states import Attempt

CHUNK = 500


@dataclass(frozen=True)
class Cost:
    wall_ms: float
    client_ms: float
    server_ms: float


def _cluster_cpu(env: Servers) -> float:
    """Seconds of CPU used so far by the cluster's processes (the postmaster's children)."""
    assert env.postgres is not None
    total = 0.0
    for process in psutil.Process(env.postgres.pid).children():
        try:
            times = process.cpu_times()
        except psutil.Error:  # a process that ended meanwhile (an autovacuum worker)
            continue
        total += times.user + times.system
    return total


def per_job(env: Servers, jobs: int, *, wait_for_disk: bool) -> Cost:
    url = env.database_url("postgresql")
    driver_url = url.replace("postgresql+psycopg://", "postgresql://")
    if not wait_for_disk:
        with psycopg.connect(driver_url, autocommit=True) as connection:
            name = connection.execute("SELECT current_database()").fetchone()
            assert name is not None
            connection.execute(f'ALTER DATABASE "{name[0]}" SET synchronous_commit = off')
    runtime = Runtime.build(orchestrator_settings(url, env.redis_url(1)))
    database = runtime.database
    try:
        for start in range(0, jobs, CHUNK):
            runtime.service.create_batch(
                [
                    NewJob(tenant_id=f"t{i % 50}", type="BENCH_NOOP")
                    for i in range(start, min(start + CHUNK, jobs))
                ]
            )
        with database.session() as session:
            ids = list(session.scalars(sa.select(Job.id).order_by(Job.id)))
        with psycopg.connect(driver_url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE jobs")  # as autovacuum would have by now
        env.quiesce()
        wall, client, server = time.perf_counter(), time.process_time(), _cluster_cpu(env)
        for job_id in ids:
            started = transitions.claim_alone(
                database, job_id, worker="bench", lease_seconds=30, now=utcnow()
            )
            assert started is not None, f"{job_id} was not claimable"
            run = Attempt.of(started.job)
            assert transitions.succeed_alone(database, run, None, utcnow(), has_next=False)
        return Cost(
            (time.perf_counter() - wall) / jobs * 1e3,
            (time.process_time() - client) / jobs * 1e3,
            (_cluster_cpu(env) - server) / jobs * 1e3,
        )
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--folder", type=Path, default=Path(tempfile.gettempdir()) / "orchestrator-bench"
    )
    args = parser.parse_args()
    costs: dict[bool, list[Cost]] = {True: [], False: []}
    rows = []
    with servers(args.folder) as env:
        for number in range(1, args.rounds + 1):
            for wait_for_disk in (True, False):  # alternated, so that drift touches both
                cost = per_job(env, args.jobs, wait_for_disk=wait_for_disk)
                costs[wait_for_disk].append(cost)
                commit = "waits for the disk" if wait_for_disk else "async (extra)"
                rows.append({"round": number, "commit": commit, **_columns(cost)})
    durable = costs[True]
    report(
        f"claim + success alone, one process ({args.jobs} jobs)",
        rows,
        {
            "jobs": args.jobs,
            "rounds": args.rounds,
            "wall_ms_per_job": median([c.wall_ms for c in durable]),
            "client_cpu_ms_per_job": median([c.client_ms for c in durable]),
            "postgres_cpu_ms_per_job": median([c.server_ms for c in durable]),
            "async_commit_wall_ms_per_job": median([c.wall_ms for c in costs[False]]),
        },
    )


def _columns(cost: Cost) -> dict[str, float]:
    return {
        "wall ms/job": cost.wall_ms,
        "client cpu ms/job": cost.client_ms,
        "postgres cpu ms/job": cost.server_ms,
    }


if __name__ == "__main__":
    main()
