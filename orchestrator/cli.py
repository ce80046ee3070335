"""The `orchestrator` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import alembic.util
import click
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import migrate, processes
from orchestrator.cli_jobs import jobs
from orchestrator.embedded_redis import EmbeddedRedisError
from orchestrator.errors import OrchestratorError
from orchestrator.service import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from orchestrator.settings import ConfigurationError, get_settings, load_settings


class Commands(click.Group):
    """Every command: the errors a user can cause print as one line and exit with 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EmbeddedRedisError as exc:
            # Its first line says why; the server's log it quotes after that is on disk.
            raise click.ClickException(str(exc).splitlines()[0]) from None
        except (ConfigurationError, OrchestratorError) as exc:
            raise click.ClickException(str(exc)) from None
        except alembic.util.CommandError as exc:  # an unknown revision, say
            raise click.ClickException(f"migrations: {exc}") from None
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise click.ClickException(f"database error: {detail}") from None


@click.group(cls=Commands)
def main() -> None:
    """A multi-tenant background-job orchestrator on Celery."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (the Procfile's release step)."""
    settings = get_settings()
    migrate.upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


@main.command()
def dev() -> None:
    """Run web, dispatcher, workers, beat and Flower with embedded defaults (`make run`)."""
    from orchestrator.dev import run_dev  # noqa: PLC0415 - honcho only for this command

    sys.exit(run_dev())


@main.command("run")
@click.argument("process", type=click.Choice(processes.PROCESS_NAMES))
@click.option("--print", "print_only", is_flag=True, help="Print the command instead.")
@click.option(
    "--queues",
    default=None,
    help="A worker: the queues it consumes, comma-separated (default ORCH_WORKER_QUEUES).",
)
def run_process(process: str, print_only: bool, queues: str | None) -> None:
    """Run one process type with its configured command line (the Procfile uses this)."""
    settings = get_settings()
    if queues is not None:
        if process != "worker":
            raise click.UsageError("--queues is for a worker")
        settings = load_settings(worker_queues=queues)
    argv = processes.command(process, settings)
    if print_only:
        click.echo(" ".join(argv))
        return
    processes.prepare(process, settings)
    os.execvpe(argv[0], argv, processes.environment(settings))  # noqa: S606 - replaces us


@main.command()
@click.argument("job_type")
@click.option("--tenant", required=True, help="Tenant the job belongs to.")
@click.option("--input", "input_json", default="{}", help="The job's input as JSON.")
@click.option("--subject", default=None, help="What the job is about, e.g. an inspection id.")
@click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=DEFAULT_PRIORITY,
    show_default=True,
    help="Higher runs sooner among the tenant's ready jobs.",
)
def send(job_type: str, tenant: str, input_json: str, subject: str | None, priority: int) -> None:
    """Create a job from the shell and print it as JSON."""
    from orchestrator.jobs import send_job  # noqa: PLC0415 - builds the runtime

    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--input is not JSON: {exc}") from None
    details = send_job(job_type, data, tenant_id=tenant, subject=subject, priority=priority)
    click.echo(
        json.dumps(
            {
                "id": details.job.id,
                "status": details.job.status.value,
                "pipeline": [s.id for s in details.steps],
            }
        )
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per setting.")
def config(as_json: bool) -> None:
    """The settings this command works with, and where each comes from: the environment,
    the `make run` running in this folder, or the default. Secrets are masked."""
    from orchestrator.run_record import RUN_FILE  # noqa: PLC0415
    from orchestrator.settings_sources import live_run_settings, origins  # noqa: PLC0415

    settings = load_settings()  # read now, beside the run's record it is compared with
    rows = origins(settings, live_run_settings(), settings.state_dir / RUN_FILE)
    if as_json:
        for name, value, origin in rows:
            click.echo(json.dumps({"variable": name, "value": value, "from": origin}))
        return
    width = max(len(name) for name, _, _ in rows)
    shown = min(max(len(value) for _, value, _ in rows), 60)
    for name, value, origin in rows:
        click.echo(f"{name:<{width}}  {value:<{shown}}  {origin}")


@main.group()
def maintenance() -> None:
    """Housekeeping that beat runs on a schedule, run by hand."""


@maintenance.command("sweep")
def maintenance_sweep() -> None:
    """Admit the ready jobs that fit in the window, and again those gone missing (the
    dispatcher's round, once)."""
    from orchestrator.runtime import Runtime  # noqa: PLC0415 - builds engines and Celery

    missing, sent = Runtime.build(get_settings()).admission.tick()
    click.echo(f"sent {sent} job(s); {missing} were missing")


@maintenance.command("reap")
def maintenance_reap() -> None:
    """Take back running jobs whose worker stopped renewing its lease."""
    from orchestrator.runtime import Runtime  # noqa: PLC0415

    click.echo(f"reaped {Runtime.build(get_settings()).maintenance.reap_leases()} job(s)")


@maintenance.command("archive")
@click.option("--dry-run", is_flag=True, help="Count what would be archived; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def maintenance_archive(dry_run: bool, as_json: bool) -> None:
    """Archive finished jobs past their tenant's retention, now, with a progress bar."""
    from orchestrator.archival import Archiver  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415

    settings = get_settings()
    archiver = Archiver(Database.from_settings(settings), settings)
    with click.progressbar(length=1, label="archiving", file=sys.stderr, show_pos=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        report = archiver.run(dry_run=dry_run, progress=progress)
    summary = {
        "maintenanceRunId": report.run_id,
        "dryRun": dry_run,
        "archived": report.total,
        "perTenant": dict(report.per_tenant),
        "seconds": round(report.seconds, 3),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    verb = "would archive" if dry_run else "archived"
    click.echo(f"{verb} {report.total} job(s) in {report.seconds:.1f}s (run {report.run_id})")
    for tenant, count in sorted(report.per_tenant.items()):
        click.echo(f"  {tenant:<40} {count:>10}")


@maintenance.command("runs")
@click.option("--limit", default=20, show_default=True)
def maintenance_runs(limit: int) -> None:
    """The latest maintenance runs, newest first, as JSON lines."""
    from orchestrator.archival import recent_runs  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415

    for run in recent_runs(Database.from_settings(get_settings()), limit):
        click.echo(
            json.dumps(
                {
                    "id": run.id,
                    "kind": run.kind,
                    "status": run.status,
                    "dryRun": run.dry_run,
                    "total": run.total,
                    "startedAt": run.started_at.isoformat(),
                    "perTenant": run.per_tenant,
                }
            )
        )


@main.group()
def tenants() -> None:
    """Tenants and their tiers (a tier sets how long finished jobs are kept)."""


@tenants.command("set-tier")
@click.argument("tenant")
@click.argument("tier")
def tenants_set_tier(tenant: str, tier: str) -> None:
    """Put TENANT on TIER (one of ORCH_RETENTION_DAYS's tiers)."""
    from orchestrator.db import Database  # noqa: PLC0415
    from orchestrator.tenants import set_tier  # noqa: PLC0415

    settings = get_settings()
    set_tier(Database.from_settings(settings), settings, tenant, tier)
    click.echo(f"{tenant}: {tier} ({settings.retention_days[tier]} days)")


main.add_command(jobs)


@main.group("api-keys")
def api_keys() -> None:
    """API keys: `Authorization: Bearer <key>` maps a caller to its tenant."""


@api_keys.command("create")
@click.option("--tenant", required=True)
@click.option("--name", default="default", show_default=True, help="What the key is for.")
def api_keys_create(tenant: str, name: str) -> None:
    """Create a key and print it: it is shown this once, and stored only as a digest."""
    from orchestrator.apikeys import create_key  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415

    settings = get_settings()
    database = Database.from_settings(settings)
    issued = create_key(database, tenant, name, system_tenant=settings.system_tenant)
    click.echo(issued.key)
    click.echo(
        f"key {issued.id} for tenant {tenant}; store it now, it is not shown again", err=True
    )


@api_keys.command("list")
@click.option("--tenant", required=True)
def api_keys_list(tenant: str) -> None:
    """The tenant's keys (ids and names; never the keys themselves)."""
    from orchestrator.apikeys import list_keys  # noqa: PLC0415
    from orchestrator.cli_jobs import table  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415

    keys = list_keys(Database.from_settings(get_settings()), tenant)
    click.echo(
        table(
            ["ID", "NAME", "CREATED", "REVOKED"],
            (
                (
                    k.id,
                    k.name,
                    k.created_at.strftime("%Y-%m-%d %H:%M"),
                    k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
                )
                for k in keys
            ),
        )
    )


@api_keys.command("revoke")
@click.argument("key_id")
def api_keys_revoke(key_id: str) -> None:
    """Revoke a key at once."""
    from orchestrator.apikeys import revoke_key  # noqa: PLC0415
    from orchestrator.db import Database  # noqa: PLC0415

    key = revoke_key(Database.from_settings(get_settings()), key_id)
    click.echo(f"revoked {key.id} ({key.name}) of tenant {key.tenant_id}")
