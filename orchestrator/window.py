"""The dispatch window: what was admitted into the broker and not yet claimed.

A row per admitted job (`models.WindowEntry`). Its id numbers the delivery. Rows are
written in the transaction that admits the job (the dispatcher's fill, or a creation's
fast path), so a job is admitted once whoever admits it (the job id is unique here), and
are dropped once the job was claimed (`forget_claimed`), or when its delivery went
missing or was refused (`withdraw`): the job is then ready again and admitted anew.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.dispatch.base import Delivery
from orchestrator.models import Job, WindowEntry
from orchestrator.states import CLAIMABLE

WINDOW: sa.Table = WindowEntry.__table__  # type: ignore[assignment]
JOBS: sa.Table = Job.__table__  # type: ignore[assignment]


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


@dataclass(frozen=True)
class Entry:
    number: int
    job_id: str
    queue: str
    admitted_at: datetime
    not_before: datetime | None

    def delivery_id(self) -> str:
        return f"{self.job_id}-d{self.number}"


def admit(
    session: Session, jobs: Sequence[ReadyJob], now: datetime, *, ahead: bool = False
) -> list[Delivery]:
    """Record these jobs as admitted; their deliveries, numbered. `ahead`: jobs due later
    are sent with their time (push modes)."""
    if not jobs:
        return []
    rows = [
        {
            "job_id": job.id,
            "queue": job.queue,
            "tenant_id": job.tenant_id,
            "attempt": job.attempt,
            "admitted_at": now,
            "not_before": _not_before(job, now, ahead=ahead),
        }
        for job in jobs
    ]
    numbers = session.execute(
        sa.insert(WINDOW).returning(WINDOW.c.id, sort_by_parameter_order=True), rows
    ).scalars()
    return [
        Delivery(
            job_id=job.id,
            type=job.type,
            queue=job.queue,
            number=number,
            priority=job.priority,
            not_before=_not_before(job, now, ahead=ahead),
            trace=job.trace,
            tenant_id=job.tenant_id,
        )
        for job, number in zip(jobs, numbers, strict=True)
    ]


def _not_before(job: ReadyJob, now: datetime, *, ahead: bool) -> datetime | None:
    return job.run_at if ahead and job.run_at is not None and job.run_at > now else None


def forget_claimed(session: Session) -> int:
    """Drop the rows of jobs claimed since they were admitted (or cancelled, or moved on
    to a later attempt): a claim does not touch the window, which keeps it one statement.
    Returns how many."""
    current = sa.exists().where(
        JOBS.c.id == WINDOW.c.job_id,
        JOBS.c.status.in_(sorted(CLAIMABLE)),
        JOBS.c.attempt == WINDOW.c.attempt,
    )
    result = session.execute(sa.delete(WINDOW).where(~current))
    return int(result.rowcount)  # type: ignore[attr-defined]


def withdraw(session: Session, numbers: Iterable[int]) -> None:
    """Take these deliveries back (their send failed, or they went missing): their jobs are
    ready to be admitted again."""
    wanted = list(numbers)
    if wanted:
        session.execute(sa.delete(WINDOW).where(WINDOW.c.id.in_(wanted)))


def entries(session: Session) -> list[Entry]:
    rows = session.execute(
        sa.select(
            WINDOW.c.id,
            WINDOW.c.job_id,
            WINDOW.c.queue,
            WINDOW.c.admitted_at,
            WINDOW.c.not_before,
        )
    ).all()
    return [Entry(*row) for row in rows]


def per_queue(session: Session) -> Counter[str]:
    return Counter(
        dict(
            session.execute(
                sa.select(WINDOW.c.queue, sa.func.count()).group_by(WINDOW.c.queue)
            ).all()
        )
    )


def per_tenant(session: Session) -> Counter[str]:
    rows = session.execute(
        sa.select(WINDOW.c.tenant_id, sa.func.count()).group_by(WINDOW.c.tenant_id)
    ).all()
    return Counter(dict(rows))


def not_admitted() -> sa.ColumnElement[bool]:
    """For a query over jobs: the job has no entry in the window."""
    return ~sa.exists().where(WINDOW.c.job_id == JOBS.c.id)
