"""System jobs: the nightly archival, and the cron entry that schedules it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from orchestrator import JobContext, RetryPolicy, define_job
from orchestrator.archival import Archiver
from orchestrator.cron import define_cron_job
from orchestrator.settings import get_settings

ARCHIVE_JOB = "ARCHIVE_EXPIRED_JOBS"


class ArchiveInput(BaseModel):
    model_config = {"extra": "forbid"}

    dryRun: bool = False  # noqa: N815 - the API's field name


@define_job(
    ARCHIVE_JOB,
    input=ArchiveInput,
    retry=RetryPolicy(max_attempts=3, backoff="exponential", initial_delay=60, max_delay=900),
    time_limit=3600,
    public=False,
)
def archive_expired_jobs(ctx: JobContext, data: ArchiveInput) -> dict[str, Any]:
    """Archive finished jobs past their tenant's retention; the report is the result."""

    def progress(done: int, total: int) -> None:
        ctx.progress(min(done / total, 1.0) if total else 1.0, f"{done} of {total} jobs")

    archiver = Archiver(ctx.database, ctx.settings)
    report = archiver.run(dry_run=data.dryRun, job_id=ctx.job_id, progress=progress)
    return {
        "maintenanceRunId": report.run_id,
        "dryRun": report.dry_run,
        "archived": report.total,
        "perTenant": dict(report.per_tenant),
        "seconds": round(report.seconds, 3),
    }


# Nightly at 01:00 UTC unless ORCH_ARCHIVE_SCHEDULE says otherwise.
define_cron_job("nightly-archival", get_settings().archive_schedule, job_type=ARCHIVE_JOB)
