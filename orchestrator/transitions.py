"""The job state machine: every change of a job's status, each one conditional write that
names its source states.

This is the only module that writes `jobs.status` (a test holds it to that). Each function
runs inside the caller's transaction, checks its row count, and records an event row
beside the change, so the event log and the job row can never disagree.

A change that makes a job ready to run (created, released by its upstream step, retried
now, requeued) writes `ready_since` in the same statement: that is the job's outbox entry,
which the dispatcher (`orchestrator.admission`) turns into a send. Nothing here sends.

The two transitions on every job's path, a claim and a success, and the creation of jobs,
run prebuilt statements kept in `orchestrator.transition_statements`, which only this
module executes (on PostgreSQL a single statement each, events included).

Writes made on behalf of a running attempt are fenced: they match on `attempt` as well as
`status`, so a worker whose lease was taken over cannot overwrite the newer attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import metrics
from orchestrator import transition_statements as statements
from orchestrator.db import Database
from orchestrator.dispatch.base import Delivery
from orchestrator.errors import JobConflict
from orchestrator.job_events import event as _event
from orchestrator.models import Job, JobEvent
from orchestrator.registry import ALL_MAY_FAIL
from orchestrator.states import (
    ALLOWED,
    CLAIMABLE,
    LOST,
    TERMINAL,
    Attempt,
    ErrorInfo,
    JobStatus,
    LeaseState,
)

TRACEBACK_LIMIT = 8000
HELD_STATUS: sa.ColumnElement[str] = sa.literal_column(f"'{JobStatus.WAITING.value}'")
# Transitions recorded by `_note` that the job counters count, and under which name.
COUNTED = {
    JobStatus.RETRYING: "retried",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
# The states a delivery claims from, the usual one first (`CLAIMABLE`, in order).
CLAIM_SOURCES = (JobStatus.QUEUED, JobStatus.RETRYING)
# Hosts' clocks differ a little: a delivery this close to a job's due time may claim it.
CLOCK_SKEW = timedelta(seconds=2)


def _check(source: Iterable[JobStatus], target: JobStatus) -> None:
    for status in source:
        assert target in ALLOWED[status], f"{status} -> {target} is not a transition"


def insert_pipeline(session: Session, steps: Sequence[Job], now: datetime) -> None:
    """Record a new pipeline: the first step `queued`, the ones after it `waiting`.

    Parents come before children. On PostgreSQL the rows travel as one JSON array and the
    events are written beside them: one statement whatever the count. Elsewhere, Core
    multi-row INSERTs: a few statements, not a unit-of-work flush per object. The Job
    objects stay as built.
    """
    if _is_postgresql(session):
        session.execute(statements.create_postgresql(), _create_params(steps, now))
    else:
        _check_new(steps)
        rows = [{column: vars(step).get(column) for column in _JOB_COLUMNS} for step in steps]
        session.execute(sa.insert(Job), rows)
        session.execute(
            sa.insert(JobEvent),
            [
                {
                    "job_id": s.id,
                    "tenant_id": s.tenant_id,
                    "attempt": 0,
                    "at": now,
                    "kind": "transition",
                    "to_status": s.status,
                    "message": "created",
                }
                for s in steps
            ],
        )
    for step in steps:
        metrics.count(session, "created", step.type)


def insert_pipeline_alone(database: Database, steps: Sequence[Job], now: datetime) -> None:
    """`insert_pipeline` in a transaction of its own: on PostgreSQL one prebuilt statement
    on the driver's connection (`Database.first_row`), as a worker's claim is."""
    if database.dialect != "postgresql":
        database.statement(lambda session: insert_pipeline(session, steps, now))
        return
    database.first_row(statements.create_postgresql(), _create_params(steps, now))
    for step in steps:
        metrics.record("created", step.type)


def _create_params(steps: Sequence[Job], now: datetime) -> dict[str, Any]:
    """`create_postgresql`'s parameters: the rows as one JSON array."""
    _check_new(steps)
    # Fresh objects hold every value they were given in __dict__; a column left out of a
    # row is NULL there, as it would be here. pydantic's serializer writes datetimes
    # itself, in ISO 8601: half the time of `json.dumps` calling back for each of them.
    rows = [{k: v for k, v in vars(step).items() if k in _JOB_COLUMN_SET} for step in steps]
    return {"b_rows": pydantic_core.to_json(rows).decode(), "b_now": now}


def _check_new(steps: Sequence[Job]) -> None:
    for step in steps:
        assert step.status in (JobStatus.QUEUED, JobStatus.WAITING)


_JOB_COLUMNS = [column.key for column in Job.__table__.columns]
_JOB_COLUMN_SET = frozenset(_JOB_COLUMNS)


@dataclass(frozen=True)
class Started:
    """A claimed job, and the result of the pipeline step before it (its input too)."""

    job: Job
    upstream_result: Any


def claim(
    session: Session,
    job_id: str,
    *,
    worker: str,
    lease_seconds: float,
    now: datetime,
    delivery: dict[str, Any] | None = None,
    seen: Job | None = None,
) -> Started | None:
    """Start a new attempt if the job is claimable and due; `None` for a duplicate delivery.

    One conditional UPDATE per source state bumps `attempt` and hands back the row
    (RETURNING): of concurrent deliveries exactly one wins, and the usual case (a queued
    job) takes one statement, which on PostgreSQL also writes the event and reads the
    upstream result. `seen`, a row the caller already read, narrows the claim to that
    row's state and attempt.
    """
    if seen is not None and seen.status not in CLAIMABLE:
        return None  # finished, running or waiting: a duplicate delivery, whatever its attempt
    sources: Sequence[JobStatus] = CLAIM_SOURCES if seen is None else [seen.status]
    params = _claim_params(job_id, worker, lease_seconds, now, delivery)
    if seen is not None:
        params["b_attempt"] = seen.attempt
    claim_one = _claim_in_one_statement if _is_postgresql(session) else _claim_in_steps
    for source in sources:
        started = claim_one(session, {**params, "b_source": source}, narrowed=seen is not None)
        if started is not None:
            metrics.count(session, "started", started.job.type, _waited(started.job, now))
            return started
    return None


def claim_alone(
    database: Database,
    job_id: str,
    *,
    worker: str,
    lease_seconds: float,
    now: datetime,
    delivery: dict[str, Any] | None = None,
) -> Started | None:
    """`claim` as a worker makes it, in a transaction of its own: on PostgreSQL one
    prebuilt statement on the driver's connection (`Database.first_row`)."""
    if database.dialect != "postgresql":
        return database.statement(
            lambda session: claim(
                session,
                job_id,
                worker=worker,
                lease_seconds=lease_seconds,
                now=now,
                delivery=delivery,
            )
        )
    params = _claim_params(job_id, worker, lease_seconds, now, delivery)
    for source in CLAIM_SOURCES:
        row = database.first_row(statements.claim_postgresql(False), {**params, "b_source": source})
        if row is not None:
            started = _started(row)
            metrics.record("started", started.job.type, _waited(started.job, now))
            return started
    return None


def _claim_params(
    job_id: str, worker: str, lease_seconds: float, now: datetime, delivery: dict[str, Any] | None
) -> dict[str, Any]:
    _check(CLAIMABLE, JobStatus.RUNNING)
    return {
        "b_job_id": job_id,
        "b_attempt": None,
        "b_due_by": now + CLOCK_SKEW,
        "b_claimer": worker,
        "b_now": now,
        "b_lease_until": now + timedelta(seconds=lease_seconds),
        "b_event_data": {"worker": worker, **({"delivery": delivery} if delivery else {})},
    }


def _claim_in_one_statement(
    session: Session, params: dict[str, Any], *, narrowed: bool
) -> Started | None:
    row = session.execute(statements.claim_postgresql(narrowed), params).first()
    return None if row is None else _started(dict(row._mapping))


def _started(values: Mapping[str, Any]) -> Started:
    # A detached Job of the columns the run needs: no identity map, no full row.
    job = Job.fresh(**{name: values[name] for name in statements.CLAIMED_COLUMNS})
    return Started(job, values["upstream_result"])


def _claim_in_steps(session: Session, params: dict[str, Any], *, narrowed: bool) -> Started | None:
    job: Job | None = session.scalar(
        statements.claim_update(narrowed),
        params,
        execution_options={"populate_existing": True},
    )
    if job is None:
        return None
    now = params["b_now"]
    source, data = params["b_source"], params["b_event_data"]
    session.add(
        _event(
            job.id,
            job.tenant_id,
            job.attempt,
            now,
            source=source,
            target=JobStatus.RUNNING,
            data=data,
        )
    )
    upstream = session.get(Job, job.parent_id) if job.parent_id else None
    return Started(job, upstream.result if upstream else None)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _waited(job: Job, now: datetime) -> float:
    """Queue wait: from when the job became ready to run to now."""
    due = job.ready_since or job.run_at or job.created_at
    return max((now - due).total_seconds(), 0.0)


def succeed(
    session: Session,
    run: Attempt,
    result: Any,
    now: datetime,
    *,
    has_next: bool = True,
    trace: str | None = None,
) -> bool:
    """Record the result; the next pipeline step, if any, becomes `queued` and ready (the
    dispatcher admits it), carrying `trace` (the run's traceparent) on. On PostgreSQL the
    whole change (both rows and their events) is one statement. A job with no step after
    it (`has_next` false) saves the look-up.
    """
    params = {**_success_params(run, result, now, trace), "b_admit": False}
    if _is_postgresql(session):
        won = bool(session.scalar(statements.succeed_postgresql(has_next), params) == 1)
    else:
        won = _succeed_in_steps(session, run, params, has_next=has_next)
    if won:
        metrics.count(session, "succeeded", run.job_type, _ran(run, now))
    return won


@dataclass(frozen=True)
class Recorded:
    """A success as recorded by the worker; `admitted`: the released next step's delivery,
    when the success admitted it into the window (to be sent by the caller)."""

    admitted: Delivery | None = None


def succeed_alone(
    database: Database,
    run: Attempt,
    result: Any,
    now: datetime,
    *,
    has_next: bool = True,
    trace: str | None = None,
    admit_next: bool = False,
) -> Recorded | None:
    """`succeed` as a worker records it, in a transaction of its own: on PostgreSQL one
    prebuilt statement on the driver's connection (`Database.first_row`), which also admits
    the released next step when `admit_next` (its window has room) and no ready job of its
    queue waits (`transition_statements.succeed_postgresql`). None: superseded."""
    if database.dialect != "postgresql":
        won = database.statement(
            lambda session: succeed(session, run, result, now, has_next=has_next, trace=trace)
        )
        return Recorded() if won else None
    params = {**_success_params(run, result, now, trace), "b_admit": admit_next}
    row = database.first_row(statements.succeed_postgresql(has_next), params)
    if row is None or row["finished"] != 1:
        return None
    metrics.record("succeeded", run.job_type, _ran(run, now))
    return Recorded(_admitted(row))


def _admitted(row: Mapping[str, Any]) -> Delivery | None:
    if row.get("number") is None:
        return None
    return Delivery(
        job_id=row["job_id"],
        type=row["type"],
        queue=row["queue"],
        number=row["number"],
        priority=row["priority"],
        trace=row["trace"],
        tenant_id=row["tenant_id"],
    )


def _success_params(run: Attempt, result: Any, now: datetime, trace: str | None) -> dict[str, Any]:
    _check([JobStatus.RUNNING], JobStatus.SUCCEEDED)
    _check([JobStatus.WAITING], JobStatus.QUEUED)
    return {
        "b_job_id": run.job_id,
        "b_attempt": run.attempt,
        "b_now": now,
        "b_outcome": result,
        "b_trace": trace,
        "b_next_message": f"upstream {run.job_id} succeeded",
    }


def _ran(run: Attempt, now: datetime) -> float | None:
    return (now - run.started_at).total_seconds() if run.started_at else None


def _succeed_in_steps(
    session: Session, run: Attempt, params: dict[str, Any], *, has_next: bool
) -> bool:
    now, message = params["b_now"], params["b_next_message"]
    finished = session.execute(statements.succeed_update(), params)
    if finished.rowcount != 1:  # type: ignore[attr-defined]
        return False
    _note(session, run, now, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    released = session.execute(statements.release_next_step(), params).all() if has_next else []
    for step in released:
        nxt = Attempt(step.id, step.tenant_id, step.attempt)
        _note(session, nxt, now, JobStatus.WAITING, JobStatus.QUEUED, message=message)
    return True


def succeed_in_transaction(
    session: Session,
    run: Attempt,
    result: Any,
    now: datetime,
    *,
    children: Sequence[Job] = (),
    join_id: str | None = None,
    step: str | None = None,
    failures_allowed: int = 0,
    trace: str | None = None,
) -> bool:
    """`succeed` for a run that spawned children, or that is a child itself: in the
    caller's transaction, and only if the fenced update wins (a superseded attempt spawns
    nothing and counts for nothing).

    - `children` (rows built `queued` and ready): recorded, and the step after this job,
      if any, becomes their join: it stays `waiting` on their count instead of being
      released (with no children it is released as by `succeed`), `failures_allowed` of
      them may fail for good (its type's `allow_failures`).
    - `join_id` (this run is a child): its join has one child fewer to wait for; the
      last child's success releases it (`_count_down`).
    """
    params = {**_success_params(run, result, now, trace), "b_admit": False}
    if session.execute(statements.succeed_update(), params).rowcount != 1:  # type: ignore[attr-defined]
        return False
    _note(session, run, now, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    # The next step, in whatever status: one cancelled meanwhile (with the pipeline) wants
    # no children, and no step at all means children no one waits for.
    join = session.scalar(sa.select(Job).where(Job.parent_id == run.job_id, Job.join_id.is_(None)))
    if children and (join is None or _update(
        session,
        (Job.id == join.id, Job.status == JobStatus.WAITING),  # takes its row lock first
        waiting_on=len(children),
        children_failed=0,
        failures_allowed=failures_allowed,
        updated_at=now,
    )):  # fmt: skip
        for index, child in enumerate(children):
            child.join_id, child.item_index = (join.id if join else None), index
        insert_pipeline(session, children, now)
    elif not children and join is not None and join.status is JobStatus.WAITING:
        for released in session.execute(statements.release_next_step(), params).all():
            nxt = Attempt(released.id, released.tenant_id, released.attempt)
            _note(
                session,
                nxt,
                now,
                JobStatus.WAITING,
                JobStatus.QUEUED,
                message=params["b_next_message"],
            )
    if join_id is not None and _count_down(session, join_id, now, trace=trace):
        _release_held_sibling(session, join_id, step, now)
    metrics.count(session, "succeeded", run.job_type, _ran(run, now))
    return True


def _count_down(session: Session, join_id: str, now: datetime, *, trace: str | None) -> bool:
    """A child succeeded: its join waits for one fewer. The update takes the join's row
    lock, so two children finishing at once count down one after the other, and only the
    one that reaches zero releases the join: it runs once. False if the join no longer
    waits (cancelled meanwhile)."""
    _check([JobStatus.WAITING], JobStatus.QUEUED)
    left = session.execute(
        sa.update(Job)
        .where(Job.id == join_id, Job.status == JobStatus.WAITING, Job.waiting_on > 0)
        .values(waiting_on=Job.waiting_on - 1, updated_at=now)
        .returning(Job.waiting_on, Job.tenant_id, Job.attempt)
        .execution_options(synchronize_session=False)
    ).first()
    if left is not None and left.waiting_on == 0:
        _release_join(session, Attempt(join_id, left.tenant_id, left.attempt), now, trace=trace)
    return left is not None


def _release_held_sibling(session: Session, join_id: str, step: str | None, now: datetime) -> None:
    """A workflow map's job finished: the first of its siblings held back by the map's
    concurrency runs now. Callers hold the join's row lock (they just counted down), so
    two siblings finishing at once release two different jobs. SKIP LOCKED: a held job
    being cancelled holds its own row and waits for the join's, which this transaction
    holds; the next held one is released instead (the cancelled one held no slot)."""
    if step is None:
        return  # spawned by a handler: none is ever held
    # The status as a literal: it is what lets PostgreSQL use the partial index of held
    # jobs (`ix_jobs_held`) in a prepared statement's generic plan too.
    held = session.execute(
        sa.select(Job.id, Job.tenant_id, Job.attempt)
        .where(Job.join_id == join_id, Job.step == step, Job.status == HELD_STATUS)
        .order_by(Job.item_index)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if held is not None and _update(
        session,
        (Job.id == held.id, Job.status == JobStatus.WAITING),
        status=JobStatus.QUEUED,
        ready_since=now,
        updated_at=now,
    ):
        message = "a sibling finished"
        _note(session, Attempt(held.id, held.tenant_id, held.attempt), now, JobStatus.WAITING,
              JobStatus.QUEUED, message=message)  # fmt: skip


def _release_join(
    session: Session, join: Attempt, now: datetime, *, trace: str | None = None
) -> None:
    """Every child finished: the join runs (the update is conditional: once), carrying the
    trace of the run that finished last on."""
    if _update(
        session,
        (Job.id == join.job_id, Job.status == JobStatus.WAITING, Job.waiting_on == 0),
        status=JobStatus.QUEUED,
        ready_since=now,
        updated_at=now,
        **({"trace_context": trace} if trace else {}),
    ):
        message = "its children finished"
        _note(session, join, now, JobStatus.WAITING, JobStatus.QUEUED, message=message)


def _child_lost(
    session: Session, child: Job, now: datetime, *, reason: str, held: bool = False
) -> None:
    """A child failed for good, or was cancelled: its join counts it finished and failed.
    Past what the join allows (`failures_allowed`; by default none), the join is
    cancelled, and with it its children not finished; within it, the last child to finish
    releases the join as a success does, and a held sibling takes its slot (none when
    the child was `held` itself: it had no slot to give)."""
    counted = session.execute(
        sa.update(Job)
        .where(Job.id == child.join_id, Job.status == JobStatus.WAITING, Job.waiting_on > 0)
        .values(
            waiting_on=Job.waiting_on - 1,
            children_failed=sa.func.coalesce(Job.children_failed, 0) + 1,
            updated_at=now,
        )
        .returning(
            Job.waiting_on, Job.children_failed, Job.failures_allowed, Job.tenant_id, Job.attempt
        )
        .execution_options(synchronize_session=False)
    ).first()
    if counted is None:
        return
    join = Attempt(str(child.join_id), counted.tenant_id, counted.attempt)
    allowed = counted.failures_allowed or 0
    if allowed != ALL_MAY_FAIL and counted.children_failed > allowed:
        if _update(
            session,
            (Job.id == join.job_id, Job.status == JobStatus.WAITING),
            status=JobStatus.CANCELLED,
            finished_at=now,
            updated_at=now,
        ):
            message = f"child {child.id}: {reason}"
            _note(session, join, now, JobStatus.WAITING, JobStatus.CANCELLED, message=message)
            cancel_downstream(session, join.job_id, now, reason=f"join {join.job_id} cancelled")
    else:
        if counted.waiting_on == 0:
            _release_join(session, join, now)
        if not held:
            _release_held_sibling(session, join.job_id, child.step, now)


def schedule_retry(
    session: Session, run: Attempt, error: ErrorInfo, now: datetime, *, run_at: datetime
) -> bool:
    """The attempt failed and another is due at `run_at` (ready then; the dispatcher finds
    it due). False if the attempt was superseded or a cancel was asked for meanwhile
    (`confirm_cancelled` then applies)."""
    _check([JobStatus.RUNNING], JobStatus.RETRYING)
    won = _update(
        session,
        (*_fence(run), Job.cancel_requested_at.is_(None)),
        status=JobStatus.RETRYING,
        run_at=run_at,
        ready_since=ready_at(run_at, now),
        lease_expires_at=None,
        updated_at=now,
        **_error_columns(error),
    )
    if won:
        metrics.count(session, "retried", run.job_type)
        session.add(
            _event(
                run.job_id,
                run.tenant_id,
                run.attempt,
                now,
                source=JobStatus.RUNNING,
                target=JobStatus.RETRYING,
                message=f"{error.type}: {error.message}",
                data={"runAt": run_at.isoformat()},
            )
        )
    return won


def fail(session: Session, run: Attempt, error: ErrorInfo, now: datetime) -> bool:
    """The job failed for good; the pipeline steps after it are cancelled."""
    won = _finish_running(
        session,
        run,
        JobStatus.FAILED,
        now,
        **_error_columns(error),
        message=f"{error.type}: {error.message}",
    )
    if won:
        cancel_downstream(session, run.job_id, now, reason=f"upstream {run.job_id} failed")
    return won


def cancel_downstream(
    session: Session, job_id: str, now: datetime, *, reason: str, held: bool = False
) -> None:
    """Cancel every not-yet-started step after `job_id` in its pipeline; for a join, its
    children that have not finished too (`_stop_children`); for a child, its join
    (`held`: a map's job that was waiting for a slot)."""
    _check([JobStatus.WAITING], JobStatus.CANCELLED)
    job = session.get(Job, job_id)
    assert job is not None
    if job.waiting_on is not None:
        _stop_children(session, job, now, reason=f"join {job.id}: {reason}")
    _move_later_steps(
        session,
        job,
        JobStatus.WAITING,
        JobStatus.CANCELLED,
        now,
        message=reason,
        finished_at=now,
    )
    if job.join_id is not None:  # a child that will not succeed
        _child_lost(session, job, now, reason=reason, held=held)


def _stop_children(session: Session, join: Job, now: datetime, *, reason: str) -> None:
    """A join that will not run: its children waiting to run are cancelled, and those
    running are asked to stop (their heartbeat notices), as a cancel of each would."""
    # `waiting`: a workflow map's jobs held back by its concurrency.
    waiting = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.WAITING)
    _check(waiting, JobStatus.CANCELLED)
    # SKIP LOCKED: a sibling whose own success or failure is being recorded holds its row
    # and waits for the join's, which this transaction holds: waiting for it would be a
    # deadlock. Its transition then finds the join no longer waiting, and counts nothing.
    children = session.scalars(
        sa.select(Job)
        .where(Job.join_id == join.id, Job.status.in_((*waiting, JobStatus.RUNNING)))
        .with_for_update(skip_locked=True)
    ).all()
    for child in children:
        if child.status is JobStatus.RUNNING:
            _request_stop(session, child, now)
        elif _update(
            session,
            (Job.id == child.id, Job.status == child.status),
            status=JobStatus.CANCELLED,
            cancel_requested_at=now,
            finished_at=now,
            updated_at=now,
        ):
            _note(
                session, Attempt.of(child), now, child.status, JobStatus.CANCELLED, message=reason
            )


def _move_later_steps(
    session: Session,
    job: Job,
    source: JobStatus,
    target: JobStatus,
    now: datetime,
    *,
    message: str,
    **values: Any,
) -> list[Job]:
    """Move the steps after `job` that are in `source` to `target`, each with its event."""
    moved = []
    for step in later_steps(session, job, source):
        if _update(
            session,
            (Job.id == step.id, Job.status == source),
            status=target,
            updated_at=now,
            **values,
        ):
            _note(session, Attempt.of(step), now, source, target, message=message)
            moved.append(step)
    return moved


def later_steps(session: Session, job: Job, status: JobStatus) -> list[Job]:
    """The steps after `job` in its pipeline that are in `status`, in pipeline order."""
    return list(
        session.scalars(
            sa.select(Job)
            .where(
                Job.pipeline_id == job.pipeline_id,
                Job.step_index > job.step_index,
                Job.status == status,
            )
            .order_by(Job.step_index)
        )
    )


def report_progress(
    session: Session, run: Attempt, fraction: float, message: str | None, now: datetime
) -> bool:
    won = _update(session, _fence(run), progress=fraction, progress_message=message, updated_at=now)
    if won:
        session.add(
            _event(
                run.job_id,
                run.tenant_id,
                run.attempt,
                now,
                kind="progress",
                message=message,
                data={"percent": round(fraction * 100, 2)},
            )
        )
    return won


def extend_lease(session: Session, run: Attempt, until: datetime) -> LeaseState:
    """Heartbeat: keep the lease while the run is current, and tell it about a cancel."""
    result = session.execute(
        sa.update(Job)
        .where(*_fence(run))
        .values(lease_expires_at=until)
        .returning(Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    ).first()
    if result is None:
        return LeaseState.LOST
    return LeaseState.CANCEL_REQUESTED if result[0] is not None else LeaseState.HELD


def expire_lease(
    session: Session, run: Attempt, max_attempts: int, now: datetime, *, orphaned: bool = False
) -> JobStatus:
    """The reaper's decision for a run whose worker stopped heartbeating (or, `orphaned`,
    is known to be gone, before its lease ran out).

    A cancel that was asked for wins; otherwise the job goes back to the queue while it has
    attempts left, and fails (cancelling the steps after it) when it has none.
    """
    where = _fence(run) if orphaned else (*_fence(run), Job.lease_expires_at < now)
    error = ErrorInfo("LeaseExpired", "the worker stopped renewing its lease (crashed or cut off)")
    if _update(
        session,
        (*where, Job.cancel_requested_at.is_not(None)),
        status=JobStatus.CANCELLED,
        finished_at=now,
        updated_at=now,
        lease_expires_at=None,
        run_at=None,
    ):
        _note(
            session,
            run,
            now,
            JobStatus.RUNNING,
            JobStatus.CANCELLED,
            message="cancelled (worker lost)",
        )
        cancel_downstream(session, run.job_id, now, reason=f"upstream {run.job_id} cancelled")
        return JobStatus.CANCELLED
    if run.attempt >= max_attempts:
        if not _update(
            session,
            where,
            status=JobStatus.FAILED,
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
            run_at=None,
            **_error_columns(error),
        ):
            return JobStatus.RUNNING
        _note(session, run, now, JobStatus.RUNNING, JobStatus.FAILED, message=error.message)
        cancel_downstream(session, run.job_id, now, reason=f"upstream {run.job_id} failed")
        return JobStatus.FAILED
    if not _update(
        session,
        where,
        status=JobStatus.RETRYING,
        run_at=None,
        ready_since=now,  # due at once: its worker is gone, not its job
        updated_at=now,
        lease_expires_at=None,
        **_error_columns(error),
    ):
        return JobStatus.RUNNING
    _note(session, run, now, JobStatus.RUNNING, JobStatus.RETRYING, message=error.message)
    return JobStatus.RETRYING


# A job moves forward at most a few times (queued, running, finished) while a cancel looks.
_CANCEL_LOOKS = 4


def cancel(session: Session, job: Job, now: datetime) -> JobStatus:
    """Cancel a job that has not finished; a running one is asked to stop.

    Returns the job's status after the call: `cancelled`, `running` (the worker will stop
    it), or the terminal status it already had. `job` may be stale by the time its update
    runs (a worker claimed it, its run ended): the update then matches nothing, and the
    job is looked at again as it is now, so a cancel is neither lost nor noted twice.
    """
    for _ in range(_CANCEL_LOOKS):
        if job.status in TERMINAL:
            return job.status
        if job.status is JobStatus.RUNNING:
            if job.cancel_requested_at is not None or _request_stop(session, job, now):
                return JobStatus.RUNNING
        elif _cancel_before_run(session, job, now):
            return JobStatus.CANCELLED
        session.refresh(job)
    return job.status


def _request_stop(session: Session, job: Job, now: datetime) -> bool:
    """Ask the running attempt to stop (its heartbeat notices); False if it is not running."""
    if not _update(
        session,
        (
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.attempt == job.attempt,
            Job.cancel_requested_at.is_(None),
        ),
        cancel_requested_at=now,
        updated_at=now,
    ):
        return False
    session.add(
        _event(
            job.id,
            job.tenant_id,
            job.attempt,
            now,
            kind="cancel",
            message="cancel requested; waiting for the worker to stop",
        )
    )
    return True


def _cancel_before_run(session: Session, job: Job, now: datetime) -> bool:
    """Cancel a job that waits to run, and the steps after it; False if it no longer waits."""
    source = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.WAITING)
    _check(source, JobStatus.CANCELLED)
    if not _update(
        session,
        (Job.id == job.id, Job.status.in_(source)),
        status=JobStatus.CANCELLED,
        cancel_requested_at=now,
        finished_at=now,
        updated_at=now,
        # A job that never ran keeps its run_at: retried, it runs at the time it was
        # scheduled for. A retry's backoff is forgotten: retried by hand, it runs now.
        run_at=sa.case((Job.attempt == 0, Job.run_at), else_=None),
    ):
        return False
    _note(
        session,
        Attempt.of(job),
        now,
        job.status,
        JobStatus.CANCELLED,
        message="cancelled",
    )
    held = job.status is JobStatus.WAITING and job.join_id is not None
    cancel_downstream(session, job.id, now, reason=f"upstream {job.id} cancelled", held=held)
    return True


def confirm_cancelled(session: Session, run: Attempt, now: datetime) -> bool:
    """The worker stopped a run whose cancel was requested."""
    won = _finish_running(session, run, JobStatus.CANCELLED, now, message="cancelled while running")
    if won:
        cancel_downstream(session, run.job_id, now, reason=f"upstream {run.job_id} cancelled")
    return won


def requeue(
    session: Session,
    job: Job,
    extra_attempts: int,
    now: datetime,
    *,
    run_at: datetime,
) -> list[Job]:
    """Manual retry of a failed or cancelled job, with a fresh budget of attempts, due at
    `run_at` (now, or the time a job cancelled before it ran was scheduled for).

    The steps after it that were cancelled wait for it again. Returns the steps to
    dispatch (this one and the waiting ones after it), or [] if the job was not retryable.
    """
    source = (JobStatus.FAILED, JobStatus.CANCELLED)
    _check(source, JobStatus.QUEUED)
    if not _update(
        session,
        (Job.id == job.id, Job.status.in_(source)),
        status=JobStatus.QUEUED,
        max_attempts=job.attempt + extra_attempts,
        requeues=Job.requeues + 1,
        finished_at=None,
        run_at=run_at,
        ready_since=ready_at(run_at, now),
        cancel_requested_at=None,
        updated_at=now,
    ):
        return []
    _note(
        session,
        Attempt.of(job),
        now,
        job.status,
        JobStatus.QUEUED,
        message="retried by request",
    )
    later = _move_later_steps(
        session,
        job,
        JobStatus.CANCELLED,
        JobStatus.WAITING,
        now,
        message=f"upstream {job.id} retried",
        finished_at=None,
        cancel_requested_at=None,
    )
    session.flush()
    steps = [job, *later]
    for step in steps:
        session.refresh(step)
    return steps


@dataclass(frozen=True)
class Rerun:
    """A job of a workflow's stage to run again: its fresh budget of attempts, and
    whether it waits for a sibling to finish first (a map's past its concurrency)."""

    job: Job
    attempts: int
    held: bool = False


def retry_stage(
    session: Session, join: Job, attempts: int, reruns: Sequence[Rerun], now: datetime
) -> list[Job]:
    """Manual retry of a workflow from the gate `join`, cancelled or failed: the jobs of
    its stage that did not succeed (`reruns`) run again, `join` waits for them (or, with
    none, runs again itself), with a fresh budget of `attempts`, and the gates after it
    wait again. Returns the jobs to dispatch, or [] if `join` was not retryable (another
    retry took it first)."""
    _check(LOST, JobStatus.WAITING)
    if not reruns:
        return requeue(session, join, attempts, now, run_at=now)
    if not _update(
        session,
        (Job.id == join.id, Job.status.in_(LOST)),
        status=JobStatus.WAITING,
        max_attempts=join.attempt + attempts,
        waiting_on=len(reruns),
        children_failed=0,
        finished_at=None,
        cancel_requested_at=None,
        updated_at=now,
    ):
        return []
    _note(session, Attempt.of(join), now, join.status, JobStatus.WAITING, message="retried")
    for rerun in reruns:
        # The caller checked each had ended; one that changed since is another retry's.
        if not _rerun(session, rerun, now):
            raise JobConflict(f"job {rerun.job.id} was retried meanwhile")
    _move_later_steps(
        session, join, JobStatus.CANCELLED, JobStatus.WAITING, now,
        message=f"gate {join.id} retried", finished_at=None, cancel_requested_at=None,
    )  # fmt: skip
    return [rerun.job for rerun in reruns if not rerun.held]


def _rerun(session: Session, rerun: Rerun, now: datetime) -> bool:
    job = rerun.job
    target = JobStatus.WAITING if rerun.held else JobStatus.QUEUED
    _check([job.status], target)
    won = _update(
        session,
        (Job.id == job.id, Job.status == job.status),
        status=target,
        max_attempts=job.attempt + rerun.attempts,
        requeues=Job.requeues + 1,
        finished_at=None,
        run_at=now,
        ready_since=None if rerun.held else now,
        cancel_requested_at=None,
        updated_at=now,
    )
    if won:
        _note(session, Attempt.of(job), now, job.status, target, message="retried by request")
    return won


def ready_at(due: datetime, now: datetime) -> datetime | None:
    """A job due at `due` is ready from then on if that is now (or past); otherwise it is
    scheduled, and the dispatcher finds it when due (`ready.promote_due_statement`)."""
    return due if due <= now else None


def _note(
    session: Session,
    run: Attempt,
    now: datetime,
    source: JobStatus,
    target: JobStatus,
    *,
    message: str | None = None,
) -> None:
    """The event row of a transition, and its metric once it commits."""
    session.add(
        _event(
            run.job_id,
            run.tenant_id,
            run.attempt,
            now,
            source=source,
            target=target,
            message=message,
        )
    )
    if target in COUNTED:
        metrics.count(session, COUNTED[target], run.job_type)


def _finish_running(
    session: Session,
    run: Attempt,
    target: JobStatus,
    now: datetime,
    *,
    message: str | None = None,
    **values: Any,
) -> bool:
    _check([JobStatus.RUNNING], target)
    won = _update(
        session,
        _fence(run),
        status=target,
        finished_at=now,
        updated_at=now,
        lease_expires_at=None,
        run_at=None,  # a finished run is due nowhere
        **values,
    )
    if won:
        ran = _ran(run, now)
        metrics.count(session, str(target), run.job_type, ran)
        session.add(
            _event(
                run.job_id,
                run.tenant_id,
                run.attempt,
                now,
                source=JobStatus.RUNNING,
                target=target,
                message=message,
            )
        )
    return won


def _fence(run: Attempt) -> tuple[sa.ColumnElement[bool], ...]:
    return (Job.id == run.job_id, Job.attempt == run.attempt, Job.status == JobStatus.RUNNING)


def _error_columns(error: ErrorInfo) -> dict[str, Any]:
    traceback = error.traceback[-TRACEBACK_LIMIT:] if error.traceback else None
    return {"error_type": error.type, "error_message": error.message, "error_traceback": traceback}


def _update(session: Session, where: Iterable[sa.ColumnElement[bool]], **values: Any) -> bool:
    result = session.execute(
        sa.update(Job).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
