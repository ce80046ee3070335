"""`make run` when things go wrong: stopped with work queued (cleanly, or `kill -9` of its
whole process group), a process that crashes, one that keeps crashing, a second start."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import requests

from tests.e2e.devsystem import ROOT, DevSystem, alive
from tests.servers import free_port

JOBS = 200
RESTART_TARGET_SECONDS = 30


def _counts(system: DevSystem, tenant: str) -> dict[str, int]:
    with sqlite3.connect(system.state / "orchestrator.db") as db:
        rows = db.execute(
            "SELECT status, count(*) FROM jobs WHERE tenant_id = ? GROUP BY status", (tenant,)
        ).fetchall()
    return dict(rows)


def _successes_per_job(system: DevSystem, tenant: str) -> set[int]:
    with sqlite3.connect(system.state / "orchestrator.db") as db:
        rows = db.execute(
            "SELECT count(*) FROM job_events WHERE tenant_id = ? AND to_status = 'succeeded' "
            "GROUP BY job_id",
            (tenant,),
        ).fetchall()
    return {count for (count,) in rows}


def _record(name: str, figures: dict[str, object]) -> None:
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with (artifacts / "recovery.jsonl").open("a") as out:
        out.write(json.dumps({"test": name, **figures}) + "\n")


@pytest.mark.parametrize("how", ["sigterm", "kill-9-group"])
def test_queued_jobs_finish_soon_after_make_run_is_stopped_and_started_again(
    tmp_path: Path, how: str
) -> None:
    """200 jobs queued in the embedded Redis when `make run` stops; the next `make run`
    finishes them within 30 s, each run once (not after the 15-minute resend timer)."""
    system = DevSystem.prepare(tmp_path, ORCH_JOB_MODULES="tests.jobtypes").start()
    tenant = "tnt_restart"
    try:
        batch = {"jobs": [{"type": "TEST_SLEEP", "input": {"seconds": 0.1}}] * JOBS}
        assert system.post(tenant, "/v1/jobs:batch", batch).status_code == 201
        time.sleep(1.0)
        assert system.process is not None
        # Every process of the run, pools and gunicorn's workers included.
        family = psutil.Process(system.process.pid).children(recursive=True)
        _stop_leaving_nothing(system, family, how)
        left = JOBS - _counts(system, tenant).get("succeeded", 0)
        assert left > JOBS // 2, "the test must stop the system with most jobs still queued"

        restarted = time.monotonic()
        system.start(wait=False)
        while _counts(system, tenant).get("succeeded", 0) < JOBS:
            elapsed = time.monotonic() - restarted
            assert elapsed < RESTART_TARGET_SECONDS, (_counts(system, tenant), system.log_tail())
            time.sleep(0.2)
        finished_in = time.monotonic() - restarted
    finally:
        system.stop()
    assert _successes_per_job(system, tenant) == {1}  # every job ran once
    _record(f"restart-{how}", {"queued_at_stop": left, "finished_after_restart_s": finished_in})


@pytest.mark.parametrize("how", ["sigterm", "kill-9-group"])
def test_the_embedded_postgres_stops_with_make_run_and_keeps_its_jobs(
    tmp_path: Path, how: str
) -> None:
    """`make run`'s default database: a PostgreSQL of its own in the state folder. It goes
    with the run however the run stops (no postmaster or backend left behind), and the next
    run finds the jobs the last one recorded."""
    system = DevSystem.prepare(tmp_path, sqlite=False).start()
    try:
        assert system.process is not None
        family = psutil.Process(system.process.pid).children(recursive=True)
        assert any(p.name() == "postgres" for p in family), [p.name() for p in family]
        assert (tmp_path / "postgres" / "data" / "PG_VERSION").is_file()
        # A password only this account reads; without it, no way in.
        secret = tmp_path / "postgres.password"
        assert secret.stat().st_mode & 0o777 == 0o600
        where = {"host": "127.0.0.1", "port": system.env["ORCH_EMBEDDED_POSTGRES_PORT"]}
        where |= {"user": "postgres", "dbname": "orchestrator", "connect_timeout": 5}
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(**where).close()
        psycopg.connect(**where, password=secret.read_text()).close()
        # Its own log file; the terminal is spared its start-up lines.
        assert "ready to accept connections" in (tmp_path / "postgres/postgresql.log").read_text()
        assert "ready to accept connections" not in system.log_path.read_text()
        body = {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "QUICK", "roomIds": ["a"]}}
        created = system.post("tnt_pg", "/v1/jobs", body)
        assert created.status_code == 201, created.text
        job = created.json()["pipeline"]["steps"][1]["id"]
        _wait_until_succeeded(system, "tnt_pg", job)
        _stop_leaving_nothing(system, family, how)

        system.start()
        assert system.get("tnt_pg", f"/v1/jobs/{job}").json()["status"] == "succeeded"
    finally:
        system.stop()


def _stop_leaving_nothing(system: DevSystem, family: list[psutil.Process], how: str) -> None:
    """Stop the run with SIGTERM, or `kill -9` of its whole group; none of `family` (every
    process it had) may outlive it."""
    if how == "sigterm":
        system.stop(signal.SIGTERM)
    else:
        system.stop(signal.SIGKILL, group=True)
    _, left = psutil.wait_procs(family, timeout=30)
    assert not [p for p in left if alive(p.pid)], (left, system.log_tail())


def _wait_until_succeeded(system: DevSystem, tenant: str, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while system.get(tenant, f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, system.log_tail()
        time.sleep(0.1)


@pytest.fixture
def running(tmp_path: Path) -> DevSystem:
    system = DevSystem.prepare(tmp_path, ORCH_JOB_MODULES="tests.jobtypes").start()
    yield system
    system.stop()


def _wait_for_line(system: DevSystem, text: str, timeout: float = 30, times: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while system.log_path.read_text(errors="replace").count(text) < times:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{system.log_tail()}"
        time.sleep(0.1)


def _run_one(system: DevSystem, tenant: str, timeout: float = 30) -> float:
    started = time.monotonic()
    created = system.post(tenant, "/v1/jobs", {"type": "TEST_SLEEP"})
    assert created.status_code == 201, created.text
    while time.monotonic() - started < timeout:
        job = system.get(tenant, f"/v1/jobs/{created.json()['id']}").json()
        if job["status"] == "succeeded":
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"job not done after {timeout} s:\n{system.log_tail()}")


def test_a_crashed_worker_or_broker_is_restarted_and_the_api_stays_up(
    running: DevSystem,
) -> None:
    tenant = "tnt_crash"
    worker = running.pids()["worker"]
    os.killpg(worker, signal.SIGKILL)  # the worker's whole process group: pool included
    assert requests.get(f"{running.base_url}/healthz", timeout=2).status_code == 200
    _wait_for_line(running, "worker restarted")
    _run_one(running, tenant)

    os.kill(running.pids()["redis"], signal.SIGKILL)
    created = running.post(tenant, "/v1/jobs", {"type": "TEST_SLEEP"})  # the outbox holds it
    assert created.status_code == 201
    _wait_for_line(running, "redis restarted")
    deadline = time.monotonic() + 30
    while running.get(tenant, f"/v1/jobs/{created.json()['id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, running.log_tail()
        time.sleep(0.2)
    assert requests.get(f"{running.base_url}/readyz", timeout=5).status_code == 200
    _record("crash-restart", {"job_after_redis_restart_s": _run_one(running, tenant)})


def test_a_process_that_keeps_crashing_stops_everything_and_says_which(
    running: DevSystem,
) -> None:
    assert running.process is not None
    pids = running.pids()
    for crash in range(1, 6):
        beat = running.pids()["beat"]
        os.kill(beat, signal.SIGKILL)
        if crash == 5:
            break
        _wait_for_line(running, "beat restarted", timeout=40, times=crash)
        while running.pids()["beat"] == beat:  # its new pid is on record
            time.sleep(0.05)
    code = running.process.wait(60)
    assert code != 0
    assert "beat crashed 5 times in a row" in running.log_path.read_text()
    time.sleep(1)
    assert not [name for name, pid in pids.items() if name != "beat" and alive(pid)]


def test_a_second_start_from_the_same_folder_says_what_runs_there(
    running: DevSystem, tmp_path: Path
) -> None:
    """Even on other ports: two runs of one folder would share its database and broker."""
    env = {**running.env, "PORT": str(free_port()), "ORCH_FLOWER_PORT": str(free_port())}
    env["ORCH_EMBEDDED_REDIS_PORT"] = str(free_port())
    second = DevSystem(running.state, env, tmp_path / "second.log")
    second.start(wait=False)
    assert second.process is not None
    assert second.process.wait(60) != 0
    errors = [line for line in second.log_path.read_text().splitlines() if "Error" in line]
    supervisor = running.pids()["supervisor"]
    assert any(
        "is still running" in line and f"`kill {supervisor}` stops it" in line for line in errors
    ), second.log_tail()
