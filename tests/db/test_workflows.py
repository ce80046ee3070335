"""Workflows (`define_workflow`) on SQLite and PostgreSQL, with inline dispatch: steps in
dependency order, a map's jobs in item order and at most `concurrency` at once, results
read downstream by step name, failure policies, cancel, and canvases.

The definitions are in tests/jobtypes.py: TEST_FLOW is prepare -> items (a map over
prepare's result, concurrency 2) -> summary."""

from __future__ import annotations

from collections import Counter

import pytest
import sqlalchemy as sa

import orchestrator
from orchestrator.models import Job, JobEvent
from orchestrator.registry import Registry
from orchestrator.runtime import Runtime
from orchestrator.states import JobStatus
from orchestrator.workflows import define_workflow, map_step, step
from tests.db.conftest import runs


@pytest.fixture
def runtime(inline_runtime: Runtime) -> Runtime:
    return inline_runtime


def _rows(runtime: Runtime, head: str) -> tuple[list[Job], dict[str, list[Job]]]:
    """The run's gates in order, and each step's jobs in item order."""
    with runtime.database.session() as session:
        gates = list(
            session.scalars(sa.select(Job).where(Job.pipeline_id == head).order_by(Job.step_index))
        )
        children = session.scalars(
            sa.select(Job)
            .where(Job.join_id.in_([g.id for g in gates]))
            .order_by(Job.join_id, Job.item_index)
        )
        steps: dict[str, list[Job]] = {}
        for child in children:
            steps.setdefault(str(child.step), []).append(child)
        return gates, steps


def _released_by_a_sibling(runtime: Runtime, jobs: list[Job]) -> int:
    with runtime.database.session() as session:
        return (
            session.scalar(
                sa.select(sa.func.count()).where(
                    JobEvent.job_id.in_([j.id for j in jobs]),
                    JobEvent.message == "a sibling finished",
                )
            )
            or 0
        )


def test_a_workflow_runs_its_steps_in_order_and_its_join_reads_them_by_name(
    runtime: Runtime,
) -> None:
    items = ["a", "b", "c", "d", "e"]
    sent = orchestrator.send_job("TEST_FLOW", {"items": items}, tenant_id="tnt_a")
    gates, steps = _rows(runtime, sent.job.id)
    assert [g.step for g in gates] == ["#0", "#1", "#2", "#3"]
    assert {g.status for g in gates} == {JobStatus.SUCCEEDED}
    assert sorted(steps) == ["items", "prepare", "summary"]
    assert [len(steps[name]) for name in ("prepare", "items", "summary")] == [1, 5, 1]
    summary = steps["summary"][0]
    assert summary.status is JobStatus.SUCCEEDED
    assert summary.result == {
        "prepared": {"items": items, "count": 5},
        "items": ["A", "B", "C", "D", "E"],
        "failed": 0,
    }
    # The last gate's result: the final stage's results, by step name.
    assert gates[-1].result == {"summary": summary.result}
    assert all(job.tenant_id == "tnt_a" for jobs in steps.values() for job in jobs)


def test_a_map_runs_at_most_its_concurrency_and_releases_the_rest_in_order(
    runtime: Runtime,
) -> None:
    items = [f"i{n}" for n in range(6)]
    sent = orchestrator.send_job("TEST_FLOW", {"items": items}, tenant_id="tnt_a")
    _, steps = _rows(runtime, sent.job.id)
    mapped = steps["items"]
    assert [j.input["item"] for j in mapped] == items
    assert {j.status for j in mapped} == {JobStatus.SUCCEEDED}
    # Concurrency 2: the first two were ready at once; each other one was held, then
    # released by a sibling's end, in item order.
    assert _released_by_a_sibling(runtime, mapped) == 4
    started = sorted(mapped, key=lambda j: j.started_at or j.created_at)
    assert [j.input["item"] for j in started][2:] == items[2:]


def test_a_step_failing_stops_the_workflow_and_cancels_what_had_not_run(
    runtime: Runtime,
) -> None:
    items = ["a", "b", "c", "d"]
    sent = orchestrator.send_job(
        "TEST_FLOW", {"items": items, "failItems": ["b"]}, tenant_id="tnt_a"
    )
    gates, steps = _rows(runtime, sent.job.id)
    statuses = Counter(j.status for j in steps["items"])
    assert statuses[JobStatus.FAILED] == 1
    assert JobStatus.WAITING not in statuses and JobStatus.QUEUED not in statuses
    assert [g.status for g in gates][2:] == [JobStatus.CANCELLED, JobStatus.CANCELLED]
    assert "summary" not in steps


def test_a_tolerant_map_goes_on_with_one_failure_and_not_two(runtime: Runtime) -> None:
    one = orchestrator.send_job(
        "TEST_FLOW_TOLERANT", {"items": ["a", "b", "c"], "failItems": ["b"]}, tenant_id="tnt_a"
    )
    _, steps = _rows(runtime, one.job.id)
    assert steps["summary"][0].result["items"] == ["A", None, "C"]
    assert steps["summary"][0].result["failed"] == 1

    two = orchestrator.send_job(
        "TEST_FLOW_TOLERANT", {"items": ["a", "b", "c"], "failItems": ["a", "b"]}, tenant_id="tnt_a"
    )
    gates, steps = _rows(runtime, two.job.id)
    assert gates[2].status is JobStatus.FAILED
    assert gates[2].error_message == "step items: 2 job(s) failed, 1 allowed"
    assert gates[3].status is JobStatus.CANCELLED and "summary" not in steps


def test_an_empty_map_goes_straight_on(runtime: Runtime) -> None:
    sent = orchestrator.send_job("TEST_FLOW", {"items": []}, tenant_id="tnt_a")
    gates, steps = _rows(runtime, sent.job.id)
    assert {g.status for g in gates} == {JobStatus.SUCCEEDED}
    assert "items" not in steps
    assert steps["summary"][0].result["items"] == []


def test_a_chord_runs_its_header_side_by_side_then_its_body_once(runtime: Runtime) -> None:
    sent = orchestrator.send_job("TEST_CANVAS", {}, tenant_id="tnt_a")
    gates, steps = _rows(runtime, sent.job.id)
    assert [g.status for g in gates] == [JobStatus.SUCCEEDED] * 3
    # The header's two jobs were spawned together, by the first gate.
    assert {j.parent_id for j in steps["TEST_FLOW_ITEM"] + steps["TEST_FLOW_ITEM-2"]} == {
        gates[0].id
    }
    assert steps["TEST_CANVAS_SUMMARY"][0].result == {
        "first": {"item": "A"},
        "second": {"item": "B"},
    }


def test_a_workflow_input_is_checked_as_a_job_input_is(runtime: Runtime) -> None:
    with pytest.raises(orchestrator.errors.InvalidInput) as caught:
        orchestrator.send_job("TEST_FLOW", {"items": "not a list"}, tenant_id="tnt_a")
    assert caught.value.errors[0].field == "input.items"


def test_retrying_a_failed_step_reruns_it_and_what_was_cancelled_then_goes_on(
    runtime: Runtime,
) -> None:
    items = ["a", "b", "c", "d", "e"]
    sent = orchestrator.send_job(
        "TEST_FLOW", {"items": items, "failOnce": ["b"]}, tenant_id="tnt_a"
    )
    gates, steps = _rows(runtime, sent.job.id)
    failed = next(j for j in steps["items"] if j.status is JobStatus.FAILED)
    assert gates[2].status is JobStatus.CANCELLED and "summary" not in steps
    not_succeeded = {j.id for j in steps["items"] if j.status is not JobStatus.SUCCEEDED}

    orchestrator.retry_job(failed.id, tenant_id="tnt_a")
    gates, steps = _rows(runtime, sent.job.id)
    assert {g.status for g in gates} == {JobStatus.SUCCEEDED}
    assert steps["summary"][0].result["items"] == ["A", "B", "C", "D", "E"]
    # Only what had not succeeded ran again; the rest, and the step before, ran once.
    assert {j.id for j in steps["items"] if j.requeues} == not_succeeded
    assert runs(runtime, failed.id) == 2
    assert all(runs(runtime, j.id) == 1 for j in steps["items"] if j.id != failed.id)
    assert runs(runtime, steps["prepare"][0].id) == 1
    assert runs(runtime, gates[2].id) == 1


def test_retrying_a_workflow_whose_gate_failed_reruns_the_failed_jobs(
    runtime: Runtime,
) -> None:
    sent = orchestrator.send_job(
        "TEST_FLOW_TOLERANT", {"items": ["a", "b", "c"], "failOnce": ["a", "b"]}, tenant_id="tnt_a"
    )
    gates, _ = _rows(runtime, sent.job.id)
    assert gates[2].status is JobStatus.FAILED  # two failed, one allowed
    orchestrator.retry_job(sent.job.id, tenant_id="tnt_a")  # the workflow, by its id
    gates, steps = _rows(runtime, sent.job.id)
    assert {g.status for g in gates} == {JobStatus.SUCCEEDED}
    assert steps["summary"][0].result == {
        "prepared": {"items": ["a", "b", "c"], "count": 3},
        "items": ["A", "B", "C"],
        "failed": 0,
    }


def test_a_workflow_that_succeeded_is_not_retried(runtime: Runtime) -> None:
    sent = orchestrator.send_job("TEST_FLOW", {"items": ["a"]}, tenant_id="tnt_a")
    with pytest.raises(orchestrator.errors.JobConflict, match="is succeeded"):
        orchestrator.retry_job(sent.job.id, tenant_id="tnt_a")


def _redefine_flow(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, *, renamed: bool = False
) -> None:
    """A deploy that changes TEST_FLOW, with the same name and input: one stage, not
    three; or (`renamed`) the same three stages, its map step renamed."""
    known = runtime.registry
    changed = Registry()
    for name in ("TEST_FLOW_PREPARE", "TEST_FLOW_ITEM", "TEST_FLOW_SUMMARY"):
        changed.add(known.get(name))
    steps = [step("prepare", "TEST_FLOW_PREPARE")]
    if renamed:
        steps += [
            map_step(
                "things", "TEST_FLOW_ITEM", over="prepare.items", item="item", after=["prepare"]
            ),
            step("summary", "TEST_FLOW_SUMMARY", after=["things"]),
        ]
    define_workflow(
        "TEST_FLOW", input=known.get("TEST_FLOW").input_model, steps=steps, target=changed
    )
    monkeypatch.setitem(known._types, "TEST_FLOW", changed.get("TEST_FLOW"))


def test_a_run_whose_workflow_changed_since_it_was_sent_fails_at_its_next_gate(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's gates were made for the old stages: its next gate fails for good, naming
    the change, rather than spawning the new definition's steps into the old run's places."""
    sent = orchestrator.schedule_job("TEST_FLOW", {"items": ["a"]}, tenant_id="tnt_a", delay=3600)
    _redefine_flow(runtime, monkeypatch)
    with runtime.database.transaction() as session:  # its time comes
        now = runtime.service.clock()
        session.execute(
            sa.update(Job).where(Job.id == sent.job.id).values(run_at=now, ready_since=now)
        )
    runtime.runner.run(sent.job.id)
    gates, steps = _rows(runtime, sent.job.id)
    assert gates[0].status is JobStatus.FAILED and steps == {}
    assert gates[0].error_message == (
        "workflow TEST_FLOW changed since this run started (4 gates, now 2): send it again"
    )
    assert {g.status for g in gates[1:]} == {JobStatus.CANCELLED}


def test_a_run_whose_workflow_changed_is_not_retried_by_hand(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry by hand would rerun the old stage's jobs under a definition that no longer
    has them: it is refused with the reason (a 409 over HTTP), and nothing is changed."""
    sent = orchestrator.send_job(
        "TEST_FLOW", {"items": ["a", "b"], "failOnce": ["b"]}, tenant_id="tnt_a"
    )
    gates, steps = _rows(runtime, sent.job.id)
    assert gates[2].status is JobStatus.CANCELLED
    failed = next(j for j in steps["items"] if j.status is JobStatus.FAILED)
    before = _states(runtime, sent.job.id)
    _redefine_flow(runtime, monkeypatch)
    for target in (failed.id, sent.job.id):
        with pytest.raises(orchestrator.errors.JobConflict) as refused:
            orchestrator.retry_job(target, tenant_id="tnt_a")
        assert str(refused.value) == (
            "workflow TEST_FLOW changed since this run started (4 gates, now 2): send it again"
        )
    assert _states(runtime, sent.job.id) == before


def test_a_run_whose_step_was_renamed_is_not_retried_by_hand(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many stages as before, so the gates agree; the failed job's step is gone (the
    rerun looked it up and failed with a KeyError: a 500)."""
    sent = orchestrator.send_job(
        "TEST_FLOW", {"items": ["a", "b"], "failOnce": ["b"]}, tenant_id="tnt_a"
    )
    failed = next(j for j in _rows(runtime, sent.job.id)[1]["items"] if j.status.value == "failed")
    before = _states(runtime, sent.job.id)
    _redefine_flow(runtime, monkeypatch, renamed=True)
    with pytest.raises(orchestrator.errors.JobConflict) as refused:
        orchestrator.retry_job(failed.id, tenant_id="tnt_a")
    assert str(refused.value) == (
        "workflow TEST_FLOW changed since this run started (its step 'items' is gone): "
        "send it again"
    )
    assert _states(runtime, sent.job.id) == before


def _states(runtime: Runtime, head: str) -> list[tuple[str, str, int]]:
    gates, steps = _rows(runtime, head)
    jobs = gates + [job for each in steps.values() for job in each]
    return [(job.id, job.status.value, job.requeues) for job in jobs]
