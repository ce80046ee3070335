"""The transition module on SQLite and PostgreSQL: claims race, fences hold, events agree."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from orchestrator import JobContext, RetryPolicy, transitions
from orchestrator import transition_statements as statements
from orchestrator.admission import running_by_tenant
from orchestrator.db import Database
from orchestrator.maintenance import Maintenance
from orchestrator.metrics import DatabaseGauges
from orchestrator.models import Job, JobEvent, WindowEntry, utcnow
from orchestrator.registry import Registry, define_job, load_job_modules
from orchestrator.runner import Cancelled, Failed, RetryLater, Runner, Skipped, Succeeded
from orchestrator.service import JobFilter, JobService, NewJob
from orchestrator.settings import load_settings
from orchestrator.states import Attempt, ErrorInfo, JobStatus
from tests.recording import recorded, recording_service


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def service(database: Database) -> JobService:
    settings = load_settings(env="development", database_url=database.url)
    registry = load_job_modules(("tests.jobtypes",))
    return recording_service(database, registry, settings)


def _pipeline(service: JobService, tenant: str = "t1") -> list[Job]:
    return service.create(NewJob(tenant_id=tenant, type="TEST_FLAKY")).details.steps


def _crowd(service: JobService) -> None:
    """Enough of tenant t1's jobs for a planner to choose between an index and a scan."""
    service.create_batch([NewJob(tenant_id="t1", type="TEST_FLAKY") for _ in range(400)])


def _claim(database: Database, job_id: str, worker: str = "w1") -> Job | None:
    """A claim as the workers make it: one statement (autocommit on PostgreSQL)."""
    started = transitions.claim_alone(
        database, job_id, worker=worker, lease_seconds=60, now=utcnow()
    )
    return started.job if started else None


def _status(database: Database, job_id: str) -> tuple[JobStatus, int]:
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.attempt


def test_create_records_the_pipeline_and_dispatches_after_commit(
    service: JobService, database: Database
) -> None:
    steps = _pipeline(service)
    assert [s.status for s in steps] == [JobStatus.QUEUED, JobStatus.WAITING]
    assert steps[1].parent_id == steps[0].id
    # Ready (its outbox entry), admitted into the window and sent once committed; the
    # step after it waits, not ready.
    assert steps[0].ready_since is not None and steps[1].ready_since is None
    assert recorded(service).job_ids() == [steps[0].id]
    with database.session() as session:
        [entry] = session.scalars(sa.select(WindowEntry)).all()
    assert (entry.job_id, entry.attempt) == (steps[0].id, 0)
    assert recorded(service).sent[0][0].delivery_id == f"{steps[0].id}-d{entry.id}"


def test_concurrent_claims_have_one_winner(service: JobService, database: Database) -> None:
    job_id = _pipeline(service)[0].id
    barrier = threading.Barrier(8)
    winners: list[Job] = []

    def contend() -> None:
        barrier.wait()
        claimed = _claim(database, job_id, worker=threading.current_thread().name)
        if claimed is not None:
            winners.append(claimed)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert _status(database, job_id) == (JobStatus.RUNNING, 1)


def test_stale_attempt_cannot_write(service: JobService, database: Database) -> None:
    job_id = _pipeline(service)[0].id
    first = _claim(database, job_id)
    assert first is not None
    stale = Attempt(job_id, "t1", first.attempt)
    now = utcnow()
    with database.transaction() as session:
        assert transitions.schedule_retry(session, stale, ErrorInfo("E", "boom"), now, run_at=now)
    second = _claim(database, job_id, worker="w2")
    assert second is not None and second.attempt == 2

    # The worker's own path (on PostgreSQL, the driver's connection) is fenced too.
    assert not transitions.succeed_alone(database, stale, {"late": True}, utcnow())
    with database.transaction() as session:
        assert not transitions.succeed(session, stale, {"late": True}, utcnow())
        assert not transitions.fail(session, stale, ErrorInfo("E", "late"), utcnow())
        assert not transitions.report_progress(session, stale, 0.9, "late", utcnow())
    assert _status(database, job_id) == (JobStatus.RUNNING, 2)
    with database.transaction() as session:
        assert transitions.succeed(session, Attempt(job_id, "t1", 2), {"ok": 1}, utcnow())
    assert _status(database, job_id) == (JobStatus.SUCCEEDED, 2)


def test_retry_not_claimable_before_it_is_due(service: JobService, database: Database) -> None:
    job_id = _pipeline(service)[0].id
    claimed = _claim(database, job_id)
    assert claimed is not None
    now = utcnow()
    with database.transaction() as session:
        later = now + timedelta(hours=1)
        transitions.schedule_retry(
            session, Attempt(job_id, "t1", 1), ErrorInfo("E", "x"), now, run_at=later
        )
    assert _claim(database, job_id) is None
    assert _status(database, job_id) == (JobStatus.RETRYING, 1)


def test_success_releases_next_step_and_failure_cancels_it(
    service: JobService, database: Database
) -> None:
    ok_head, ok_next = _pipeline(service)
    bad_head, bad_next = _pipeline(service)
    for head in (ok_head, bad_head):
        assert _claim(database, head.id) is not None
    with database.transaction() as session:
        transitions.succeed(session, Attempt(ok_head.id, "t1", 1), {"r": 1}, utcnow())
        transitions.fail(session, Attempt(bad_head.id, "t1", 1), ErrorInfo("E", "no"), utcnow())
    assert _status(database, ok_next.id) == (JobStatus.QUEUED, 0)
    assert _status(database, bad_next.id) == (JobStatus.CANCELLED, 0)


def test_a_steps_successor_is_found_through_its_parent(
    service: JobService, database: Database
) -> None:
    """A step's success finds its successor by the parent's index, not by scanning every
    waiting (or queued) job: without the index a success cost 7 ms with 20,000 pipelines
    waiting, and grew with their number."""
    _crowd(service)
    head = _pipeline(service)[0]
    with database.transaction() as session:
        session.execute(sa.text("ANALYZE"))
    released = (
        statements.succeed_postgresql(True)
        if database.dialect == "postgresql"
        else statements.release_next_step()
    )
    dispatched = sa.select(Job).where(Job.parent_id == head.id, Job.status == JobStatus.QUEUED)
    for statement in (released, dispatched):
        plan = _plan(database, statement, {"b_job_id": head.id, "b_attempt": 1})
        assert "ix_jobs_parent_id" in plan, plan


def test_a_job_admitted_again_is_sent_under_a_new_name(
    service: JobService, database: Database
) -> None:
    """Cloud Tasks keeps a task's name reserved for an hour after it ran: a job whose
    delivery went missing, admitted again, must not look like a repeat of the first send."""
    job_id = _pipeline(service)[0].id
    [first] = recorded(service).sent[-1]
    service.admission.take_back([first.number])
    assert service.admission.pump() == 1
    [again] = recorded(service).sent[-1]
    assert again.job_id == job_id and again.delivery_id != first.delivery_id


def test_reads_by_status_leave_archived_history_out(
    service: JobService, database: Database
) -> None:
    """Dead letters, counts per status and the running limit's count read an index that
    holds no archived job: a tenant's archived history does not slow them down."""
    _crowd(service)
    with database.transaction() as session:  # archived history, failed jobs among it
        session.execute(
            sa.update(Job).values(status=JobStatus.FAILED, attempt=1, archived_at=utcnow())
        )
    dead = _pipeline(service)[0]
    with database.transaction() as session:
        session.execute(
            sa.update(Job).where(Job.id == dead.id).values(status=JobStatus.FAILED, attempt=1)
        )
        session.execute(sa.text("ANALYZE"))

    def read() -> None:
        page = service.list_jobs("t1", JobFilter(status=JobStatus.FAILED))
        assert [job.id for job in page.jobs] == [dead.id]
        assert service.status_counts("t1") == {"failed": 1, "waiting": 1}
        with database.session() as session:  # what admission counts as running
            assert running_by_tenant(session)["t1"] == 0

    plans = [plan for plan in _plans_of(database, read) if "jobs" in plan]
    listed, counted, running = plans[0], plans[1], plans[2]
    for plan in (listed, counted):
        assert "ix_jobs_tenant_id_status_id" in plan, plan
    # the running count reads the live jobs' index: it holds no archived job either
    assert "ix_jobs_status_updated_at" in running, running


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_hot_statements_find_their_job_by_primary_key(
    service: JobService, database: Database
) -> None:
    """The plan PostgreSQL caches for a claim and a success reads the job by its primary
    key, whatever the statistics say. Their states are parameters, not constants in the
    SQL: with `status = 'running'` written into the success, and statistics taken while no
    job ran, the planner read it through the live-states index, whose dead entries grow
    with every run (worker throughput fell from 0.70x to 0.51x of raw Celery's)."""
    _crowd(service)
    with database.transaction() as session:
        session.execute(sa.text("ANALYZE"))  # no job running: 'running' looks rare
    for statement in (
        statements.claim_postgresql(False),
        statements.succeed_postgresql(False),
        statements.succeed_postgresql(True),
    ):
        lines = _generic_plan(database, statement).splitlines()
        update = next(n for n, line in enumerate(lines) if "Update on jobs" in line)
        assert "using pk_jobs on jobs" in lines[update + 1], "\n".join(lines)


def _generic_plan(database: Database, statement: sa.Executable) -> str:
    """The plan PostgreSQL keeps for `statement` prepared (what psycopg does with the hot
    statements after a few runs): planned without its parameters' values."""
    dialect = sa.dialects.postgresql.psycopg.dialect(paramstyle="numeric_dollar")
    compiled = statement.compile(dialect=dialect)
    nulls = ", ".join(["NULL"] * len(compiled.positiontup or ()))
    with database.engine.connect() as connection:
        # (No finally: after a failure the transaction refuses DEALLOCATE too, which would
        # hide the error; the fixture's dispose closes the connection and the statement.)
        connection.exec_driver_sql(f"PREPARE hot AS {compiled}")
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE hot({nulls})").all()
        connection.exec_driver_sql("DEALLOCATE hot")
    return "\n".join(row[0] for row in rows)


def _plan(database: Database, statement: sa.Executable, params: dict[str, object]) -> str:
    """The query plan the database picks for `statement` (unset parameters as NULL)."""
    compiled = statement.compile(dialect=database.engine.dialect)
    unset = {name: None for name, value in compiled.params.items() if value is None}
    values = compiled.construct_params(unset | params)
    bound: object = (
        tuple(values[name] for name in compiled.positiontup or ())
        if compiled.positional
        else values
    )
    return _explain(database, str(compiled), bound)


def _plans_of(database: Database, action: Callable[[], None]) -> list[str]:
    """The plans of the statements `action` runs (this thread's: the service's background
    marks may write meanwhile)."""
    ran: list[tuple[str, object]] = []
    me = threading.get_ident()

    def record(*args: object) -> None:
        if threading.get_ident() == me:
            ran.append((str(args[2]), args[3]))

    sa.event.listen(database.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", record)
    return [_explain(database, sql, params) for sql, params in ran]


def _explain(database: Database, sql: str, params: object) -> str:
    explain = "EXPLAIN" if database.dialect == "postgresql" else "EXPLAIN QUERY PLAN"
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql(f"{explain} {sql}", params).all()
    return "\n".join(" ".join(map(str, row)) for row in rows)


def test_every_transition_leaves_an_event(service: JobService, database: Database) -> None:
    head, nxt = _pipeline(service)
    _claim(database, head.id)
    with database.transaction() as session:
        transitions.succeed(session, Attempt(head.id, "t1", 1), None, utcnow())
    with database.session() as session:
        rows = session.execute(
            sa.select(JobEvent.job_id, JobEvent.from_status, JobEvent.to_status)
            .where(JobEvent.kind == "transition")
            .order_by(JobEvent.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        (head.id, None, JobStatus.QUEUED),
        (nxt.id, None, JobStatus.WAITING),
        (head.id, JobStatus.QUEUED, JobStatus.RUNNING),
        (head.id, JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (nxt.id, JobStatus.WAITING, JobStatus.QUEUED),
    ]


def test_a_claim_hands_over_the_upstream_result(service: JobService, database: Database) -> None:
    head, nxt = _pipeline(service)
    _claim(database, head.id)
    assert transitions.succeed_alone(database, Attempt(head.id, "t1", 1), {"found": 3}, utcnow())
    started = transitions.claim_alone(database, nxt.id, worker="w1", lease_seconds=60, now=utcnow())
    assert started is not None
    assert started.upstream_result == {"found": 3}
    assert (started.job.id, started.job.status, started.job.attempt) == (
        nxt.id,
        JobStatus.RUNNING,
        1,
    )


def test_a_claim_within_a_transaction_sees_the_row_first(
    service: JobService, database: Database
) -> None:
    """The claim under a tenant limit reads the row, then claims only that attempt."""
    job_id = _pipeline(service)[0].id
    with database.transaction() as session:
        seen = session.get(Job, job_id)
        assert seen is not None
        started = transitions.claim(
            session, job_id, worker="w1", lease_seconds=60, now=utcnow(), seen=seen
        )
        assert started is not None and started.job.attempt == 1
    with database.transaction() as session:
        stale = session.get(Job, job_id)
        assert stale is not None
        stale.attempt = 0  # what a reader saw before that claim
        session.expunge(stale)
        assert (
            transitions.claim(
                session, job_id, worker="w2", lease_seconds=60, now=utcnow(), seen=stale
            )
            is None
        )
    assert _status(database, job_id) == (JobStatus.RUNNING, 1)


def test_a_redelivery_under_a_tenant_limit_claims_nothing_but_a_waiting_job(
    database: Database,
) -> None:
    """A delivery of a job that finished, runs or was cancelled starts no other attempt of
    it, limits or not."""
    settings = load_settings(env="development", database_url=database.url, tenant_max_running=5)
    registry = load_job_modules(("tests.jobtypes",))
    service = recording_service(database, registry, settings)
    runner = Runner(database, registry, settings, worker="w-test")

    def job() -> str:
        return service.create(NewJob(tenant_id="t1", type="TEST_ECHO_UPSTREAM")).details.job.id

    finished, running, cancelled = job(), job(), job()
    assert isinstance(runner.run(finished), Succeeded)
    assert _claim(database, running) is not None
    service.cancel("t1", cancelled)
    before = {j: _status(database, j) for j in (finished, running, cancelled)}
    for job_id in before:
        assert isinstance(runner.run(job_id), Skipped)
    assert {j: _status(database, j) for j in before} == before
    assert before[finished] == (JobStatus.SUCCEEDED, 1)
    assert before[running] == (JobStatus.RUNNING, 1)
    assert before[cancelled] == (JobStatus.CANCELLED, 0)


def test_a_bulk_retry_takes_each_job_as_it_is_when_its_turn_comes(
    service: JobService, database: Database
) -> None:
    """Another retry (a double click, a single retry) can take a listed job first: the bulk
    retry must leave it as that retry and its worker made it."""
    runner = Runner(database, service.registry, service.settings, worker="w-test")
    first, second = (
        service.create(NewJob(tenant_id="t1", type="TEST_EXPLODES")).details.job.id
        for _ in range(2)
    )
    for job_id in (first, second):
        assert isinstance(runner.run(job_id), Failed)

    def meanwhile(done: int, total: int) -> None:
        if done == 1:  # the first is retried; the second is retried and claimed elsewhere
            service.retry("t1", second)
            assert _claim(database, second) is not None

    retried = service.retry_failed("t1", JobFilter(), limit=10, progress=meanwhile)
    assert retried == [first]
    assert _status(database, first) == (JobStatus.QUEUED, 1)
    assert _status(database, second) == (JobStatus.RUNNING, 2)


def _cancel_as_read_before(database: Database, job_id: str, status: JobStatus) -> JobStatus:
    """`transitions.cancel` given the job as a reader saw it with `status`, before the
    change that has committed since (what READ COMMITTED allows on PostgreSQL)."""
    with database.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        sa.orm.attributes.set_committed_value(job, "status", status)
        return transitions.cancel(session, job, utcnow())


def _cancel_events(database: Database, job_id: str) -> list[str | None]:
    with database.session() as session:
        query = sa.select(JobEvent.message).where(
            JobEvent.job_id == job_id, JobEvent.kind == "cancel"
        )
        return list(session.scalars(query))


def test_a_cancel_racing_a_claim_asks_the_new_run_to_stop(
    service: JobService, database: Database
) -> None:
    job_id = _pipeline(service)[0].id
    assert _claim(database, job_id) is not None  # after the cancel read it as queued
    assert _cancel_as_read_before(database, job_id, JobStatus.QUEUED) is JobStatus.RUNNING
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.cancel_requested_at is not None
    assert _cancel_events(database, job_id) == ["cancel requested; waiting for the worker to stop"]
    # Asked once: a second cancel finds the request and writes nothing more.
    assert service.cancel("t1", job_id).job.status is JobStatus.RUNNING
    assert len(_cancel_events(database, job_id)) == 1


def test_a_cancel_racing_a_success_reports_the_success(
    service: JobService, database: Database
) -> None:
    job_id = _pipeline(service)[0].id
    claimed = _claim(database, job_id)
    assert claimed is not None
    run = Attempt.of(claimed)
    assert transitions.succeed_alone(database, run, {"ok": 1}, utcnow())
    assert _cancel_as_read_before(database, job_id, JobStatus.RUNNING) is JobStatus.SUCCEEDED
    assert _cancel_events(database, job_id) == []


def test_concurrent_repeats_of_a_keyed_batch_record_it_once(
    service: JobService, database: Database
) -> None:
    batch = [NewJob(tenant_id="t1", type="TEST_FLAKY") for _ in range(50)]
    barrier = threading.Barrier(4)
    answers: list[tuple[bool, list[str]]] = []

    def send() -> None:
        barrier.wait()
        outcome = service.create_batch(batch, idempotency_key="import-42")
        answers.append((outcome.created, [details.job.id for details in outcome.jobs]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created for created, _ in answers) == [False, False, False, True]
    assert len({tuple(ids) for _, ids in answers}) == 1
    with database.session() as session:
        pipelines = sa.select(sa.func.count(sa.distinct(Job.pipeline_id)))
        assert session.scalar(pipelines) == 50


def test_a_cancel_asked_for_while_an_attempt_fails_wins_over_its_retry(
    database: Database,
) -> None:
    """The attempt fails before its heartbeat has seen the cancel: no further attempt."""
    registry = Registry()
    settings = load_settings(env="development", database_url=database.url)
    service = recording_service(database, registry, settings)

    @define_job("TEST_CANCELLED_MIDWAY", retry=RetryPolicy(max_attempts=3), target=registry)
    def cancelled_midway(ctx: JobContext, data: BaseModel) -> None:
        service.cancel(ctx.tenant_id, ctx.job_id)
        raise RuntimeError("failed after its cancel was asked for")

    job_id = service.create(NewJob(tenant_id="t1", type="TEST_CANCELLED_MIDWAY")).details.job.id
    runner = Runner(database, registry, settings, worker="w-test")
    assert isinstance(runner.run(job_id), Cancelled)
    assert _status(database, job_id) == (JobStatus.CANCELLED, 1)
    assert isinstance(runner.run(job_id), Skipped)  # a retry sent anyway runs nothing


def test_a_job_of_a_type_this_worker_does_not_define_is_retried_then_failed(
    service: JobService, database: Database
) -> None:
    """A deploy under way, or job modules that differ: the claim has committed, so the
    job must not be left running; another worker may know the type, so it is retried."""
    job_id = _pipeline(service)[0].id  # TEST_FLAKY, four attempts
    runner = Runner(database, Registry(), service.settings, worker="w-old-revision")
    for attempt in range(1, 4):
        outcome = runner.run(job_id)
        assert isinstance(outcome, RetryLater) and outcome.error.type == "UnknownJobType"
        assert _status(database, job_id) == (JobStatus.RETRYING, attempt)
        with database.transaction() as session:  # due now, not after the backoff
            session.execute(sa.update(Job).where(Job.id == job_id).values(run_at=utcnow()))
    outcome = runner.run(job_id)
    assert isinstance(outcome, Failed) and "TEST_FLAKY" in outcome.error.message
    assert _status(database, job_id) == (JobStatus.FAILED, 4)


def test_the_queue_gauges_leave_delayed_jobs_out_on_both_databases(
    service: JobService, database: Database
) -> None:
    service.clock = lambda: utcnow() - timedelta(minutes=5)
    service.create(NewJob(tenant_id="t1", type="TEST_FLAKY"))
    # Older than the due job: counted by its age rather than by its runAt, it would set the
    # oldest age to an hour.
    service.clock = lambda: utcnow() - timedelta(hours=1)
    service.create(NewJob(tenant_id="t1", type="TEST_FLAKY", delay_seconds=86400))
    gauges = {
        (family.name, tuple(sample.labels.values())): sample.value
        for family in DatabaseGauges(database.session).collect()
        for sample in family.samples
    }
    assert gauges[("orchestrator_jobs_in_state", ("queued",))] == 2
    assert gauges[("orchestrator_queue_depth", ("default",))] == 1
    assert 299 <= gauges[("orchestrator_oldest_queued_job_age_seconds", ())] < 400


def test_a_creation_run_again_after_its_commit_is_no_error(
    service: JobService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database.statement runs its work again when the connection dropped; if that was
    inside the COMMIT, the first run is recorded and the second meets its own ids."""
    once = database.statement

    def dropped_in_commit(work: Callable[[Any], Any]) -> Any:
        once(work)  # committed; the answer was lost with the connection
        return once(work)

    monkeypatch.setattr(database, "statement", dropped_in_commit)
    single = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY"))
    batch = service.create_batch([NewJob(tenant_id="t1", type="TEST_FLAKY") for _ in range(3)])
    assert single.created and batch.created and len(batch.jobs) == 3
    with database.session() as session:
        pipelines = sa.select(sa.func.count(sa.distinct(Job.pipeline_id)))
        assert session.scalar(pipelines) == 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_hot_statements_survive_a_dropped_connection(
    service: JobService, database: Database
) -> None:
    """The hot path has no pre-ping: a connection the server closed is replaced and the
    statement runs again, once."""
    first, second = _pipeline(service)[0].id, _pipeline(service)[0].id
    assert _claim(database, first) is not None  # a pooled connection now exists
    with database.transaction() as session:
        killed = session.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert killed
    claimed = _claim(database, second)
    assert claimed is not None and claimed.attempt == 1
    database.engine.dispose()  # the sessions' pool lost its connections too (not under test)
    assert _status(database, second) == (JobStatus.RUNNING, 1)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_driver_path_writes_what_sqlalchemy_writes(
    service: JobService, database: Database
) -> None:
    """A worker's claim and success run on the driver's connection (`first_row`), with
    SQLAlchemy's conversions applied by hand: the rows they write and the job they hand
    back must be exactly what the same transitions write through a session."""
    by_session, by_driver = _pipeline(service)[0].id, _pipeline(service)[0].id
    now = utcnow()
    with database.transaction() as session:
        from_session = transitions.claim(session, by_session, worker="w", lease_seconds=60, now=now)
        assert from_session is not None
    from_driver = transitions.claim_alone(
        database, by_driver, worker="w", lease_seconds=60, now=now
    )
    assert from_driver is not None
    for started in (from_session, from_driver):
        assert type(started.job.status) is JobStatus
        assert started.job.created_at.tzinfo is not None
    assert _claimed_view(from_driver) == {**_claimed_view(from_session), "id": by_driver}
    result = {"rooms": [1, 2], "none": None}
    with database.transaction() as session:
        run = Attempt(by_session, "t1", 1)
        assert transitions.succeed(session, run, result, now)
    assert transitions.succeed_alone(
        database,
        Attempt(by_driver, "t1", 1),
        result,
        now,
    )
    assert _written(database, by_driver) == _written(database, by_session)


def _claimed_view(started: transitions.Started) -> dict[str, object]:
    job = started.job
    names = ("id", "tenant_id", "type", "input", "status", "attempt", "max_attempts")
    return {
        **{name: getattr(job, name) for name in names},
        "started_at": job.started_at,
        "upstream_result": started.upstream_result,
    }


def _written(database: Database, job_id: str) -> list[tuple[object, ...]]:
    """Every column of the job row and its events as PostgreSQL renders them (JSON null
    and SQL NULL told apart), the job's own ids and creation (and readiness) aside."""
    with database.session() as session:
        job = session.execute(
            sa.text(
                "SELECT to_jsonb(jobs) - 'id' - 'pipeline_id' - 'created_at' - 'ready_since' "
                "FROM jobs WHERE id = :id"
            ),
            {"id": job_id},
        ).scalar_one()
        events = session.execute(
            sa.text(
                # the creation event's time is the job's creation, set apart above
                "SELECT to_jsonb(e) - 'id' - 'job_id' "
                "- CASE WHEN from_status IS NULL THEN 'at' ELSE '' END, "
                "data IS NULL, jsonb_typeof(data) "
                "FROM job_events e WHERE job_id = :id ORDER BY id"
            ),
            {"id": job_id},
        ).all()
    return [(job,), *(tuple(row) for row in events)]


def test_listing_is_tenant_scoped_newest_first_and_paginates(service: JobService) -> None:
    mine = [_pipeline(service, "alice")[0].id for _ in range(5)]
    _pipeline(service, "bob")
    seen: list[str] = []
    cursor = None
    while True:
        page = service.list_jobs("alice", JobFilter(type="TEST_FLAKY"), limit=2, cursor=cursor)
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(mine, reverse=True)
    queued = service.list_jobs("alice", JobFilter(status=JobStatus.QUEUED))
    assert {j.id for j in queued.jobs} == set(mine)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_idle_connection_the_server_dropped_is_replaced(
    service: JobService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections are pinged when they were idle (not on every checkout): one the server
    closed meanwhile is swapped for a new one before the transaction starts."""
    monkeypatch.setattr("orchestrator.db.PING_AFTER_IDLE_SECONDS", 0.2)
    job_id = _pipeline(service)[0].id
    assert _status(database, job_id) == (JobStatus.QUEUED, 0)  # the pool now holds one
    outsider = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    with outsider.begin() as connection:
        killed = connection.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    outsider.dispose()
    assert killed
    time.sleep(0.3)
    assert _status(database, job_id) == (JobStatus.QUEUED, 0)


def test_retry_needs_only_the_rows_not_the_jobs_module(
    service: JobService, database: Database
) -> None:
    """A command line that did not load the job's module still retries it (its workers
    know the type), with the budget of attempts the job recorded, sent at once."""
    job_id = _pipeline(service)[0].id  # TEST_FLAKY: four attempts
    with database.transaction() as session:  # a failed job of a type this process lacks
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(type="DEFINED_ELSEWHERE", status=JobStatus.FAILED, attempt=4)
        )
    retried = service.retry_failed("t1", JobFilter(type="DEFINED_ELSEWHERE"), limit=10)
    assert retried == [job_id]
    job = service.get("t1", job_id).job
    assert (job.status, job.max_attempts) == (JobStatus.QUEUED, 4 + 4)
    assert recorded(service).sent[-1][0].job_id == job_id


def test_a_retried_job_keeps_the_time_it_was_scheduled_for_unless_asked_to_run_now(
    service: JobService, database: Database
) -> None:
    tomorrow = utcnow() + timedelta(days=1)
    dispatcher = recorded(service)
    for run_now in (False, True):
        job = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY", run_at=tomorrow)).details.job
        assert service.cancel("t1", job.id).job.run_at == tomorrow
        sent = len(dispatcher.sent)
        retried = service.retry("t1", job.id, run_now=run_now).job
        assert retried.status is JobStatus.QUEUED
        if run_now:
            assert retried.run_at is not None and retried.run_at < tomorrow
            assert len(dispatcher.sent) == sent + 1  # sent now
        else:
            assert retried.run_at == tomorrow
            assert len(dispatcher.sent) == sent  # sent when due (scheduled, not ready)
            with database.session() as session:
                assert session.get(Job, job.id).ready_since is None  # type: ignore[union-attr]


def test_a_finished_job_is_due_nowhere(service: JobService, database: Database) -> None:
    """A job that succeeded after a retry does not keep its last retry's runAt."""
    head = _pipeline(service)[0]  # TEST_FLAKY fails twice, then succeeds
    runner = Runner(database, service.registry, service.settings, worker="w-test")
    while not isinstance(outcome := runner.run(head.id), Succeeded):
        assert isinstance(outcome, RetryLater)
        with database.transaction() as session:  # due now, not after the backoff
            session.execute(sa.update(Job).where(Job.id == head.id).values(run_at=utcnow()))
    assert service.get("t1", head.id).job.run_at is None


def test_a_run_whose_worker_process_is_gone_from_this_host_is_reaped_at_once(
    service: JobService, database: Database
) -> None:
    """A worker of this host killed mid-job (and started again by `make run`) leaves its
    run to the next reap, not to its lease's end; one still alive, or another host's, keeps
    its lease."""
    import socket  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    workers = {"gone": f"{here}:{gone.pid}", "alive": f"{here}:{os.getpid()}"}
    workers["elsewhere"] = f"other-host:{gone.pid}"
    jobs = {}
    for name, worker in workers.items():
        job_id = _pipeline(service)[0].id
        transitions.claim_alone(database, job_id, worker=worker, lease_seconds=600, now=utcnow())
        jobs[name] = job_id
    reaper = Maintenance(database, service.admission)
    assert reaper.reap_leases() == 1
    assert _status(database, jobs["gone"]) == (JobStatus.RETRYING, 1)
    assert _status(database, jobs["alive"]) == (JobStatus.RUNNING, 1)
    assert _status(database, jobs["elsewhere"]) == (JobStatus.RUNNING, 1)


def _window_rows(database: Database) -> set[tuple[str, int]]:
    with database.session() as session:
        return {(r.job_id, r.attempt) for r in session.scalars(sa.select(WindowEntry))}


def test_a_success_admits_its_released_step_when_nobody_waits(
    service: JobService, database: Database
) -> None:
    head, nxt = _pipeline(service)
    _claim(database, head.id)
    recorded_success = transitions.succeed_alone(
        database, Attempt(head.id, "t1", 1), {"found": 3}, utcnow(), admit_next=True
    )
    assert recorded_success is not None
    if database.dialect != "postgresql":  # SQLite: the dispatcher's fill admits it
        assert recorded_success.admitted is None
        return
    delivery = recorded_success.admitted
    assert delivery is not None
    assert (delivery.job_id, delivery.type, delivery.queue, delivery.tenant_id) == (
        nxt.id,
        "TEST_ECHO_UPSTREAM",
        nxt.queue,
        "t1",
    )
    assert (nxt.id, 0) in _window_rows(database)
    with database.session() as session:
        number = session.scalar(sa.select(WindowEntry.id).where(WindowEntry.job_id == nxt.id))
    assert delivery.number == number


def test_a_success_leaves_its_released_step_to_a_fill_when_others_wait(
    service: JobService, database: Database
) -> None:
    head, nxt = _pipeline(service)
    waiting = service.create(NewJob(tenant_id="t2", type="TEST_ECHO_UPSTREAM")).details.job
    with database.transaction() as session:  # t2's job is ready and not yet admitted
        session.execute(sa.delete(WindowEntry))
    _claim(database, head.id)
    recorded_success = transitions.succeed_alone(
        database, Attempt(head.id, "t1", 1), None, utcnow(), admit_next=True
    )
    assert recorded_success is not None and recorded_success.admitted is None
    assert _window_rows(database) == set()  # neither passed the other: a fill decides
    assert waiting.queue == nxt.queue
    with database.session() as session:
        assert session.get(Job, nxt.id).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_a_success_admits_nothing_unless_asked_nor_when_superseded(
    service: JobService, database: Database
) -> None:
    head, nxt = _pipeline(service)
    _claim(database, head.id)
    stale = Attempt(head.id, "t1", 7)
    assert transitions.succeed_alone(database, stale, None, utcnow(), admit_next=True) is None
    recorded_success = transitions.succeed_alone(
        database, Attempt(head.id, "t1", 1), None, utcnow()
    )
    assert recorded_success is not None and recorded_success.admitted is None
    assert (nxt.id, 0) not in _window_rows(database)
