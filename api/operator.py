"""`/ops`: pages for operators, across tenants. What Sidekiq's and Hatchet's web UIs give:
tenants with their backlog, running jobs and failure rate; queues with their depth and the
workers consuming them; cron schedules with "fire now"; jobs scheduled for later with "run
now"; search by job id or subject; dead letters with retry and discard, one or many.

An operator proves themselves with the service secret, once, at `/ops/login` (a signed,
HTTP-only session then says "operator"), or sends service credentials with each request
(`X-Service-Auth`), as scripts do. Every action is a POST with the dashboard's CSRF token,
and is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as Redirect

from api.auth import service_credentials_presented, verify_service_secret
from api.dashboard import check_csrf, safe_next, security_headers, template_helpers
from api.errors import Problem
from orchestrator import operations, tenant_stats
from orchestrator.dispatch.celery import CeleryDispatcher
from orchestrator.errors import JobConflict, JobDefinitionError, JobNotFound
from orchestrator.models import Job, utcnow
from orchestrator.runtime import Runtime

log = logging.getLogger("orchestrator.ops")
blueprint = Blueprint("ops", __name__, url_prefix="/ops")
SESSION_OPERATOR = "operator"
OPEN_ENDPOINTS = frozenset({"ops.login", "ops.log_in"})


def _runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


@blueprint.before_request
def _operators_only() -> Redirect | None:
    if request.endpoint in OPEN_ENDPOINTS or session.get(SESSION_OPERATOR) is True:
        return None
    if service_credentials_presented():
        return None
    if request.method == "GET":
        return redirect(url_for("ops.login", next=request.full_path.rstrip("?")))
    raise Problem(401, "Unauthorized", "Sign in as an operator first.")


blueprint.before_request(check_csrf)
blueprint.after_request(security_headers)


@blueprint.context_processor
def _helpers() -> dict[str, Any]:
    return {**template_helpers(), "operator": session.get(SESSION_OPERATOR) is True}


# -- pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    name: str
    waiting: int | None  # None: not a Celery broker, or it did not answer
    workers: list[str]


@blueprint.get("")
def overview() -> str:
    runtime, now = _runtime(), utcnow()
    admission = runtime.admission
    standings = tenant_stats.standings(runtime.database, admission.limits, admission.counts)
    outcomes = operations.outcomes_by_tenant(runtime.database, now)
    for tenant in outcomes.keys() - {s.load.tenant_id for s in standings}:
        standings.append(
            tenant_stats.Standing(
                tenant_stats.TenantLoad(tenant),
                admission.limits.tier(tenant),
                admission.limits.weight(tenant),
                None,
                None,
            )
        )
    crons = [
        {
            "definition": definition,
            "last": runtime.cron.last_fired(definition.id),
            "next": definition.following(now),
        }
        for definition in runtime.cron.crons
    ]
    return render_template(
        "ops/overview.html",
        standings=standings,
        outcomes=outcomes,
        queues=_queues(runtime),
        crons=crons,
    )


def _queues(runtime: Runtime) -> list[QueueRow]:
    names = sorted({t.queue for t in runtime.registry} | set(runtime.settings.worker_queues))
    broker = getattr(runtime.dispatcher, "inner", runtime.dispatcher)
    if not isinstance(broker, CeleryDispatcher):
        return [QueueRow(name, None, []) for name in names]
    waiting = broker.waiting(names) or {}
    consumers: dict[str, list[str]] = {}
    try:
        replies = broker.app.control.inspect(timeout=1.0).active_queues() or {}
    except Exception:  # a broker away: the page shows no workers rather than failing
        log.exception("could not ask the workers their queues")
        replies = {}
    for node, queues in replies.items():
        for queue in queues:
            consumers.setdefault(queue["name"], []).append(node)
    return [QueueRow(n, waiting.get(n), sorted(consumers.get(n, []))) for n in names]


@blueprint.get("/scheduled")
def scheduled() -> str:
    return render_template("ops/jobs.html", title="Scheduled", kind="scheduled",
                           jobs=operations.scheduled(_runtime().database))  # fmt: skip


@blueprint.get("/search")
def search() -> str:
    query = request.args.get("q", "")
    found = operations.search(_runtime().database, query)
    return render_template("ops/jobs.html", title="Search", kind="search", query=query, jobs=found)


@blueprint.get("/dead-letters")
def dead_letters() -> str:
    return render_template("ops/jobs.html", title="Dead letters", kind="dead",
                           jobs=operations.dead_letters(_runtime().database))  # fmt: skip


# -- actions -----------------------------------------------------------------------------------


@blueprint.post("/cron/<cron_id>/fire")
def fire_cron(cron_id: str) -> Redirect:
    runtime, now = _runtime(), utcnow().replace(microsecond=0)
    try:
        fired = runtime.cron.fire(cron_id, now)
    except JobDefinitionError:
        raise Problem(404, "Unknown cron", f"There is no cron {cron_id!r}.") from None
    _log("cron_fired_by_hand", cron=cron_id, created=fired.created)
    flash(f"{cron_id} fired: {fired.created} job(s) created.", "success")
    return redirect(url_for("ops.overview"), code=303)


@blueprint.post("/jobs/<job:job_id>/run-now")
def run_now(job_id: str) -> Redirect:
    runtime = _runtime()
    if operations.run_now(runtime.database, job_id, utcnow()):
        runtime.admission.became_ready()
        _log("run_now", job_id=job_id)
        flash(f"{job_id} is due now.", "success")
    else:
        flash(f"{job_id} was no longer waiting for a time.", "error")
    return redirect(url_for("ops.scheduled"), code=303)


@blueprint.post("/dead-letters")
def act_on_dead_letters() -> Redirect:
    """Retry or discard the selected dead letters."""
    chosen = request.form.getlist("job")
    action = request.form.get("action")
    if action == "discard":
        done = operations.discard(_runtime().database, chosen, utcnow())
        _log("discarded", count=len(done))
        flash(f"Discarded {len(done)} job(s).", "success")
    elif action == "retry":
        done = [job_id for job_id in chosen if _retry(job_id)]
        _log("retried", count=len(done))
        flash(f"Retried {len(done)} job(s).", "success")
    else:
        raise Problem(400, "Unknown action", "Choose retry or discard.")
    return redirect(url_for("ops.dead_letters"), code=303)


def _retry(job_id: str) -> bool:
    runtime = _runtime()
    with runtime.database.session() as session:
        tenant = session.get(Job, job_id)
        tenant_id = tenant.tenant_id if tenant is not None else None
    if tenant_id is None:
        return False
    try:
        runtime.service.retry(tenant_id, job_id)
    except (JobNotFound, JobConflict):  # archived, or no longer failed
        return False
    return True


def _log(action: str, **extra: Any) -> None:
    log.info("operator %s", action, extra={"action": f"ops_{action}", **extra})


# -- sign in -----------------------------------------------------------------------------------


@blueprint.get("/login")
def login() -> str:
    return render_template("ops/login.html", next=_safe_next())


@blueprint.post("/login")
def log_in() -> Redirect | tuple[str, int]:
    if not verify_service_secret(
        request.form.get("secret", ""), _runtime().settings.service_auth_secret
    ):
        log.warning("operator sign-in refused", extra={"action": "ops_login_refused"})
        page = render_template("ops/login.html", next=_safe_next(), error="That is not it.")
        return page, 401
    session.clear()
    session[SESSION_OPERATOR] = True
    _log("login")
    return redirect(_safe_next(), code=303)


@blueprint.post("/logout")
def log_out() -> Redirect:
    session.pop(SESSION_OPERATOR, None)
    return redirect(url_for("ops.login"), code=303)


def _safe_next() -> str:
    return safe_next("/ops", "ops.overview")
