"""The statements of the workers' hot path (a claim, a success), built once.

Building a SQLAlchemy statement costs more than running it: a claim's CTE took about a
millisecond of Python to put together. These are built on first use with bind parameters
and then reused, so a run only binds its values and finds the compiled form in the cache.
Constants (states, kinds) stay bind parameters as well: written into the SQL, a `status =
'running'` let PostgreSQL plan the success from statistics taken while no job ran and read
the job through a status index, whose dead entries grow with every run, instead of by its
primary key (tests/db/test_transitions.py checks the plans it keeps).

On PostgreSQL each is a single statement: data-modifying CTEs write the event rows beside
the job rows (and a claim reads the upstream step's result), so a claim and a success take
one round trip each. SQLite, which has no data-modifying CTEs, runs the job-row statements
here and `orchestrator.transitions` adds the events in the same transaction.

Only `orchestrator.transitions` executes these (hence the name): it stays the one module
that changes status.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from orchestrator.models import Job, JobEvent, UTCDateTime, WindowEntry
from orchestrator.states import JobStatus
from orchestrator.window import nobody_waits_sql

JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
EVENTS: sa.Table = JobEvent.__table__  # type: ignore[assignment]
WINDOW: sa.Table = WindowEntry.__table__  # type: ignore[assignment]

# Bind parameters, named apart from the columns (SQLAlchemy reserves those in SET clauses);
# callers pass their values under these names.
JOB_ID = sa.bindparam("b_job_id", type_=JOBS.c.id.type)
ATTEMPT = sa.bindparam("b_attempt", type_=JOBS.c.attempt.type)
SOURCE = sa.bindparam("b_source", type_=JOBS.c.status.type)
NOW = sa.bindparam("b_now", type_=UTCDateTime())
DUE_BY = sa.bindparam("b_due_by", type_=UTCDateTime())
LEASE_UNTIL = sa.bindparam("b_lease_until", type_=UTCDateTime())
TRACE = sa.bindparam("b_trace", type_=JOBS.c.trace_context.type)
WORKER = sa.bindparam("b_claimer", type_=JOBS.c.worker.type)
RESULT = sa.bindparam("b_outcome", type_=JOBS.c.result.type)
EVENT_DATA = sa.bindparam("b_event_data", type_=EVENTS.c.data.type)
NEXT_MESSAGE = sa.bindparam("b_next_message", type_=EVENTS.c.message.type)
ADMIT = sa.bindparam("b_admit", type_=sa.Boolean())

_CHANGED = (JOBS.c.id, JOBS.c.tenant_id, JOBS.c.attempt)
# What a released step's delivery needs, when the success admits it.
_STEP_COLUMNS = (*_CHANGED, JOBS.c.type, JOBS.c.queue, JOBS.c.priority, JOBS.c.trace_context)


def _claim_where(narrowed: bool) -> list[sa.ColumnElement[bool]]:
    where = [
        JOBS.c.id == JOB_ID,
        JOBS.c.status == SOURCE,
        JOBS.c.archived_at.is_(None),
        sa.or_(JOBS.c.run_at.is_(None), JOBS.c.run_at <= DUE_BY),
    ]
    if narrowed:  # the caller read the row: only that attempt may be claimed
        where.append(JOBS.c.attempt == ATTEMPT)
    return where


_CLAIM_VALUES: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "attempt": JOBS.c.attempt + 1,
    "worker": WORKER,
    "started_at": NOW,
    "lease_expires_at": LEASE_UNTIL,
    # run_at and ready_since stay: when the job was due (the API's runAt, and the start of
    # its queue wait); the new status takes it out of the ready index.
    "updated_at": NOW,
}

SUCCESS_VALUES: dict[str, Any] = {
    "status": JobStatus.SUCCEEDED,
    "finished_at": NOW,
    "updated_at": NOW,
    "lease_expires_at": None,
    "run_at": None,  # a finished job is due nowhere (it kept its last retry's time)
    "result": RESULT,
    "progress": 1.0,
    # A success clears the error an earlier attempt left; the events keep the history.
    "error_type": None,
    "error_message": None,
    "error_traceback": None,
}

_FENCE = (JOBS.c.id == JOB_ID, JOBS.c.attempt == ATTEMPT, JOBS.c.status == JobStatus.RUNNING)

# The step after a succeeded run: waiting -> queued, ready now that its upstream is done
# (its outbox entry: the dispatcher admits it), in the trace of the run that released it.
_NEXT_STEP_WHERE = (JOBS.c.parent_id == JOB_ID, JOBS.c.status == JobStatus.WAITING)
_NEXT_STEP_VALUES: dict[str, Any] = {
    "status": JobStatus.QUEUED,
    "updated_at": NOW,
    "ready_since": NOW,
    "trace_context": TRACE,
}


# What a claim hands back: what the runner and the job's context read, and `_waited`.
CLAIMED_COLUMNS = (
    "id",
    "tenant_id",
    "type",
    "subject",
    "input",
    "status",
    "attempt",
    "max_attempts",
    "parent_id",
    "join_id",
    "step",
    "priority",
    "run_at",
    "ready_since",
    "trace_context",
    "created_at",
    "started_at",
)


@cache
def claim_postgresql(narrowed: bool) -> sa.Select[Any]:
    """Claim, write the event, read the upstream result: one row of `CLAIMED_COLUMNS` and
    `upstream_result`, or none."""
    claimed = (
        sa.update(JOBS)
        .where(*_claim_where(narrowed))
        .values(**_CLAIM_VALUES)
        .returning(*(JOBS.c[name] for name in CLAIMED_COLUMNS))
        .cte("claimed")
    )
    event = _event_rows(claimed, SOURCE, JobStatus.RUNNING, data=EVENT_DATA)
    upstream = JOBS.alias("upstream")
    return (
        sa.select(claimed, upstream.c.result.label("upstream_result"))
        .outerjoin(upstream, upstream.c.id == claimed.c.parent_id)
        .add_cte(_insert_events(event))
    )


@cache
def claim_update(narrowed: bool) -> sa.Update:
    """The claim alone (SQLite); RETURNING the claimed Job."""
    return sa.update(Job).where(*_claim_where(narrowed)).values(**_CLAIM_VALUES).returning(Job)


@cache
def succeed_postgresql(has_next: bool) -> sa.Select[Any]:
    """Finish the fenced run, queue the next step, write both events; when `b_admit` is
    true and no ready job of its queue waits outside the window, admit the next step too
    (`_admit_step`). One row: `finished`, the count of runs finished (1, or 0 for a
    superseded attempt), and the admitted step's delivery (`number`, `job_id`, `type`,
    `queue`, `priority`, `trace`, `tenant_id`), null unless it was admitted."""
    done = sa.update(JOBS).where(*_FENCE).values(**SUCCESS_VALUES).returning(*_CHANGED).cte("done")
    events = [_event_rows(done, JobStatus.RUNNING, JobStatus.SUCCEEDED)]
    finished = sa.select(sa.func.count()).select_from(done).scalar_subquery().label("finished")
    if not has_next:
        return sa.select(finished).add_cte(_insert_events(*events))
    # Runs only if the fenced update won: `done` is empty otherwise.
    step = (
        sa.update(JOBS)
        .where(*_NEXT_STEP_WHERE, sa.exists(sa.select(done.c.id)))
        .values(**_NEXT_STEP_VALUES)
        .returning(*_STEP_COLUMNS)
        .cte("next_step")
    )
    events.append(_event_rows(step, JobStatus.WAITING, JobStatus.QUEUED, message=NEXT_MESSAGE))
    admitted = _admit_step(step)
    delivery = (
        sa.select(
            admitted.c.id.label("number"),
            step.c.id.label("job_id"),
            step.c.type,
            step.c.queue,
            step.c.priority,
            step.c.trace_context.label("trace"),
            step.c.tenant_id,
        )
        .join_from(admitted, step, step.c.id == admitted.c.job_id)
        .subquery("delivery")
    )
    one = sa.select(sa.literal(1).label("one")).subquery("one")
    return (
        sa.select(finished, *delivery.c)
        .select_from(one.outerjoin(delivery, sa.true()))
        .add_cte(_insert_events(*events))
    )


def _admit_step(step: sa.CTE) -> sa.CTE:
    """The released step into the dispatch window, with the success, if the worker found
    its queue's window with room (`b_admit`) and no ready job of that queue waits outside
    the window (`window.nobody_waits_sql`): admitting it passes nobody, so no fill is
    needed to be fair."""
    # The step itself is not ready in the statement's snapshot: it does not count.
    uncontended = sa.text(nobody_waits_sql("next_step.queue"))
    rows = sa.select(step.c.id, step.c.queue, step.c.tenant_id, step.c.attempt, NOW).where(
        ADMIT, uncontended
    )
    columns = ["job_id", "queue", "tenant_id", "attempt", "admitted_at"]
    return (
        postgresql.insert(WINDOW)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["job_id", "attempt"])
        .returning(WINDOW.c.id, WINDOW.c.job_id)
        .cte("admitted")
    )


@cache
def succeed_update() -> sa.Update:
    """The fenced success alone (SQLite)."""
    return sa.update(JOBS).where(*_FENCE).values(**SUCCESS_VALUES)


@cache
def release_next_step() -> sa.Update:
    """The next step alone (SQLite); RETURNING the rows that need an event."""
    return sa.update(JOBS).where(*_NEXT_STEP_WHERE).values(**_NEXT_STEP_VALUES).returning(*_CHANGED)


def _event_rows(
    changed: sa.CTE,
    source: JobStatus | sa.BindParameter[Any],
    target: JobStatus,
    *,
    message: sa.BindParameter[Any] | None = None,
    data: sa.BindParameter[Any] | None = None,
) -> sa.Select[Any]:
    """One transition event per row that `changed` (an `UPDATE ... RETURNING`) returned."""
    columns = EVENTS.c

    def typed(value: Any, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        if isinstance(value, sa.BindParameter):
            return sa.type_coerce(value, column.type)
        return sa.literal(value, column.type)

    return sa.select(
        changed.c.id.label("job_id"),
        changed.c.tenant_id,
        changed.c.attempt,
        typed(NOW, columns.at).label("at"),
        sa.literal("transition", columns.kind.type).label("kind"),
        typed(source, columns.from_status).label("from_status"),
        typed(target, columns.to_status).label("to_status"),
        typed(message, columns.message).label("message"),
        typed(data, columns.data).label("data"),
    )


def _insert_events(*rows: sa.Select[Any]) -> sa.CTE:
    """`INSERT ... SELECT` of event rows, as a CTE; their ids follow the order given."""
    if len(rows) == 1:
        ordered: sa.Select[Any] = rows[0]
    else:
        numbered = [r.add_columns(sa.literal(n).label("n")) for n, r in enumerate(rows)]
        union = sa.union_all(*numbered).subquery()
        ordered = sa.select(*[c for c in union.c if c.key != "n"]).order_by(union.c.n)
    names = [str(c.key) for c in ordered.selected_columns]
    return sa.insert(EVENTS).from_select(names, ordered).cte("events")


@cache
def create_postgresql() -> sa.TextualSelect:
    """Insert a list of job rows (one JSON array, so the statement is the same whatever the
    count) and their `created` events: one statement for a job or a batch of a thousand.
    One row: how many jobs it created (a select, so that `Database.first_row` can run it)."""
    columns = ", ".join(column.name for column in JOBS.c)
    return (
        sa.text(
            f"""
            WITH created AS (
                INSERT INTO jobs ({columns})
                SELECT {columns} FROM jsonb_populate_recordset(NULL::jobs, CAST(:b_rows AS jsonb))
                RETURNING id, tenant_id, status
            ), events AS (
                INSERT INTO job_events (job_id, tenant_id, attempt, at, kind, to_status, message)
                SELECT id, tenant_id, 0, :b_now, 'transition', status, 'created' FROM created
            )
            SELECT count(*) AS created FROM created
            """  # noqa: S608 (the column names come from the model, not from input)
        )
        .bindparams(sa.bindparam("b_rows", type_=sa.Text()), sa.bindparam("b_now", type_=NOW.type))
        .columns(created=sa.Integer())
    )
