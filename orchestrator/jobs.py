"""Module-level operations for Python code that creates and reads jobs in-process.

They use this process's runtime (the `ORCH_*` settings); services in another process use
the HTTP API instead.
"""

from __future__ import annotations

from typing import Any

from orchestrator.runtime import Runtime
from orchestrator.service import DEFAULT_PRIORITY, JobDetails, NewJob


def send_job(
    type: str,  # noqa: A002 - mirrors the API's field name
    input: dict[str, Any] | None = None,  # noqa: A002
    *,
    tenant_id: str,
    subject: str | None = None,
    created_by: str | None = None,
    priority: int = DEFAULT_PRIORITY,
) -> JobDetails:
    """Record a job (and the pipeline steps after it) and dispatch it; the job as it is
    then (inline dispatch has run it already). `priority`: 1 to 10, higher runs sooner
    among the tenant's ready jobs."""
    request = NewJob(
        tenant_id=tenant_id,
        type=type,
        input=input or {},
        subject=subject,
        created_by=created_by,
        priority=priority,
    )
    service = Runtime.current().service
    return service.get(tenant_id, service.create(request).details.job.id)


def get_job(job_id: str, *, tenant_id: str) -> JobDetails:
    """The job and its pipeline; `JobNotFound` for an unknown id or another tenant's job."""
    return Runtime.current().service.get(tenant_id, job_id)
