"""Ready jobs: claimable, due, and not yet admitted into the broker's window.

A job is ready when it is claimable and due (`ready_since` set: `models.READY_SQL`). The
reads here are what a fill looks at: which queues and tenants have ready jobs, and each
tenant's next ones in the order they go (higher priority first, then the longest ready).
They are on a fill's hot path, so each is one index scan, and on PostgreSQL a queue's
tenants and their next jobs come in one statement.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import window
from orchestrator.models import READY_SQL, SCHEDULED_SQL, Job

JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
_COLUMNS = (
    JOBS.c.id,
    JOBS.c.tenant_id,
    JOBS.c.type,
    JOBS.c.queue,
    JOBS.c.priority,
    JOBS.c.attempt,
    JOBS.c.run_at,
    JOBS.c.trace_context,
)


@dataclass(frozen=True)
class ReadyJob:
    """A ready job as admission sees it."""

    id: str
    tenant_id: str
    type: str
    queue: str
    priority: int
    attempt: int
    run_at: datetime | None
    trace: str | None

    @classmethod
    def of(cls, job: Job) -> ReadyJob:
        return cls(
            job.id,
            job.tenant_id,
            job.type,
            job.queue,
            job.priority,
            job.attempt,
            job.run_at,
            job.trace_context,
        )


class ReadyJobs:
    """A queue's ready jobs, tenant by tenant, as a fill takes them.

    Each tenant's first few (`per_tenant`) are read at once; a tenant whose first ones
    run out while the fill still wants its jobs has more read then. So a fill over many
    tenants reads about the jobs it admits, and one over a single flooding tenant reads
    that tenant's next window's worth, never its backlog.
    """

    def __init__(self, session: Session, queue: str, per_tenant: int) -> None:
        self.session = session
        self.queue = queue
        self.per_tenant = per_tenant
        self._jobs: dict[str, deque[ReadyJob]] = {}
        for job in _first_jobs(session, queue, per_tenant):
            self._jobs.setdefault(job.tenant_id, deque()).append(job)
        self._more = {t for t, jobs in self._jobs.items() if len(jobs) == per_tenant}
        # The ids read so far, per tenant: a second read leaves them out.
        self._read = {t: [job.id for job in jobs] for t, jobs in self._jobs.items()}

    @property
    def tenants(self) -> list[str]:
        return list(self._jobs)

    def next(self, tenant_id: str, wanted: int) -> ReadyJob | None:
        """The tenant's next job; `wanted`: how many the fill may still take, read at once
        if its first ones ran out."""
        jobs = self._jobs.get(tenant_id)
        if jobs is None:
            return None
        if not jobs and tenant_id in self._more:
            more = candidates(
                self.session, self.queue, tenant_id, wanted, exclude=self._read[tenant_id]
            )
            jobs.extend(more)
            self._read[tenant_id] += [job.id for job in more]
            if len(more) < wanted:
                self._more.discard(tenant_id)
        return jobs.popleft() if jobs else None


def per_tenant_guess(free: int, tenants: int) -> int:
    """How many of each tenant's jobs a fill reads first: its share of the room, and one
    more, so that an uneven fill rarely has to read again."""
    return max(1, math.ceil(free / max(tenants, 1))) + 1


def next_due(session: Session) -> datetime | None:
    """When the first scheduled job comes due (one probe of the scheduled jobs' index)."""
    first: datetime | None = session.scalar(
        sa.select(sa.func.min(JOBS.c.run_at)).where(sa.text(SCHEDULED_SQL))
    )
    return first


def promote_due_statement(until: datetime) -> sa.Update:
    """Scheduled jobs (a delay, a retry's backoff) due by `until` become ready, their
    queues returned. Not a change of status: the job is as claimable as before, now also
    due. A fill's first statement runs it."""
    return (
        sa.update(JOBS)
        .where(sa.text(SCHEDULED_SQL), JOBS.c.run_at <= until)
        .values(ready_since=JOBS.c.run_at)
        .returning(JOBS.c.queue)
        .execution_options(synchronize_session=False)
    )


# Distinct values of a leading index column, one index probe each (a loose index scan):
# reading them with DISTINCT would walk a flood's every ready job.
_READY_QUEUES_SQL = f"""
    WITH RECURSIVE q(queue) AS (
        SELECT MIN(queue) FROM jobs WHERE {READY_SQL}
        UNION ALL
        SELECT (SELECT MIN(queue) FROM jobs WHERE {READY_SQL} AND queue > q.queue)
        FROM q WHERE q.queue IS NOT NULL
    )
    SELECT queue FROM q WHERE queue IS NOT NULL
"""  # noqa: S608 (constants, no input)
_READY_QUEUES = sa.text(_READY_QUEUES_SQL)
_TENANTS_CTE = f"""
    WITH RECURSIVE t(tenant_id) AS (
        SELECT MIN(tenant_id) FROM jobs WHERE {READY_SQL} AND queue = :queue
        UNION ALL
        SELECT (
            SELECT MIN(tenant_id) FROM jobs
            WHERE {READY_SQL} AND queue = :queue AND tenant_id > t.tenant_id
        )
        FROM t WHERE t.tenant_id IS NOT NULL
    )
"""  # noqa: S608 (constants, no input)
_READY_TENANTS = sa.text(
    f"{_TENANTS_CTE} SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL"  # noqa: S608
)
# PostgreSQL: each tenant's next jobs beside it, one index scan per tenant.
_FIRST_JOBS = sa.text(
    f"""
    {_TENANTS_CTE}
    SELECT j.id, j.tenant_id, j.type, j.queue, j.priority, j.attempt, j.run_at,
           j.trace_context
    FROM t CROSS JOIN LATERAL (
        SELECT * FROM jobs
        WHERE {READY_SQL} AND queue = :queue AND jobs.tenant_id = t.tenant_id
          AND NOT EXISTS (
              SELECT 1 FROM dispatch_window w
              WHERE w.job_id = jobs.id AND w.attempt = jobs.attempt
          )
        ORDER BY priority DESC, ready_since, id
        LIMIT :per_tenant
    ) j
    WHERE t.tenant_id IS NOT NULL
    ORDER BY j.tenant_id, j.priority DESC, j.ready_since, j.id
    """  # noqa: S608 (constants, no input)
).columns(*_COLUMNS)


def ready_queues(session: Session) -> list[str]:
    return list(session.scalars(_READY_QUEUES))


def ready_queues_column(promoted: str | None = None) -> sa.ColumnElement[Any]:
    """The queues with ready jobs as one array value (PostgreSQL), to be read beside
    other things in one statement; `promoted`: the name of that statement's CTE that
    promotes due jobs, returning their queues (which its snapshot cannot see ready)."""
    # Constants and a CTE's name from the caller, no input.
    union = f" UNION SELECT queue FROM {promoted}" if promoted else ""  # noqa: S608
    return sa.literal_column(f"ARRAY(SELECT queue FROM ({_READY_QUEUES_SQL}) ready{union})")  # noqa: S608


def ready_tenants(session: Session, queue: str) -> list[str]:
    return list(session.scalars(_READY_TENANTS, {"queue": queue}))


def _first_jobs(session: Session, queue: str, per_tenant: int) -> list[ReadyJob]:
    """Each tenant's first `per_tenant` ready jobs in the queue (SQLite, which has no
    LATERAL, asks tenant by tenant)."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(_FIRST_JOBS, {"queue": queue, "per_tenant": per_tenant})
        return [ReadyJob(*row) for row in rows]
    return [
        job
        for tenant_id in ready_tenants(session, queue)
        for job in candidates(session, queue, tenant_id, per_tenant)
    ]


def candidates(
    session: Session, queue: str, tenant_id: str, limit: int, exclude: Sequence[str] = ()
) -> list[ReadyJob]:
    """A tenant's next ready jobs in a queue, in the order they go, none admitted yet (and
    none of `exclude`, read already)."""
    query = (
        sa.select(*_COLUMNS)
        .where(
            sa.text(READY_SQL),
            JOBS.c.queue == queue,
            JOBS.c.tenant_id == tenant_id,
            window.not_admitted(),
        )
        .order_by(JOBS.c.priority.desc(), JOBS.c.ready_since, JOBS.c.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(JOBS.c.id.not_in(list(exclude)))
    return [ReadyJob(*row) for row in session.execute(query)]
