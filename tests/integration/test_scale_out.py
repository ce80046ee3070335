"""Scale-out: three worker hosts against one Redis and one PostgreSQL.

Each host is a network namespace with an address of its own and a host name of its own
(its workers record `host-N:pid` on what they claim); it reaches Redis and PostgreSQL only
through that address (`tests.netpartition`). The web process, the dispatcher and beat run
outside them, as a control plane would. The hosts share the load; one host's whole worker
is killed with SIGKILL mid-run, and nothing is lost: every job succeeds once, and only a
job that was running on the dead host runs again. On two cores this shows correctness and
the share, not a speed-up.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from api import create_app
from orchestrator import migrate
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from tests import netpartition
from tests.integration.stack import ROOT, Stack, Worker, stack_settings
from tests.servers import free_port

pytestmark = pytest.mark.skipif(
    not netpartition.available(), reason="network namespaces need root and ip"
)

HOSTS = 3
JOBS = 150
SECONDS = 0.2  # a job's length: a host's processes are inside a job nearly all the time
TENANT = "tnt_scale"


@dataclass
class Host:
    name: str
    net: netpartition.Partition
    worker: Worker


def _host_settings(
    settings: Settings, net: netpartition.Partition, redis: int, pg: int
) -> Settings:
    """The same settings, with Redis and PostgreSQL reached through the host's own address."""
    local = f"127.0.0.1:{pg}"
    return settings.model_copy(
        update={
            "redis_url": f"redis://{net.host_address}:{net.expose(redis)}/0",
            "database_url": settings.database_url.replace(
                local, f"{net.host_address}:{net.expose(pg)}"
            ),
        }
    )


def _as_host(net: netpartition.Partition, name: str) -> list[str]:
    # A UTS namespace too: the host's own name, as a separate machine would have.
    return net.command(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name])


@pytest.fixture
def control_plane(
    postgres_server: EmbeddedPostgres, tmp_path: Path
) -> Iterator[tuple[Stack, EmbeddedRedis]]:
    """Web (in this process), dispatcher and beat, on a Redis and a database of their own;
    no worker: the hosts are the workers."""
    with EmbeddedRedis.start(port=free_port(), data_dir=tmp_path / "redis") as redis:
        name = f"scale_{free_port()}"
        postgres_server.create_database(name)
        settings = stack_settings(postgres_server.url(name), redis.url, visibility_timeout=6)
        migrate.upgrade(settings.database_url)
        stack = Stack.build(settings, tmp_path)
        app = create_app(runtime=stack.runtime)
        stack.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=stack.server.serve_forever, daemon=True).start()
        stack.base_url = f"http://127.0.0.1:{stack.server.server_port}"
        try:
            stack.beat.start(stack.runtime)
            yield stack, redis
        finally:
            stack.dispatcher.stop()
            stack.beat.stop()
            stack.server.shutdown()
            stack.runtime.database.dispose()
            postgres_server.drop_database(name)


@pytest.fixture
def hosts(
    control_plane: tuple[Stack, EmbeddedRedis],
    postgres_server: EmbeddedPostgres,
    tmp_path: Path,
) -> Iterator[list[Host]]:
    stack, redis = control_plane
    started: list[Host] = []
    try:
        for number in range(1, HOSTS + 1):
            net = netpartition.Partition().create()
            name = f"host-{number}"
            settings = _host_settings(stack.settings, net, redis.port, postgres_server.port)
            worker = Worker(settings, tmp_path / f"{name}.log", prefix=_as_host(net, name))
            started.append(Host(name, net, worker))
            worker.start(stack.runtime)
        yield started
    finally:
        for host in started:
            host.worker.stop()
            host.net.destroy()


def _claims(runtime: Runtime) -> list[tuple[str, int, str]]:
    """(job id, attempt, host) of every claim, from the claim events."""
    with runtime.database.session() as session:
        rows = session.execute(
            sa.text(
                "SELECT job_id, attempt, data FROM job_events "
                "WHERE tenant_id = :tenant AND to_status = 'running'"
            ),
            {"tenant": TENANT},
        ).all()
    return [(job, attempt, _data(data)["worker"].split(":")[0]) for job, attempt, data in rows]


def _data(value: str | dict[str, str]) -> dict[str, str]:
    return json.loads(value) if isinstance(value, str) else value


def _diagnostics(stack: Stack, hosts: list[Host]) -> str:
    tails = [f"--- {host.name}:\n{host.worker.log_tail(15)}" for host in hosts]
    return "\n".join([*tails, f"--- dispatcher:\n{stack.dispatcher.log_tail(15)}"])


def _running_on(runtime: Runtime, host: str) -> int:
    """How many jobs the host's workers are running (claimed, not finished)."""
    with runtime.database.session() as session:
        running = session.scalar(
            sa.text("SELECT count(*) FROM jobs WHERE status = 'running' AND worker LIKE :host"),
            {"host": f"{host}:%"},
        )
    return int(running or 0)


def _statuses(runtime: Runtime) -> dict[str, int]:
    with runtime.database.session() as session:
        rows = session.execute(
            sa.text("SELECT status, count(*) FROM jobs WHERE tenant_id = :t GROUP BY status"),
            {"t": TENANT},
        ).all()
    return {str(status): int(count) for status, count in rows}


def test_three_hosts_share_the_load_and_a_killed_host_loses_nothing(
    control_plane: tuple[Stack, EmbeddedRedis], hosts: list[Host], tmp_path: Path
) -> None:
    stack, _ = control_plane
    effect = tmp_path / "effects"
    jobs = [{"type": "TEST_SLEEP", "input": {"seconds": SECONDS, "effectFile": str(effect)}}]
    jobs *= JOBS
    created = stack.post(TENANT, "/v1/jobs:batch", {"jobs": jobs})
    assert created.status_code == 201, created.text
    ids = {job["id"] for job in created.json()["jobs"]}
    stack.dispatcher.start(stack.runtime)

    victim = hosts[0]
    deadline = time.monotonic() + 60
    while _statuses(stack.runtime).get("succeeded", 0) < JOBS // 3 or not _running_on(
        stack.runtime, victim.name
    ):
        assert time.monotonic() < deadline, _diagnostics(stack, hosts)
        time.sleep(0.02)
    victim.worker.kill()  # the host's whole worker, main process and pool, inside a job

    deadline = time.monotonic() + 90
    while _statuses(stack.runtime).get("succeeded", 0) < JOBS:
        assert time.monotonic() < deadline, (_statuses(stack.runtime), _diagnostics(stack, hosts))
        time.sleep(0.2)

    assert _statuses(stack.runtime) == {"succeeded": JOBS}
    with stack.runtime.database.session() as session:
        successes = session.execute(
            sa.text(
                "SELECT job_id, count(*) FROM job_events "
                "WHERE tenant_id = :t AND to_status = 'succeeded' GROUP BY job_id"
            ),
            {"t": TENANT},
        ).all()
    assert {job for job, _ in successes} == ids
    assert {count for _, count in successes} == {1}  # each recorded once

    claims = _claims(stack.runtime)
    first_runs = collections.Counter(host for _, attempt, host in claims if attempt == 1)
    assert set(first_runs) == {h.name for h in hosts}, first_runs
    for host in hosts[1:]:  # the survivors: each a fair part of the work
        assert first_runs[host.name] >= JOBS // 5, first_runs
    assert first_runs[victim.name] >= JOBS // 20, first_runs  # it took its share until killed

    # Only what the dead host was running ran again, and elsewhere.
    again = {job for job, attempt, _ in claims if attempt > 1}
    # Killed inside a job: that job ran again, elsewhere.
    assert 1 <= len(again) <= 2 * victim.worker.settings.worker_concurrency, again
    first_host = {job: host for job, attempt, host in claims if attempt == 1}
    assert all(first_host[job] == victim.name for job in again), again
    runs = collections.Counter(line.split()[0] for line in effect.read_text().splitlines())
    assert set(runs) == ids
    assert {job for job, count in runs.items() if count > 1} <= again
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with (artifacts / "scale_out.jsonl").open("a") as out:
        figures = {"jobs": JOBS, "first_runs": first_runs, "ran_again": len(again)}
        out.write(json.dumps(figures) + "\n")
