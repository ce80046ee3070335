"""`/admin`: operator triggers, authenticated with the service secret."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, url_for

from api.auth import service_auth_required
from api.bodies import json_body, json_response
from api.schemas import ArchiveRequest, JobOut, MaintenanceRunOut, TenantStandingOut
from orchestrator import tenant_stats
from orchestrator.archival import recent_runs
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from tasks.maintenance import ARCHIVE_JOB

blueprint = Blueprint("admin", __name__, url_prefix="/admin")


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


@blueprint.post("/maintenance/archive")
@service_auth_required
def trigger_archive() -> Response:
    """Enqueue the nightly archival job now; answers its job id (system tenant)."""
    body = ArchiveRequest.model_validate(json_body(optional=True))
    settings = runtime().settings
    created = runtime().service.create(
        NewJob(
            tenant_id=settings.system_tenant,
            type=ARCHIVE_JOB,
            input={"dryRun": body.dryRun},
            subject="admin:archive",
        )
    )
    job = created.details.job
    response = jsonify(jobId=job.id, tenantId=job.tenant_id, status=job.status.value)
    response.status_code = 202
    response.headers["Location"] = url_for("admin.maintenance_job", job_id=job.id)
    return response


@blueprint.get("/maintenance/jobs/<job:job_id>")
@service_auth_required
def maintenance_job(job_id: str) -> Response:
    """A job of the system tenant's (archival, cron jobs not per tenant): no tenant may act
    as that one, so operators read them here."""
    settings = runtime().settings
    return json_response(JobOut.of_details(runtime().service.get(settings.system_tenant, job_id)))


@blueprint.get("/maintenance/runs")
@service_auth_required
def maintenance_runs() -> Response:
    runs = [
        MaintenanceRunOut.of(run).model_dump(mode="json") for run in recent_runs(runtime().database)
    ]
    return jsonify(runs=runs)


@blueprint.get("/tenants/stats")
@service_auth_required
def tenant_standings() -> Response:
    """Each tenant's backlog, running jobs, admissions in the last minute and their share."""
    admission = runtime().admission
    found = tenant_stats.standings(runtime().database, admission.limits, admission.counts)
    return jsonify(tenants=[TenantStandingOut.of(s).model_dump(mode="json") for s in found])


# Housekeeping for deployments without a dispatcher process and beat (Cloud Run + Cloud
# Tasks): point Cloud Scheduler at these, every minute.


@blueprint.post("/maintenance/sweep")
@service_auth_required
def dispatch_round() -> Response:
    """The dispatcher's round, once: admit the ready jobs that fit (scheduled ones due
    within ORCH_SCHEDULE_AHEAD_SECONDS go out with their time), and again those whose
    delivery went missing."""
    missing, sent = runtime().admission.tick()
    return jsonify(sent=sent, missing=missing)


@blueprint.post("/maintenance/reap")
@service_auth_required
def reap_leases() -> Response:
    return jsonify(reaped=runtime().maintenance.reap_leases())


@blueprint.post("/cron/tick")
@service_auth_required
def cron_tick() -> Response:
    """Fire each cron's latest occurrence if it has not fired (the catch-up rule), so a
    call every minute runs every cron on time, and exactly once however often it comes."""
    fired = runtime().cron.catch_up()
    return jsonify(fired=[{"cron": cron_id, "occurrence": at.isoformat()} for cron_id, at in fired])
