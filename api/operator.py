"""`/ops`: pages for operators, across tenants. What Sidekiq's and Hatchet's web UIs give:
tenants with their backlog, running jobs and failure rate; queues with their depth and the
workers consuming them; cron schedules with "fire now"; jobs scheduled for later with "run
now"; search by job id or subject; dead letters with retry and discard, one or many.

An operator proves themselves with the service secret, once, at `/ops/login`: the signed,
HTTP-only session then holds when that was and a fingerprint of the secret, and lapses
after `SESSION_HOURS` or when the secret changes (signing out ends it at once). A script
sends the secret with each request (`X-Service-Auth`) instead. Only the service secret
opens these pages: not a tenant's credentials, nor the OIDC identity Cloud Tasks pushes
with. Every action is a POST, with the dashboard's CSRF token when it comes from a
session, and is logged with its job ids.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as Redirect

from api.auth import SERVICE_AUTH_HEADER, verify_service_secret
from api.dashboard import check_csrf, error_page, safe_next, security_headers, template_helpers
from api.errors import Problem, problem_response
from orchestrator import operations, tenant_stats
from orchestrator.dispatch.celery import CeleryDispatcher
from orchestrator.errors import JobConflict, JobDefinitionError, JobNotFound
from orchestrator.models import Job, utcnow
from orchestrator.runtime import Runtime

log = logging.getLogger("orchestrator.ops")
blueprint = Blueprint("ops", __name__, url_prefix="/ops")
SESSION_OPERATOR = "operator"
SESSION_HOURS = 12
LOGGED_IDS = 100  # a bulk action's log line names this many of its jobs
OPEN_ENDPOINTS = frozenset({"ops.login", "ops.log_in"})


def _runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


@blueprint.before_request
def _operators_only() -> Redirect | None:
    if request.endpoint in OPEN_ENDPOINTS or _signed_in() or _by_header():
        return None
    session.pop(SESSION_OPERATOR, None)  # lapsed, or signed with another secret
    if request.method == "GET":
        return redirect(url_for("ops.login", next=request.full_path.rstrip("?")))
    raise Problem(401, "Unauthorized", "Sign in as an operator first.")


@blueprint.before_request
def _form_token() -> None:
    """A session's forms carry its CSRF token; a script's header is no cookie a third-party
    page could make a browser send, and needs none."""
    if not _by_header():
        check_csrf()


blueprint.after_request(security_headers)


@blueprint.errorhandler(Problem)
def _problem(exc: Problem) -> Response | tuple[str, int]:
    """A page for a person, problem+json for a script."""
    if _by_header():
        return problem_response(exc)
    return error_page(exc.status, exc.title, exc.detail)


@blueprint.context_processor
def _helpers() -> dict[str, Any]:
    return {**template_helpers(), "operator": _signed_in()}


def _by_header() -> bool:
    secret = _runtime().settings.service_auth_secret
    return verify_service_secret(request.headers.get(SERVICE_AUTH_HEADER), secret)


def _fingerprint() -> str:
    secret = (_runtime().settings.service_auth_secret or "").encode()
    return hmac.new(secret, b"orchestrator-operator", hashlib.sha256).hexdigest()


def _signed_in() -> bool:
    held = session.get(SESSION_OPERATOR)
    if not isinstance(held, dict):
        return False
    since, fingerprint = held.get("since"), held.get("secret")
    if not isinstance(since, (int, float)) or not isinstance(fingerprint, str):
        return False
    fresh = 0 <= time.time() - since < SESSION_HOURS * 3600
    return fresh and hmac.compare_digest(fingerprint.encode(), _fingerprint().encode())


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
    _log("cron_fired_by_hand", f"{cron_id}, {fired.created} job(s) created")
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
        _log("discarded", _ids(done))
        flash(f"Discarded {len(done)} job(s).", "success")
    elif action == "retry":
        done = [job_id for job_id in chosen if _retry(job_id)]
        _log("retried", _ids(done))
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


def _ids(job_ids: list[str]) -> str:
    more = len(job_ids) - LOGGED_IDS
    return f"{len(job_ids)} job(s): {' '.join(job_ids[:LOGGED_IDS])}" + (
        f" and {more} more" if more > 0 else ""
    )


def _log(action: str, detail: str = "", **extra: Any) -> None:
    message = f"operator {action}" + (f": {detail}" if detail else "")
    log.info(message, extra={"action": f"ops_{action}", **extra})


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
    session[SESSION_OPERATOR] = {"since": int(time.time()), "secret": _fingerprint()}
    _log("login")
    return redirect(_safe_next(), code=303)


@blueprint.post("/logout")
def log_out() -> Redirect:
    session.pop(SESSION_OPERATOR, None)
    return redirect(url_for("ops.login"), code=303)


def _safe_next() -> str:
    return safe_next("/ops", "ops.overview")
