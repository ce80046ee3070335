"""Children spawned by a handler and the join that waits for them (`JobContext.spawn`),
on SQLite and PostgreSQL: the join runs once, after the last child, with their results in
order; a child failing for good cancels it; a superseded attempt spawns nothing.

Inline dispatch runs each ready job in the process that made it ready."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

import orchestrator
from orchestrator import transitions
from orchestrator.context import Spawn
from orchestrator.errors import InvalidInput, JobConflict, JobDefinitionError
from orchestrator.models import Job, JobEvent, utcnow
from orchestrator.runtime import Runtime
from orchestrator.service import JobFilter, NewJob, child_rows
from orchestrator.states import Attempt, JobStatus
from tests.db.conftest import current_runtime, runs


@pytest.fixture
def runtime(inline_runtime: Runtime) -> Runtime:
    return inline_runtime


def _pipeline(runtime: Runtime, head: str) -> tuple[Job, Job, list[Job]]:
    """The spawner, its join, and the children in item order."""
    with runtime.database.session() as session:
        spawner = session.get(Job, head)
        assert spawner is not None
        join = session.scalar(sa.select(Job).where(Job.parent_id == head, Job.join_id.is_(None)))
        assert join is not None
        children = list(
            session.scalars(sa.select(Job).where(Job.join_id == join.id).order_by(Job.item_index))
        )
        return spawner, join, children


def test_the_join_runs_once_after_every_child_with_their_results_in_order(
    runtime: Runtime,
) -> None:
    items = ["a", "b", "c", "d", "e"]
    sent = orchestrator.send_job("TEST_FAN_OUT", {"items": items}, tenant_id="tnt_a")
    spawner, join, children = _pipeline(runtime, sent.job.id)
    assert spawner.status is JobStatus.SUCCEEDED and len(children) == 5
    assert {c.status for c in children} == {JobStatus.SUCCEEDED}
    assert all(c.parent_id == spawner.id and c.tenant_id == "tnt_a" for c in children)
    assert join.status is JobStatus.SUCCEEDED and join.waiting_on == 0
    assert [r["item"] for r in join.result["children"]] == ["A", "B", "C", "D", "E"]
    assert join.result["upstream"] == {"spawned": 5}
    assert children[0].result["upstream"] == {"spawned": 5}  # the spawner's result
    assert runs(runtime, join.id) == 1


def test_a_child_failing_for_good_cancels_the_join(runtime: Runtime) -> None:
    sent = orchestrator.send_job(
        "TEST_FAN_OUT", {"items": ["a", "b", "c"], "failItem": "b"}, tenant_id="tnt_a"
    )
    _, join, children = _pipeline(runtime, sent.job.id)
    assert children[1].status is JobStatus.FAILED
    # The others ran before it, or were cancelled with the join (the first failure fails
    # the join: work for it that has not started is not done).
    assert {children[0].status, children[2].status} <= {JobStatus.SUCCEEDED, JobStatus.CANCELLED}
    assert join.status is JobStatus.CANCELLED and runs(runtime, join.id) == 0


def test_no_children_releases_the_next_step_as_a_line_does(runtime: Runtime) -> None:
    sent = orchestrator.send_job("TEST_FAN_OUT", {"items": []}, tenant_id="tnt_a")
    _, join, children = _pipeline(runtime, sent.job.id)
    assert children == [] and join.status is JobStatus.SUCCEEDED
    assert join.result["children"] == []


def test_spawning_an_unknown_type_fails_the_spawner(runtime: Runtime) -> None:
    sent = orchestrator.send_job(
        "TEST_FAN_OUT", {"items": ["a"], "childType": "NO_SUCH"}, tenant_id="tnt_a"
    )
    spawner, join, children = _pipeline(runtime, sent.job.id)
    assert spawner.status is JobStatus.FAILED and "NO_SUCH" in (spawner.error_message or "")
    assert children == [] and join.status is JobStatus.CANCELLED


def _running_family(runtime: Runtime, children: int) -> tuple[Job, list[Job]]:
    """A join waiting on `children` running children, as a spawner's success leaves them
    once workers claimed the children."""
    service = runtime.service
    later = NewJob(tenant_id="tnt_a", type="TEST_FAN_OUT", input={"items": []}, delay_seconds=3600)
    created = service.create(later)
    spawner = created.details.job
    join = created.details.steps[1]
    rows = _child_rows(runtime, spawner, children)
    for index, row in enumerate(rows):
        row.join_id, row.item_index = join.id, index
        row.status, row.attempt = JobStatus.RUNNING, 1
    columns = [column.key for column in Job.__table__.columns]
    with runtime.database.transaction() as session:
        session.execute(sa.insert(Job), [{c: vars(row).get(c) for c in columns} for row in rows])
        session.execute(sa.update(Job).where(Job.id == join.id).values(waiting_on=children))
    return join, rows


def _child_rows(runtime: Runtime, spawner: Job, count: int) -> list[Job]:
    spawns = [Spawn("TEST_FAN_CHILD", {"item": str(i)}) for i in range(count)]
    return child_rows(runtime.registry, runtime.settings, spawner, spawns, utcnow())


def test_the_last_two_children_finishing_at_once_release_the_join_once(runtime: Runtime) -> None:
    """Two workers record the last two children at the same moment: the join's row lock
    orders the count-downs, and only the one that reaches zero releases it."""
    for _ in range(5):  # several races, each a fresh family
        join, children = _running_family(runtime, 2)
        start = threading.Barrier(2)

        def succeed(child: Job, start: threading.Barrier = start, join: Job = join) -> None:
            start.wait()
            with runtime.database.transaction() as session:
                won = transitions.succeed_in_transaction(
                    session, Attempt(child.id, child.tenant_id, 1), {"ok": 1}, utcnow(),
                    join_id=join.id,
                )  # fmt: skip
            assert won

        threads = [threading.Thread(target=succeed, args=(c,)) for c in children]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        with runtime.database.session() as session:
            after = session.get(Job, join.id)
            released = session.scalar(
                sa.select(sa.func.count()).where(
                    JobEvent.job_id == join.id, JobEvent.to_status == JobStatus.QUEUED
                )
            )
        assert after is not None and after.waiting_on == 0
        assert after.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        assert released == 1


def test_a_superseded_attempt_spawns_nothing_and_counts_for_nothing(runtime: Runtime) -> None:
    join, children = _running_family(runtime, 2)
    stale = Attempt(children[0].id, "tnt_a", 0)  # not the attempt that runs
    extra = _child_rows(runtime, join, 1)
    with runtime.database.transaction() as session:
        won = transitions.succeed_in_transaction(
            session, stale, {}, utcnow() + timedelta(seconds=1), children=extra, join_id=join.id
        )
    assert not won
    with runtime.database.session() as session:
        assert session.get(Job, extra[0].id) is None
        assert session.get(Job, join.id).waiting_on == 2  # type: ignore[union-attr]


def test_cancelling_the_join_cancels_its_children_not_finished(runtime: Runtime) -> None:
    join, children = _running_family(runtime, 3)
    with runtime.database.transaction() as session:  # the last one still waits for a worker
        session.execute(
            sa.update(Job).where(Job.id == children[2].id).values(status=JobStatus.QUEUED)
        )
    assert runtime.service.cancel("tnt_a", join.id).job.status is JobStatus.CANCELLED
    with runtime.database.session() as session:
        after = {c.id: session.get(Job, c.id) for c in children}
    queued = after[children[2].id]
    assert queued is not None and queued.status is JobStatus.CANCELLED
    for running in (after[children[0].id], after[children[1].id]):
        assert running is not None and running.status is JobStatus.RUNNING
        assert running.cancel_requested_at is not None  # its heartbeat stops it


def test_the_pipeline_shows_the_joins_children_by_status(runtime: Runtime) -> None:
    sent = orchestrator.send_job("TEST_FAN_OUT", {"items": ["a", "b"]}, tenant_id="tnt_a")
    details = orchestrator.get_job(sent.job.id, tenant_id="tnt_a")
    join = details.steps[1]
    assert details.children == {join.id: {"succeeded": 2}}
    child = orchestrator.get_job(
        runtime.service.list_jobs("tnt_a", JobFilter(type="TEST_FAN_CHILD")).jobs[0].id,
        tenant_id="tnt_a",
    )
    assert child.job.join_id == join.id and child.job.parent_id == sent.job.id


def test_a_join_that_allows_every_failure_runs_and_sees_how_each_child_ended(
    runtime: Runtime,
) -> None:
    sent = orchestrator.send_job(
        "TEST_FAN_OUT_ALL", {"items": ["a", "b", "c"], "failItems": ["a", "c"]}, tenant_id="tnt_a"
    )
    _, join, _ = _pipeline(runtime, sent.job.id)
    assert join.status is JobStatus.SUCCEEDED and join.children_failed == 2
    ended = [(c["status"], c["result"]) for c in join.result["children"]]
    assert ended[1] == ("succeeded", {"item": "B", "upstream": {"spawned": 3}})
    assert [status for status, _ in ended] == ["failed", "succeeded", "failed"]
    assert "item a cannot be done" in join.result["children"][0]["error"]


@pytest.mark.parametrize(("failing", "joins"), [(["b"], True), (["a", "b"], False)])
def test_a_join_that_allows_one_failure_runs_with_one_not_two(
    runtime: Runtime, failing: list[str], joins: bool
) -> None:
    sent = orchestrator.send_job(
        "TEST_FAN_OUT_ONE", {"items": ["a", "b", "c"], "failItems": failing}, tenant_id="tnt_a"
    )
    _, join, _ = _pipeline(runtime, sent.job.id)
    if joins:
        assert join.status is JobStatus.SUCCEEDED
        upstream = {"spawned": 3}
        assert join.result["children"] == [
            {"item": "A", "upstream": upstream}, None, {"item": "C", "upstream": upstream}
        ]  # fmt: skip
    else:
        assert join.status is JobStatus.CANCELLED and runs(runtime, join.id) == 0


def test_allow_failures_is_a_count_or_all() -> None:
    from orchestrator.errors import JobDefinitionError  # noqa: PLC0415
    from orchestrator.registry import Registry, define_job  # noqa: PLC0415

    for wrong in (-1, "some", 1.5):
        with pytest.raises(JobDefinitionError, match="allow_failures"):
            define_job("X_BAD", allow_failures=wrong, target=Registry())(lambda ctx, data: None)  # type: ignore[arg-type]


def test_retries_inside_a_fan_out_are_refused_until_supported(runtime: Runtime) -> None:
    """A child's end was counted by its join, and a join runs only after its children:
    retrying either by hand would break the count."""
    sent = orchestrator.send_job(
        "TEST_FAN_OUT", {"items": ["a", "b"], "failItem": "a"}, tenant_id="tnt_a"
    )
    _, join, children = _pipeline(runtime, sent.job.id)
    assert join.status is JobStatus.CANCELLED
    with pytest.raises(JobConflict, match="child of join"):
        orchestrator.retry_job(children[0].id, tenant_id="tnt_a")
    with pytest.raises(JobConflict, match="did not succeed"):
        orchestrator.retry_job(join.id, tenant_id="tnt_a")
    assert orchestrator.retry_failed_jobs(tenant_id="tnt_a") == []  # skipped, not broken


def test_a_child_cannot_spawn_children_of_its_own_yet(runtime: Runtime) -> None:
    _, children = _running_family(runtime, 1)
    with pytest.raises(JobDefinitionError, match="cannot spawn"):
        nested = [Spawn("TEST_FAN_CHILD", {"item": "x"})]
        child_rows(runtime.registry, runtime.settings, children[0], nested, utcnow())


def test_a_spawn_with_a_bad_input_fails_the_spawner_naming_the_child(runtime: Runtime) -> None:
    _, children = _running_family(runtime, 1)
    spawner = runtime.service.get("tnt_a", children[0].parent_id or "").job
    bad = [Spawn("TEST_FAN_CHILD", {"item": "ok"}), Spawn("TEST_FAN_CHILD", {"nope": 1})]
    with pytest.raises(InvalidInput) as invalid:
        child_rows(runtime.registry, runtime.settings, spawner, bad, utcnow())
    assert [e.field for e in invalid.value.errors] == ["spawn[1] TEST_FAN_CHILD input.item"]


def test_a_large_fan_out_inline_does_not_nest_a_run_per_child(database_url: str) -> None:
    """Inline dispatch with a small window: each child's success makes the next ready; the
    pump already running fills again rather than nesting one run per child."""
    with current_runtime(database_url, dispatch_window=2) as built:
        items = [str(i) for i in range(300)]
        sent = orchestrator.send_job("TEST_FAN_OUT", {"items": items}, tenant_id="tnt_a")
        _, join, children = _pipeline(built, sent.job.id)
        assert join.status is JobStatus.SUCCEEDED and len(children) == 300


def test_a_spawner_whose_join_was_cancelled_meanwhile_records_no_children(
    runtime: Runtime,
) -> None:
    later = NewJob(tenant_id="tnt_a", type="TEST_FAN_OUT", input={"items": []}, delay_seconds=60)
    created = runtime.service.create(later).details
    spawner, join = created.job, created.steps[1]
    with runtime.database.transaction() as session:  # a worker runs it...
        session.execute(
            sa.update(Job).where(Job.id == spawner.id).values(status=JobStatus.RUNNING, attempt=1)
        )
    with runtime.database.transaction() as session:  # ...while its join is cancelled
        transitions.cancel(session, session.get(Job, join.id), utcnow())  # type: ignore[arg-type]
    rows = _child_rows(runtime, spawner, 2)
    with runtime.database.transaction() as session:
        won = transitions.succeed_in_transaction(
            session, Attempt(spawner.id, "tnt_a", 1), {}, utcnow(), children=rows
        )
    assert won
    with runtime.database.session() as session:
        assert session.get(Job, rows[0].id) is None
        assert session.get(Job, join.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
