"""What operators see and do across tenants (the `/ops` pages): each tenant's failure rate,
jobs scheduled for later, search by id or subject, dead letters, and two actions: run a
scheduled job now, and discard dead letters (archived now: out of the list, kept on
record). Status changes stay in the state machine (`transitions`); neither action is one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.ids import ID_PATTERN
from orchestrator.models import SCHEDULED_SQL, UNARCHIVED_SQL, Job
from orchestrator.states import JobStatus
from orchestrator.text import text_problem

PAGE = 100
FAILURE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Outcomes:
    succeeded: int = 0
    failed: int = 0

    @property
    def failure_rate(self) -> float | None:
        finished = self.succeeded + self.failed
        return self.failed / finished if finished else None


def outcomes_by_tenant(database: Database, now: datetime) -> dict[str, Outcomes]:
    """Jobs that succeeded or failed in the last hour, per tenant (one range of the
    finished jobs' index: its cost is the whole system's hour, an operator's page)."""
    with database.session() as session:
        rows = session.execute(
            sa.select(Job.tenant_id, Job.status, sa.func.count())
            .where(
                sa.text(UNARCHIVED_SQL),
                Job.finished_at >= now - FAILURE_WINDOW,
                Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED]),
            )
            .group_by(Job.tenant_id, Job.status)
        ).all()
    counts: defaultdict[str, Counter[JobStatus]] = defaultdict(Counter)
    for tenant, status, count in rows:
        counts[tenant][JobStatus(status)] = count
    return {
        tenant: Outcomes(c[JobStatus.SUCCEEDED], c[JobStatus.FAILED])
        for tenant, c in counts.items()
    }


def scheduled(database: Database, limit: int = PAGE) -> list[Job]:
    """Jobs waiting for a time (a delay, a retry's backoff), soonest first."""
    with database.session() as session:
        query = sa.select(Job).where(sa.text(SCHEDULED_SQL)).order_by(Job.run_at, Job.id)
        return list(session.scalars(query.limit(limit)))


def search(database: Database, text: str, limit: int = PAGE) -> list[Job]:
    """The job with this id, or the jobs about this subject (any tenant), newest first:
    each an index probe (the primary key, `ix_jobs_subject`)."""
    text = text.strip()
    if not text or text_problem(text):  # no job's id or subject holds a NUL or a surrogate
        return []
    with database.session() as session:
        if ID_PATTERN.fullmatch(text) and (job := session.get(Job, text)) is not None:
            return [job]
        query = sa.select(Job).where(Job.subject == text, Job.subject.is_not(None))
        return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def dead_letters(database: Database, limit: int = PAGE) -> list[Job]:
    """Failed jobs not archived, any tenant, newest first."""
    with database.session() as session:
        query = sa.select(Job).where(Job.status == JobStatus.FAILED, sa.text(UNARCHIVED_SQL))
        return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def run_now(database: Database, job_id: str, now: datetime) -> bool:
    """A scheduled job becomes due now (the dispatcher admits it at its next look); false
    if it was not waiting for a time (it ran, or became due, meanwhile)."""
    with database.transaction() as session:
        moved = session.execute(
            sa.update(Job)
            .where(Job.id == job_id, sa.text(SCHEDULED_SQL), Job.run_at > now)
            .values(run_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(moved.rowcount)  # type: ignore[attr-defined]


def discard(database: Database, job_ids: Sequence[str], now: datetime) -> list[str]:
    """Dead letters out of the list: archived now, kept on record (the API answers 410
    for them, as for any archived job). Only jobs still failed and not archived."""
    if not job_ids:
        return []
    with database.transaction() as session:
        archived = session.execute(
            sa.update(Job)
            .where(
                Job.id.in_(list(job_ids)),
                Job.status == JobStatus.FAILED,
                sa.text(UNARCHIVED_SQL),
            )
            .values(archived_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return [job_id for (job_id,) in archived]
