"""The core path over real HTTP, real Redis and real Celery worker processes."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from orchestrator.dispatch import Delivery
from tests.integration.stack import Stack

README_JOB = {
    "type": "ANALYZE_INSPECTION",
    "inspectionId": "insp_999",
    "input": {"analysisMode": "DEEP", "roomIds": ["room_1", "room_2"]},
}


def test_pipeline_succeeds_end_to_end(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, README_JOB)
    assert created["status"] == "queued"
    assert [s["status"] for s in created["pipeline"]["steps"]] == ["queued", "waiting"]

    job = stack.wait_for(tenant, created["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded"
    report_id = job["pipeline"]["steps"][1]["id"]
    report = stack.wait_for(tenant, report_id, {"succeeded", "failed", "cancelled"})

    assert report["status"] == "succeeded", report
    assert job["result"]["roomIds"] == ["room_1", "room_2"]
    assert job["progress"] == {"percent": 100.0, "message": "2 room(s) sent for analysis"}
    # The rooms ran as jobs of their own (ANALYZE_ROOM), and the report joined them.
    assert report["pipeline"]["steps"][1]["children"] == {"succeeded": 2}
    assert report["result"]["roomIds"] == ["room_1", "room_2"]
    assert report["result"]["inspectionId"] == "insp_999"
    assert report["result"]["summary"].startswith("Inspection insp_999: 2 room(s)")
    assert report["upstreamId"] == job["id"]


def test_flaky_job_retries_with_growing_backoff(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, {"type": "TEST_FLAKY", "input": {"failTimes": 2}})
    job = stack.wait_for(tenant, created["id"])

    assert job["status"] == "succeeded"
    assert job["attempt"] == 3
    assert job["result"] == {"attempt": 3}
    events = stack.events(tenant, created["id"])
    retries = [e for e in events if e["toStatus"] == "retrying"]
    starts = [e for e in events if e["toStatus"] == "running"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    planned = [_at(r["data"]["runAt"]) - _at(r["at"]) for r in retries]
    waited = [_at(s["at"]) - _at(r["at"]) for r, s in zip(retries, starts[1:], strict=True)]
    assert planned[1] > planned[0]
    # Each retry started no earlier than its backoff said, and the waits grew.
    for plan, wait in zip(planned, waited, strict=True):
        assert wait >= plan
    assert waited[1] > waited[0]
    # The next pipeline step received this one's result.
    follow = stack.wait_for(tenant, job["pipeline"]["steps"][1]["id"])
    assert follow["result"] == {"upstream": {"attempt": 3}}


def test_permanent_failure_cancels_the_next_step(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, {"type": "TEST_EXPLODES"})
    job = stack.wait_for(tenant, created["id"])

    assert job["status"] == "failed"
    assert job["attempt"] == 1
    assert job["error"]["type"] == "PermanentError"
    assert job["error"]["message"] == "the input can never work"
    assert "Traceback" in job["error"]["traceback"]
    assert [s["status"] for s in job["pipeline"]["steps"]] == ["failed", "cancelled"]


def test_duplicate_deliveries_run_the_handler_once(
    stack: Stack, tenant: str, tmp_path: Path
) -> None:
    effect = tmp_path / "effect.log"
    created = stack.create(
        tenant, {"type": "TEST_EFFECT", "input": {"effectFile": str(effect), "sleep": 0.5}}
    )
    # The same message again, four times, while the first delivery is still running.
    stack.runtime.dispatcher.send([_delivery(created)] * 4)  # the same task id each time

    job = stack.wait_for(tenant, created["id"])
    _wait_for_skips(stack, tenant, created["id"], 4)

    assert job["status"] == "succeeded"
    assert job["attempt"] == 1
    assert effect.read_text().splitlines() == [f"{created['id']} attempt=1"]
    events = stack.events(tenant, created["id"])
    assert sum(e["toStatus"] == "succeeded" for e in events) == 1


def test_another_tenant_gets_404(stack: Stack, tenant: str) -> None:
    created = stack.create(tenant, README_JOB)
    for path in (f"/v1/jobs/{created['id']}", f"/v1/jobs/{created['id']}/events"):
        response = stack.get("tnt_someone_else", path)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
    listing = stack.get("tnt_someone_else", "/v1/jobs").json()
    assert created["id"] not in {j["id"] for j in listing["jobs"]}


def _delivery(created: dict[str, object]) -> Delivery:
    return Delivery(job_id=str(created["id"]), type=str(created["type"]), queue="default", number=1)


def _wait_for_skips(stack: Stack, tenant: str, job_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        skips = [e for e in stack.events(tenant, job_id) if e["kind"] == "delivery"]
        if len(skips) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {count} skipped deliveries")


def _at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_cancelling_a_workflow_stops_every_step_not_finished(stack: Stack, tenant: str) -> None:
    """Six slow jobs of a map (two at a time) on real workers: a cancel of the workflow
    (its first job's id) cancels the held ones, stops the running ones, and every gate
    after; nothing of it runs afterwards."""
    items = [f"i{n}" for n in range(6)]
    created = stack.create(tenant, {"type": "TEST_FLOW", "input": {"items": items, "sleep": 2}})
    path = f"/v1/jobs/{created['id']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        steps = {s["name"]: s for s in stack.get(tenant, path).json()["workflow"]["steps"]}
        if steps["items"]["jobs"].get("running"):
            break
        time.sleep(0.1)
    cancelled = stack.post(tenant, f"{path}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    last_gate = created["pipeline"]["steps"][-1]["id"]
    assert stack.wait_for(tenant, last_gate, {"cancelled"}, timeout=30)["status"] == "cancelled"
    join = steps["items"]["joinId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = stack.get(tenant, f"/v1/jobs/{join}/children?step=items").json()["children"]
        if all(j["status"] in {"succeeded", "failed", "cancelled"} for j in jobs):
            break
        time.sleep(0.2)
    statuses = [j["status"] for j in jobs]
    assert statuses.count("cancelled") >= 4, statuses  # the held ones at least
    flow = stack.get(tenant, path).json()["workflow"]
    assert flow["status"] == "cancelled"
    assert {s["name"]: s for s in flow["steps"]}["summary"]["jobs"] == {}
    again = stack.post(tenant, f"{path}/cancel")
    assert again.status_code == 200  # a repeat only reads


def test_a_fan_out_over_real_workers_joins_once(stack: Stack, tenant: str) -> None:
    """Twenty children on two worker processes; the join runs once, after the last."""
    items = [f"room_{i:02d}" for i in range(20)]
    created = stack.create(tenant, {"type": "TEST_FAN_OUT", "input": {"items": items}})
    join_id = created["pipeline"]["steps"][1]["id"]
    join = stack.wait_for(tenant, join_id, {"succeeded", "failed", "cancelled"}, timeout=60)
    assert join["status"] == "succeeded", join
    assert [child["item"] for child in join["result"]["children"]] == [i.upper() for i in items]
    starts = [e for e in stack.events(tenant, join_id) if e["toStatus"] == "running"]
    assert len(starts) == 1
