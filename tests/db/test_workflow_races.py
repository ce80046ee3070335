"""Workflows at the edges, on SQLite and PostgreSQL, step by step with a runner (no
dispatch): a held job cancelled (the map's cap holds; no deadlock with a sibling that
releases at the same moment), a cancel while a gate runs, a cancel after a tolerated
failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import transitions, workflows
from orchestrator.db import Database
from orchestrator.models import Job, utcnow
from orchestrator.registry import load_job_modules
from orchestrator.runner import Runner
from orchestrator.service import JobService, NewJob
from orchestrator.settings import load_settings
from orchestrator.states import Attempt, JobStatus
from tests.recording import recording_service

Env = tuple[Database, JobService, Runner]


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    database = Database(database_url)
    settings = load_settings(env="development", database_url=database_url)
    registry = load_job_modules(("tests.jobtypes",))
    service = recording_service(database, registry, settings)
    yield database, service, Runner(database, registry, settings, worker="w-test")
    database.dispose()


def _gates(database: Database, head: str) -> list[Job]:
    with database.session() as session:
        query = sa.select(Job).where(Job.pipeline_id == head).order_by(Job.step_index)
        return list(session.scalars(query))


def _items(database: Database, join_id: str) -> list[Job]:
    with database.session() as session:
        query = sa.select(Job).where(Job.join_id == join_id, Job.step == "items")
        return list(session.scalars(query.order_by(Job.item_index)))


def _to_the_map(env: Env, flow: str, items: list[str], **extra: Any) -> tuple[str, list[Job]]:
    """A run with its map spawned: `prepare` done, concurrency 2, the rest held."""
    database, service, runner = env
    request = NewJob(tenant_id="t1", type=flow, input={"items": items, **extra})
    head = service.create(request).details.job.id
    gates = _gates(database, head)
    runner.run(gates[0].id)  # spawns prepare
    with database.session() as session:
        prepare = session.scalar(sa.select(Job).where(Job.join_id == gates[1].id))
    assert prepare is not None
    runner.run(prepare.id)
    runner.run(gates[1].id)  # spawns the map
    return head, gates


def _together(**calls: Any) -> dict[str, BaseException]:
    """Run each call in a thread of its own; what each raised, by name."""
    errors: dict[str, BaseException] = {}

    def run(name: str) -> None:
        try:
            calls[name]()
        except Exception as exc:
            errors[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_cancelling_a_held_job_releases_no_other_past_the_cap(env: Env) -> None:
    database, service, _ = env
    _, gates = _to_the_map(env, "TEST_FLOW_TOLERANT", list("abcde"))
    jobs = _items(database, gates[2].id)
    assert [j.status for j in jobs] == [JobStatus.QUEUED] * 2 + [JobStatus.WAITING] * 3
    service.cancel("t1", jobs[4].id)  # held: it had no slot to give
    assert [j.status for j in _items(database, gates[2].id)] == [
        *[JobStatus.QUEUED] * 2,
        *[JobStatus.WAITING] * 2,
        JobStatus.CANCELLED,
    ]


def test_a_cancel_after_a_tolerated_failure_answers_with_the_cancelled_run(env: Env) -> None:
    database, service, runner = env
    head, gates = _to_the_map(env, "TEST_FLOW_TOLERANT", list("abcde"), failItems=["a"])
    runner.run(_items(database, gates[2].id)[0].id)  # fails, and one may
    details = service.cancel("t1", head)
    assert details.workflow is not None and details.workflow.status == "cancelled"


def test_a_held_job_cancelled_while_a_sibling_releases_does_not_deadlock(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel holds the held job's row and waits for the join's; the sibling's
    success holds the join's and looks for a held job to release: it skips the locked
    one, and both commit."""
    database, service, _ = env
    if database.dialect != "postgresql":
        pytest.skip("SQLite has no row locks: one writer at a time")
    _, gates = _to_the_map(env, "TEST_FLOW_TOLERANT", list("abcde"))
    jobs = _items(database, gates[2].id)
    assert transitions.claim_alone(database, jobs[0].id, worker="w", lease_seconds=60, now=utcnow())
    cancel_holds_the_child = threading.Event()
    child_lost = transitions._child_lost

    def slow_child_lost(*args: Any, **kwargs: Any) -> None:
        cancel_holds_the_child.set()
        time.sleep(1.0)  # the sibling takes the join's lock meanwhile
        child_lost(*args, **kwargs)

    monkeypatch.setattr(transitions, "_child_lost", slow_child_lost)

    def sibling_succeeds() -> None:
        cancel_holds_the_child.wait(10)
        with database.transaction() as session:
            run = Attempt(jobs[0].id, "t1", 1)
            transitions.succeed_in_transaction(
                session, run, {"item": "A"}, utcnow(), join_id=gates[2].id, step="items"
            )

    errors = _together(cancel=lambda: service.cancel("t1", jobs[2].id), succeed=sibling_succeeds)
    assert not errors, {name: repr(exc)[:300] for name, exc in errors.items()}
    statuses = [j.status for j in _items(database, gates[2].id)]
    assert statuses[2] is JobStatus.CANCELLED
    assert statuses[3] is JobStatus.QUEUED  # released in the cancelled one's place


def test_a_cancel_while_a_gate_runs_stops_what_it_would_spawn(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, service, runner = env
    request = NewJob(tenant_id="t1", type="TEST_FLOW", input={"items": ["a"]})
    head = service.create(request).details.job.id
    spawn_step = workflows._spawn_step
    answered: dict[str, str] = {}

    def cancel_first(*args: Any, **kwargs: Any) -> int:
        if not answered:
            details = service.cancel("t1", head)
            answered["status"] = details.workflow.status if details.workflow else "?"
        return spawn_step(*args, **kwargs)

    monkeypatch.setattr(workflows, "_spawn_step", cancel_first)
    runner.run(head)
    gates = _gates(database, head)
    assert answered == {"status": "cancelled"}
    assert [g.status for g in gates[1:]] == [JobStatus.CANCELLED] * 3
    with database.session() as session:
        spawned = session.scalar(sa.select(sa.func.count()).where(Job.join_id == gates[1].id))
    assert spawned == 0
