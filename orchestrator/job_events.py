"""A job's history: the event rows beside its transitions, and the writes that are events
only (a handler's log line, a skipped delivery, a refused late result).

None of these touches the job's row; `orchestrator.transitions` does, and writes each
transition's own event through `event` here, in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.models import Job, JobEvent
from orchestrator.states import Attempt, JobStatus


def event(
    job_id: str,
    tenant_id: str,
    attempt: int,
    now: datetime,
    *,
    kind: str = "transition",
    source: JobStatus | None = None,
    target: JobStatus | None = None,
    level: str | None = None,
    message: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        tenant_id=tenant_id,
        attempt=attempt,
        at=now,
        kind=kind,
        from_status=source,
        to_status=target,
        level=level,
        message=message,
        data=data,
    )


def log(
    session: Session,
    run: Attempt,
    level: str,
    message: str,
    now: datetime,
    *,
    data: dict[str, Any] | None = None,
) -> None:
    """A handler's log line; not fenced, since a late line harms nothing and helps debugging."""
    session.add(
        event(
            run.job_id,
            run.tenant_id,
            run.attempt,
            now,
            kind="log",
            level=level,
            message=message,
            data=data,
        )
    )


def note_skipped_delivery(
    session: Session,
    job: Job,
    now: datetime,
    *,
    reason: str,
    detail: str,
    delivery: dict[str, Any] | None = None,
) -> None:
    """A delivery that ran nothing, and why (`reason`, a `runner.SkipReason`)."""
    data: dict[str, Any] = {"reason": reason, **({"delivery": delivery} if delivery else {})}
    session.add(
        event(
            job.id,
            job.tenant_id,
            job.attempt,
            now,
            kind="delivery",
            level="INFO",
            message=f"delivery skipped: {detail}",
            data=data,
        )
    )


def note_refused_result(session: Session, run: Attempt, now: datetime, outcome: str) -> None:
    """A stale attempt finished after losing the job: say so in the job's history."""
    session.add(
        event(
            run.job_id,
            run.tenant_id,
            run.attempt,
            now,
            kind="fenced",
            level="WARNING",
            message=f"attempt {run.attempt} finished ({outcome}) after losing its lease; "
            "its result was refused",
        )
    )
