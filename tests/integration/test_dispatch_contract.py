"""One contract, every dispatcher: the same scenarios against Celery, Cloud Tasks (a real
emulator pushing HTTP to the web process), plain HTTP push, and inline dispatch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator import migrate
from orchestrator.dispatch import Delivery
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.runtime import Runtime
from tests.cloudtasks import CloudTasksEmulator
from tests.integration.stack import PushStack, Stack, stack_settings
from tests.servers import free_port

MODES = ("celery", "cloud-tasks", "http", "inline")


@pytest.fixture(scope="module", params=MODES)
def system(
    request: pytest.FixtureRequest,
    redis_server: EmbeddedRedis,
    postgres_server: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    mode: str = request.param
    folder = tmp_path_factory.mktemp(f"contract-{mode}")
    name = f"contract_{mode.replace('-', '_')}"
    postgres_server.create_database(name)
    database_url = postgres_server.url(name)
    migrate.upgrade(database_url)
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{6 + MODES.index(mode)}"
    if mode == "celery":
        stack: Stack = Stack.build(stack_settings(database_url, redis_url), folder)
        yield stack.start()
        stack.stop()
        return
    with CloudTasksEmulator(folder / "emulator.log") as emulator:
        port = free_port()
        settings = stack_settings(
            database_url,
            redis_url,
            dispatch_mode=mode,
            worker_url=f"http://127.0.0.1:{port}/internal/worker/run",
            cloud_tasks_queue=emulator.queue,
            cloud_tasks_endpoint=emulator.endpoint,
        )
        stack = PushStack(
            settings,
            Runtime.build(settings),
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            port=port,
            extra_logs=[folder / "emulator.log"],
        )
        yield stack.start()
        stack.stop()


def deliver_again(system: Stack, job: dict[str, Any], times: int) -> None:
    """The same delivery, `times` more, at once: a broker redelivery or a repeated push."""
    again = Delivery(job["id"], job["type"], "default", number=10**9)
    if system.settings.dispatch_mode == "celery":
        system.runtime.dispatcher.send([again] * times)  # the very same message: one task id
        return
    body = {"jobId": job["id"], "idempotencyKey": again.delivery_id}
    headers = {"X-Service-Auth": system.settings.service_auth_secret or ""}
    threads = [
        threading.Thread(
            target=requests.post,
            daemon=True,
            kwargs={
                "url": f"{system.base_url}/internal/worker/run",
                "json": body,
                "headers": headers,
                "timeout": 30,
            },
        )
        for _ in range(times)
    ]
    for thread in threads:
        thread.start()


def create(system: Stack, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create in the background: inline dispatch runs the job inside the request."""
    if system.settings.dispatch_mode != "inline":
        return system.create(tenant, body)
    created: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: created.append(system.create(tenant, body)))
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = system.get(tenant, f"/v1/jobs?type={body['type']}").json()["jobs"]
        if listed:
            return {"id": listed[0]["id"], "type": body["type"], "thread": thread}
        time.sleep(0.02)
    raise AssertionError("job not recorded")


def test_pipeline_succeeds(system: Stack, tenant: str) -> None:
    created = system.create(tenant, {"type": "TEST_FLAKY"})
    head = system.wait_for(tenant, created["id"])
    follow = system.wait_for(tenant, head["pipeline"]["steps"][1]["id"])
    assert (head["status"], follow["status"]) == ("succeeded", "succeeded")
    assert follow["result"] == {"upstream": {"attempt": 1}}


def test_a_fan_out_joins_once_after_its_children(system: Stack, tenant: str) -> None:
    items = ["a", "b", "c", "d"]
    created = system.create(tenant, {"type": "TEST_FAN_OUT", "input": {"items": items}})
    join_id = created["pipeline"]["steps"][1]["id"]
    join = system.wait_for(tenant, join_id, timeout=60)
    assert join["status"] == "succeeded", join
    assert [child["item"] for child in join["result"]["children"]] == ["A", "B", "C", "D"]
    assert sum(e["toStatus"] == "running" for e in system.events(tenant, join_id)) == 1


def test_a_workflow_maps_within_its_concurrency_and_joins_once(system: Stack, tenant: str) -> None:
    items = [f"i{n}" for n in range(6)]
    body = {"type": "TEST_FLOW", "input": {"items": items, "sleep": 0.1}}
    created = system.create(tenant, body)
    last_gate = created["pipeline"]["steps"][-1]["id"]
    assert system.wait_for(tenant, last_gate, timeout=90)["status"] == "succeeded"
    flow = system.get(tenant, f"/v1/jobs/{created['id']}").json()["workflow"]
    steps = {s["name"]: s for s in flow["steps"]}
    assert flow["status"] == "succeeded" and steps["items"]["jobs"] == {"succeeded": 6}
    summary = system.get(tenant, f"/v1/jobs/{steps['summary']['jobId']}").json()
    assert summary["result"]["items"] == [i.upper() for i in items]
    assert sum(e["toStatus"] == "running" for e in system.events(tenant, last_gate)) == 1
    # Concurrency 2: no moment saw three of the map's jobs running.
    join = steps["items"]["joinId"]
    jobs = system.get(tenant, f"/v1/jobs/{join}/children?step=items").json()["children"]
    spans = [(_at(j["startedAt"]), _at(j["finishedAt"])) for j in jobs]
    assert max(sum(s <= t < f for s, f in spans) for t, _ in spans) <= 2


def test_flaky_job_retries_with_growing_delays(system: Stack, tenant: str) -> None:
    created = system.create(tenant, {"type": "TEST_FLAKY", "input": {"failTimes": 2}})
    job = system.wait_for(tenant, created["id"], timeout=60)
    assert (job["status"], job["attempt"]) == ("succeeded", 3)
    events = system.events(tenant, created["id"])
    retries = [e for e in events if e["toStatus"] == "retrying"]
    starts = [e for e in events if e["toStatus"] == "running"]
    waits = [_at(s["at"]) - _at(r["at"]) for r, s in zip(retries, starts[1:], strict=True)]
    planned = [_at(r["data"]["runAt"]) - _at(r["at"]) for r in retries]
    assert planned[1] > planned[0]
    assert all(wait >= plan - 0.05 for wait, plan in zip(waits, planned, strict=True))
    assert system.wait_for(tenant, job["pipeline"]["steps"][1]["id"])["status"] == "succeeded"


def test_permanent_failure_cancels_downstream(system: Stack, tenant: str) -> None:
    created = system.create(tenant, {"type": "TEST_EXPLODES"})
    job = system.wait_for(tenant, created["id"])
    assert job["status"] == "failed" and job["attempt"] == 1
    assert [s["status"] for s in job["pipeline"]["steps"]] == ["failed", "cancelled"]


def test_duplicate_delivery_runs_the_handler_once(
    system: Stack, tenant: str, tmp_path: Path
) -> None:
    effect = tmp_path / "effect"
    created = create(
        system, tenant, {"type": "TEST_EFFECT", "input": {"effectFile": str(effect), "sleep": 0.5}}
    )
    deliver_again(system, created, times=4)
    job = system.wait_for(tenant, created["id"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # every duplicate answered (and skipped)
        skips = [e for e in system.events(tenant, created["id"]) if e["kind"] == "delivery"]
        if len(skips) >= 4:
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert len(skips) >= 4
    assert effect.read_text().splitlines() == [f"{created['id']} attempt=1"]


def test_cancel_before_dispatch_prevents_the_run(
    system: Stack, tenant: str, tmp_path: Path
) -> None:
    effect = tmp_path / "effect"
    created = system.create(
        tenant, {"type": "TEST_EFFECT", "delaySeconds": 1, "input": {"effectFile": str(effect)}}
    )
    response = system.post(tenant, f"/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    time.sleep(2.5)
    assert not effect.exists()
    assert system.get(tenant, f"/v1/jobs/{created['id']}").json()["status"] == "cancelled"


def _at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()
