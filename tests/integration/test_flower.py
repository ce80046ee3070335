"""Flower, started the way the Procfile starts it, sees the workers and the tasks of a
finished pipeline, behind basic auth and a URL prefix."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.integration.stack import Stack, Worker
from tests.servers import free_port

AUTH = ("ops", "flower-pass-123")


def test_flower_sees_the_worker_and_a_finished_pipeline(
    stack: Stack, tenant: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = stack.settings.model_copy(
        update={
            "flower_port": port,
            "flower_url_prefix": "flower",
            "flower_basic_auth": f"{AUTH[0]}:{AUTH[1]}",
        }
    )
    flower = Worker(settings, tmp_path / "flower.log", kind="flower")
    flower.start(stack.runtime)
    base = f"http://127.0.0.1:{port}/flower"
    try:
        _wait_until_up(f"{base}/api/workers", flower)
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        # Flower knows a task's name from its "received" event: wait until it is connected
        # to the broker (it lists the worker) before any task of ours is sent.
        workers = _workers_seen(base, stack.worker.nodename)
        # Workers send no task events until Flower switches them on (celeryconfig), and
        # housekeeping sends none at all: a probe job, sent again until Flower lists it,
        # shows that it has.
        _events_on(base, stack, tenant)
        created = stack.create(tenant, {"type": "TEST_FLAKY"})
        report_id = stack.wait_for(tenant, created["id"])["pipeline"]["steps"][1]["id"]
        stack.wait_for(tenant, report_id)
        tasks = _tasks_seen(base, {created["id"], report_id})
    finally:
        flower.stop()
    assert stack.worker.nodename in workers
    by_job = {task["uuid"].split("-d")[0]: task for task in tasks.values()}
    assert by_job[created["id"]]["name"] == "jobs.TEST_FLAKY"
    assert by_job[report_id]["name"] == "jobs.TEST_ECHO_UPSTREAM"
    assert {by_job[created["id"]]["state"], by_job[report_id]["state"]} == {"SUCCESS"}


def _wait_until_up(url: str, flower: Worker, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, auth=AUTH, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError(f"flower did not start:\n{flower.log_tail()}")


def _workers_seen(base: str, node: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    workers: dict[str, object] = {}
    while time.monotonic() < deadline and node not in workers:
        workers = requests.get(f"{base}/api/workers?refresh=1", auth=AUTH, timeout=20).json()
    time.sleep(1)  # the event receiver starts beside the inspector
    return workers


def _events_on(base: str, stack: Stack, tenant: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = stack.create(tenant, {"type": "TEST_ECHO_UPSTREAM"})
        stack.wait_for(tenant, probe["id"])
        try:
            _tasks_seen(base, {probe["id"]}, timeout=2)
            return
        except AssertionError:
            continue
    raise AssertionError("flower never saw a task: task events stayed off")


def _tasks_seen(base: str, job_ids: set[str], timeout: float = 20) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    tasks: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        tasks = requests.get(f"{base}/api/tasks", auth=AUTH, timeout=10).json()
        done = {t["uuid"].split("-d")[0] for t in tasks.values() if t.get("state") == "SUCCESS"}
        if done and job_ids <= done:
            return tasks
        time.sleep(0.3)
    raise AssertionError(f"flower saw {tasks}")
