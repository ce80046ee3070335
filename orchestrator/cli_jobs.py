"""`orchestrator jobs ...`: a tenant's jobs from the shell. Tables for people, `--json` for
scripts (the API's own JSON shapes), one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import click

from orchestrator.runtime import Runtime
from orchestrator.service import JobDetails, JobFilter
from orchestrator.settings import get_settings
from orchestrator.states import JobStatus

STATUSES = [status.value for status in JobStatus]


def _runtime() -> Runtime:
    return Runtime.build(get_settings())


def _as_json(details: JobDetails) -> str:
    from api.schemas import JobOut  # noqa: PLC0415 - the API's shape, without its server

    return JobOut.of_details(details).model_dump_json()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


@click.group()
def jobs() -> None:
    """A tenant's jobs: list, show, retry, cancel."""


tenant_option = click.option("--tenant", required=True, help="The tenant the jobs belong to.")
json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")


@jobs.command("list")
@tenant_option
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--type", "job_type", default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", default=None, help="nextCursor of the previous page.")
@json_option
def list_jobs(  # noqa: PLR0917 - click passes one argument per option
    tenant: str,
    status: str | None,
    job_type: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Newest first."""
    page = _runtime().service.list_jobs(
        tenant,
        JobFilter(status=JobStatus(status) if status else None, type=job_type),
        limit=limit,
        cursor=cursor,
    )
    if as_json:
        for job in page.jobs:
            click.echo(_as_json(JobDetails(job, [])))
        return
    click.echo(
        table(
            ["ID", "TYPE", "STATUS", "ATTEMPT", "CREATED", "ERROR"],
            (
                (
                    j.id,
                    j.type,
                    j.status.value,
                    f"{j.attempt}/{j.max_attempts}",
                    j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    (j.error_message or "")[:40],
                )
                for j in page.jobs
            ),
        )
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@jobs.command("show")
@click.argument("job_id")
@tenant_option
@json_option
def show_job(job_id: str, tenant: str, as_json: bool) -> None:
    """One job, its pipeline, and its latest events."""
    runtime = _runtime()
    details = runtime.service.get(tenant, job_id)
    if as_json:
        click.echo(_as_json(details))
        return
    job = details.job
    click.echo(
        table(
            ["FIELD", "VALUE"],
            [
                ("id", job.id),
                ("type", job.type),
                ("status", job.status.value),
                ("attempt", f"{job.attempt}/{job.max_attempts}"),
                ("subject", job.subject or ""),
                (
                    "progress",
                    ""
                    if job.progress is None
                    else f"{job.progress:.0%} {job.progress_message or ''}",
                ),
                ("error", f"{job.error_type}: {job.error_message}" if job.error_type else ""),
                ("result", json.dumps(job.result)[:200] if job.result is not None else ""),
            ],
        )
    )
    click.echo("\npipeline:")
    click.echo(
        table(
            ["STEP", "ID", "TYPE", "STATUS"],
            ((s.step_index, s.id, s.type, s.status.value) for s in details.steps),
        )
    )
    events = runtime.service.events(tenant, job_id)[-15:]
    click.echo("\nevents:")
    click.echo(
        table(
            ["AT", "KIND", "ATTEMPT", "CHANGE", "MESSAGE"],
            (
                (
                    e.at.strftime("%H:%M:%S.%f")[:-3],
                    e.kind,
                    e.attempt,
                    f"{e.from_status or ''}->{e.to_status}" if e.to_status else "",
                    (e.message or "")[:60],
                )
                for e in events
            ),
        )
    )


@jobs.command("cancel")
@click.argument("job_id")
@tenant_option
@click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for a running job's worker to stop it.",
)
def cancel_job(job_id: str, tenant: str, wait: float) -> None:
    """Cancel a job and the steps after it (a running one is stopped by its worker)."""
    service = _runtime().service
    details = service.cancel(tenant, job_id)
    if details.job.status is JobStatus.RUNNING and wait > 0:
        details = service.wait_while_running(tenant, job_id, wait)
    still = details.job.status is JobStatus.RUNNING
    note = " (cancel requested; its worker has not stopped it yet)" if still else ""
    click.echo(f"{job_id}: {details.job.status.value}{note}")


@jobs.command("retry")
@click.argument("job_id", required=False)
@tenant_option
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed job (bulk).")
@click.option("--type", "job_type", default=None, help="With --failed: only this type.")
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True)
@click.option(
    "--now", "run_now", is_flag=True, help="Run at once, even a job cancelled before its runAt."
)
def retry_jobs(  # noqa: PLR0917 - click passes one argument per option
    job_id: str | None,
    tenant: str,
    all_failed: bool,
    job_type: str | None,
    limit: int,
    run_now: bool,
) -> None:
    """Retry one failed or cancelled job, or with --failed the dead letters in bulk."""
    if (job_id is None) == (not all_failed):
        raise click.UsageError("give a JOB_ID or --failed, not both")
    if all_failed and run_now:
        raise click.UsageError("--now is for one job (failed jobs run at once anyway)")
    service = _runtime().service
    if job_id is not None:
        job = service.retry(tenant, job_id, run_now=run_now).job
        later = job.run_at is not None and job.run_at > datetime.now(UTC)
        due = f" (runs at {job.run_at.isoformat()})" if later and job.run_at else ""
        click.echo(f"{job_id}: {job.status.value}{due}")
        return
    with click.progressbar(length=1, label="retrying", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        retried = service.retry_failed(
            tenant, JobFilter(type=job_type), limit=limit, progress=progress
        )
    click.echo(f"retried {len(retried)} job(s)")
