"""Every operation on jobs from Python, in-process: send (now, later, or inside your own
transaction), read, list, cancel and retry. Each takes the tenant it acts for and raises
what the HTTP API answers with: `UnknownJobType`, `InvalidInput` (one message per field),
`JobNotFound` (also for another tenant's job), `JobArchived`, `JobConflict`,
`IdempotencyConflict`.

They use this process's runtime (the `ORCH_*` settings); services in another process use
the HTTP API (`orchestrator.client`) instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from orchestrator.runtime import Runtime
from orchestrator.service import DEFAULT_PRIORITY, JobDetails, JobFilter, NewJob, Page
from orchestrator.states import JobStatus

JsonObject = dict[str, object]


def send_job(
    type: str,  # noqa: A002 - mirrors the API's field name
    input: JsonObject | None = None,  # noqa: A002
    *,
    tenant_id: str,
    subject: str | None = None,
    idempotency_key: str | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    priority: int = DEFAULT_PRIORITY,
    created_by: str | None = None,
    session: Session | None = None,
) -> JobDetails:
    """Record a job (and the pipeline steps after it) and dispatch it; the job as it is
    then (inline dispatch has run it already).

    - `idempotency_key`: a repeat with the same key and request answers with the first
      job; the same key with another request raises `IdempotencyConflict`.
    - `delay` (seconds, or a `timedelta`) or `run_at` (an aware `datetime`): run it later.
    - `priority`: 1 to 10, higher runs sooner among the tenant's ready jobs.
    - `session`: your SQLAlchemy session on the orchestrator's database. The job is
      recorded in your transaction and runs only once it commits; a rollback leaves no
      job. It is not committed here, and the answer is the job as recorded (`queued`).
    """
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    request = NewJob(
        tenant_id=tenant_id,
        type=type,
        input=dict(input or {}),
        subject=subject,
        created_by=created_by,
        idempotency_key=idempotency_key,
        delay_seconds=seconds,
        run_at=run_at,
        priority=priority,
    )
    service = Runtime.current().service
    if session is not None:
        return service.create_in(session, request)
    return service.get(tenant_id, service.create(request).details.job.id)


def schedule_job(
    type: str,  # noqa: A002 - mirrors the API's field name
    input: JsonObject | None = None,  # noqa: A002
    *,
    tenant_id: str,
    at: datetime | None = None,
    delay: float | timedelta | None = None,
    subject: str | None = None,
    idempotency_key: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    session: Session | None = None,
) -> JobDetails:
    """`send_job` for later, said so: at `at`, or after `delay`; one of the two."""
    if (at is None) == (delay is None):
        raise TypeError("schedule_job takes either at= or delay=")
    return send_job(
        type,
        input,
        tenant_id=tenant_id,
        run_at=at,
        delay=delay,
        subject=subject,
        idempotency_key=idempotency_key,
        priority=priority,
        session=session,
    )


def get_job(job_id: str, *, tenant_id: str) -> JobDetails:
    """The job and its pipeline; `JobNotFound` for an unknown id or another tenant's job."""
    return Runtime.current().service.get(tenant_id, job_id)


def list_jobs(
    *,
    tenant_id: str,
    status: JobStatus | str | None = None,
    type: str | None = None,  # noqa: A002 - mirrors the API's filter
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """The tenant's jobs, newest first, `limit` (1 to 100) at a time; pass the page's
    `next_cursor` back as `cursor` for the next one."""
    filters = JobFilter(status=JobStatus(status) if status is not None else None, type=type)
    return Runtime.current().service.list_jobs(tenant_id, filters, limit=limit, cursor=cursor)


def cancel_job(job_id: str, *, tenant_id: str) -> JobDetails:
    """Cancel the job and the steps after it. A waiting job is `cancelled` on return; a
    running one is asked to stop (`cancel_requested_at` set) and stops within a heartbeat.
    `JobConflict` if it already succeeded or failed."""
    return Runtime.current().service.cancel(tenant_id, job_id)


def retry_job(job_id: str, *, tenant_id: str, run_now: bool = False) -> JobDetails:
    """Run a `failed` or `cancelled` job again, with a fresh budget of attempts, and its
    later steps; `JobConflict` for any other state."""
    return Runtime.current().service.retry(tenant_id, job_id, run_now=run_now)


def retry_failed_jobs(*, tenant_id: str, type: str | None = None, limit: int = 100) -> list[str]:  # noqa: A002
    """Retry the tenant's dead letters (its `failed` jobs, of `type` if given), up to
    `limit` (1,000 at most); the ids retried."""
    service = Runtime.current().service
    return service.retry_failed(tenant_id, JobFilter(type=type), limit=limit)
