"""Cancel, retry, dead letters, idempotency, leases and delays, on the running system."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.integration.stack import Stack

SETTLE = 1.5  # long enough for any stray delivery or interrupted handler to show itself


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _cancel(stack: Stack, tenant: str, job_id: str) -> dict[str, Any]:
    response = stack.post(tenant, f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "cancelled"
    assert {s["status"] for s in job["pipeline"]["steps"]} == {"cancelled"}
    return job


def test_cancel_queued_job_never_runs(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(tenant, {"type": "TEST_PARKED", "input": {"effectFile": str(effect)}})
    _cancel(stack, tenant, created["id"])
    app = stack.runtime.dispatcher.app  # type: ignore[attr-defined]
    app.control.add_consumer("parked", reply=True)
    try:
        _wait(
            lambda: any(e["kind"] == "delivery" for e in stack.events(tenant, created["id"])),
            what="the parked message to be delivered and skipped",
        )
    finally:
        app.control.cancel_consumer("parked", reply=True)
    assert _lines(effect) == []
    assert stack.get(tenant, f"/v1/jobs/{created['id']}").json()["status"] == "cancelled"


def test_cancel_delayed_job(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(
        tenant, {"type": "TEST_EFFECT", "input": {"effectFile": str(effect)}, "delaySeconds": 1}
    )
    assert created["runAt"] is not None
    _cancel(stack, tenant, created["id"])
    time.sleep(1 + SETTLE)
    assert _lines(effect) == []


def test_cancel_retrying_job(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(
        tenant, {"type": "TEST_SLOW_RETRY", "input": {"effectFile": str(effect)}}
    )
    stack.wait_for(tenant, created["id"], {"retrying"})
    _cancel(stack, tenant, created["id"])
    time.sleep(4 + SETTLE)  # past the 4 s backoff: the held retry must not run
    assert len(_lines(effect)) == 1


def test_cancel_running_job_stops_its_handler(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(
        tenant, {"type": "TEST_LOOP", "input": {"effectFile": str(effect), "seconds": 20}}
    )
    _wait(lambda: len(_lines(effect)) >= 3, what="the loop to start ticking")
    asked = time.monotonic()
    response = stack.post(tenant, f"/v1/jobs/{created['id']}/cancel")
    # Answered at once: the worker is asked to stop, nobody waits for it in the request.
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    assert response.json()["cancelRequestedAt"] is not None
    job = stack.wait_for(tenant, created["id"], {"cancelled"}, timeout=10)
    stopped_within = time.monotonic() - asked
    ticks = len(_lines(effect))
    time.sleep(SETTLE)
    assert len(_lines(effect)) == ticks, "the handler kept running after its job was cancelled"
    assert {s["status"] for s in job["pipeline"]["steps"]} == {"cancelled"}
    assert stopped_within < 5
    messages = [e["message"] for e in stack.events(tenant, created["id"])]
    assert "cancelled while running" in messages


def test_cancel_waiting_step(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(
        tenant, {"type": "TEST_LOOP", "input": {"effectFile": str(effect), "seconds": 1}}
    )
    waiting_id = created["pipeline"]["steps"][1]["id"]
    response = stack.post(tenant, f"/v1/jobs/{waiting_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    head = stack.wait_for(tenant, created["id"])
    assert head["status"] == "succeeded"
    time.sleep(SETTLE)
    step = stack.get(tenant, f"/v1/jobs/{waiting_id}").json()
    assert step["status"] == "cancelled" and step["attempt"] == 0


def test_cancel_finished_job_is_a_conflict(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, {"type": "TEST_EXPLODES"})
    stack.wait_for(tenant, created["id"])
    response = stack.post(tenant, f"/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["Content-Type"] == "application/problem+json"


def test_dead_letter_listed_then_retried_by_hand(stack: Stack, tenant: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    created = stack.create(tenant, {"type": "TEST_GATED", "input": {"gateFile": str(gate)}})
    failed = stack.wait_for(tenant, created["id"])
    assert failed["status"] == "failed"

    dead = stack.get(tenant, "/v1/jobs?status=failed").json()["jobs"]
    assert [(j["id"], j["error"]["type"], j["attempt"]) for j in dead] == [
        (created["id"], "PermanentError", 1)
    ]
    gate.touch()
    response = stack.post(tenant, f"/v1/jobs/{created['id']}/retry")
    assert response.status_code == 200, response.text
    assert [s["status"] for s in response.json()["pipeline"]["steps"]] == ["queued", "waiting"]
    done = stack.wait_for(tenant, created["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 2
    follow = stack.wait_for(tenant, done["pipeline"]["steps"][1]["id"])
    assert follow["result"] == {"upstream": {"gate": "open"}}


def test_retry_of_a_running_or_finished_job_is_a_conflict(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, README_LIKE)
    stack.wait_for(tenant, created["id"])
    assert stack.post(tenant, f"/v1/jobs/{created['id']}/retry").status_code == 409


def test_bulk_retry_of_failed_jobs(stack: Stack, tenant: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ids = [
        stack.create(tenant, {"type": "TEST_GATED", "input": {"gateFile": str(gate)}})["id"]
        for _ in range(3)
    ]
    for job_id in ids:
        stack.wait_for(tenant, job_id)
    gate.touch()
    response = stack.post(tenant, "/v1/jobs/retry", {"type": "TEST_GATED"})
    assert response.status_code == 200
    assert sorted(response.json()["retried"]) == sorted(ids)
    for job_id in ids:
        assert stack.wait_for(tenant, job_id)["status"] == "succeeded"
    # Another tenant's bulk retry touches nothing of ours.
    assert stack.post("tnt_other", "/v1/jobs/retry", {}).json()["count"] == 0


def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    stack: Stack, tenant: str
) -> None:
    barrier = threading.Barrier(20)
    answers: list[tuple[int, str]] = []

    def create() -> None:
        barrier.wait()
        response = stack.post(tenant, "/v1/jobs", README_LIKE, **{"Idempotency-Key": "k-1"})
        answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(code for code, _ in answers) == {201: 1, 200: 19}, answers
    assert len({job_id for _, job_id in answers}) == 1
    listed = stack.get(tenant, "/v1/jobs?type=ANALYZE_INSPECTION").json()["jobs"]
    assert len(listed) == 1

    other_body = {**README_LIKE, "input": {"analysisMode": "QUICK", "roomIds": ["room_9"]}}
    conflict = stack.post(tenant, "/v1/jobs", {**other_body, "idempotencyKey": "k-1"})
    assert conflict.status_code == 409
    # Keys are per tenant: another tenant may use the same one.
    assert (
        stack.post(
            "tnt_other_" + tenant, "/v1/jobs", README_LIKE, **{"Idempotency-Key": "k-1"}
        ).status_code
        == 201
    )


def test_heartbeat_keeps_a_job_longer_than_its_lease(
    stack: Stack, tenant: str, tmp_path: Path
) -> None:
    lease = stack.settings.lease_seconds
    created = stack.create(
        tenant,
        {
            "type": "TEST_LOOP",
            "input": {"effectFile": str(tmp_path / "effect"), "seconds": lease * 2},
        },
    )
    job = stack.wait_for(tenant, created["id"], timeout=lease * 6)
    assert job["status"] == "succeeded"
    assert job["attempt"] == 1  # never reaped and rerun


def test_delayed_job_runs_once_when_due(stack: Stack, tenant: str, tmp_path: Path) -> None:
    effect = tmp_path / "effect"
    created = stack.create(
        tenant, {"type": "TEST_EFFECT", "input": {"effectFile": str(effect)}, "delaySeconds": 2}
    )
    job = stack.wait_for(tenant, created["id"])
    assert job["status"] == "succeeded"
    started = datetime.fromisoformat(job["startedAt"])
    due = datetime.fromisoformat(created["runAt"])
    assert 0 <= (started - due).total_seconds() < 2
    assert len(_lines(effect)) == 1


README_LIKE = {
    "type": "ANALYZE_INSPECTION",
    "inspectionId": "insp_999",
    "input": {"analysisMode": "DEEP", "roomIds": ["room_1"]},
}
