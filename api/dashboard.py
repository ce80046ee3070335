"""The jobs dashboard: server-rendered HTML pages over the job service, per tenant.

Same identity as the API (`current_identity`); every answer is HTML, errors included.
Buttons are POST forms carrying a per-session CSRF token; after a POST the browser is
sent back (303) to the page it came from, with a flash message.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as Redirect

from api.dashboard_chart import chart_of
from api.errors import Problem
from api.identity import (
    TENANT_HEADER,
    auth_mode,
    current_identity,
    is_system_tenant,
    log_in_with_key,
    may_pick_tenant,
    pick_tenant,
)
from orchestrator.errors import JobArchived, JobConflict, JobNotFound
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.service import JobFilter, JobService
from orchestrator.settings import AuthMode
from orchestrator.states import JobStatus
from orchestrator.tenant_stats import POSITION_LIMIT
from orchestrator.tenants import known_tenants
from orchestrator.workflow_state import standing

log = logging.getLogger("orchestrator.dashboard")

blueprint = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

PAGE_SIZE = 25
BULK_RETRY_LIMIT = 1000
REFRESH_SECONDS = 5
CHART_MINUTES = 60
CSRF_FIELD = "csrf_token"
CSRF_SESSION_KEY = "dashboard_csrf"
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLABLE = frozenset(
    {JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RETRYING, JobStatus.RUNNING}
)
SECURITY_HEADERS = {
    # Everything is served from here: no inline script or style, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class ListFilters(BaseModel):
    """The list's query string: empty values (a form's "All") count as absent."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: JobStatus | None = None
    type: str | None = Field(None, min_length=1, max_length=128)
    cursor: str | None = Field(None, min_length=1, max_length=64)

    @classmethod
    def from_request(cls) -> ListFilters:
        return cls.model_validate({k: v for k, v in request.args.items() if v.strip()})

    def args(self, **changes: str | None) -> dict[str, Any]:
        """Query arguments for `url_for`, with `changes` applied (None removes one)."""
        values = {**self.model_dump(mode="json"), **changes}
        return {k: str(v) for k, v in values.items() if v is not None}


# -- helpers ----------------------------------------------------------------------------------


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["orchestrator"]
    return runtime


def _service() -> JobService:
    return _runtime().service


def _tenant() -> str:
    tenant = current_identity(allow_session=True).tenant_id
    g.dashboard_tenant = tenant
    return tenant


def csrf_token() -> str:
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def when(value: datetime | None) -> str:
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def duration(job: Job) -> str:
    if job.started_at is None:
        return "—"
    end = job.finished_at or datetime.now(job.started_at.tzinfo)
    return _span(end - job.started_at)


def _span(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _back(endpoint: str, **values: Any) -> Redirect:
    return redirect(url_for(endpoint, **values), code=303)


@blueprint.context_processor
def template_helpers() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "csrf_field": CSRF_FIELD,
        "when": when,
        "duration": duration,
        "pretty": pretty,
        "statuses": list(JobStatus),
        "retryable": RETRYABLE,
        "cancellable": CANCELLABLE,
        "refresh_seconds": REFRESH_SECONDS,
        "position_limit": POSITION_LIMIT,
        "tenant": g.get("dashboard_tenant"),
        "may_pick_tenant": may_pick_tenant(),
    }


@blueprint.before_request
def check_csrf() -> None:
    if request.method != "POST":
        return
    expected = session.get(CSRF_SESSION_KEY)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Problem(
            400,
            "Invalid form token",
            "The form expired or did not come from this dashboard. Reload the page and try again.",
        )


@blueprint.after_request
def security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"  # pages hold user data and form tokens
    return response


# -- pages --------------------------------------------------------------------------------------


def _summary(tenant: str) -> dict[str, Any]:
    counts = _service().status_counts(tenant)
    return {
        "counts": {status.value: counts.get(status.value, 0) for status in JobStatus},
        "total": sum(counts.values()),
        "load": _service().load(tenant),
        "chart": chart_of(_service().finished_per_minute(tenant, CHART_MINUTES)),
    }


def _jobs(
    tenant: str,
    filters: ListFilters,
    endpoint: str = "dashboard.overview",
    *,
    only: JobStatus | None = None,
) -> dict[str, Any]:
    """One page of the list, newest first, with links to the next (older) page and back."""
    page = _service().list_jobs(
        tenant,
        JobFilter(status=only or filters.status, type=filters.type),
        limit=PAGE_SIZE,
        cursor=filters.cursor,
    )
    older = page.next_cursor and url_for(endpoint, **filters.args(cursor=page.next_cursor))
    newest = filters.cursor and url_for(endpoint, **filters.args(cursor=None))
    return {"jobs": page.jobs, "filters": filters, "older_url": older, "newest_url": newest}


@blueprint.get("")
def overview() -> str:
    tenant, filters = _tenant(), ListFilters.from_request()
    return render_template(
        "dashboard/overview.html",
        types=sorted(job_type.name for job_type in _runtime().registry),
        **_summary(tenant),
        **_jobs(tenant, filters),
    )


@blueprint.get("/")
def overview_slash() -> Redirect:
    # The query as it came, not through url_for, which reads keys such as `_method` or
    # `_external` as its own options.
    query = request.query_string.decode("latin-1")
    return redirect(url_for("dashboard.overview") + (f"?{query}" if query else ""), code=308)


@blueprint.get("/summary")
def summary_fragment() -> str:
    return render_template("dashboard/_summary.html", **_summary(_tenant()))


@blueprint.get("/jobs")
def jobs_fragment() -> str:
    return render_template(
        "dashboard/_jobs_table.html", **_jobs(_tenant(), ListFilters.from_request())
    )


def _job(job_id: str) -> dict[str, Any]:
    tenant = _tenant()
    details = _service().get(tenant, job_id)
    unfinished = {str(status) for status in CANCELLABLE}
    # A workflow's first job stands for the run: its status, and its last gate's result.
    shown = standing(details.job, details.steps, details.workflow)
    return {
        "job": details.job,
        "status": shown.status,
        "result": shown.result,
        "steps": details.steps,
        "children": details.children,
        "workflow": details.workflow,
        "events": _service().events(tenant, job_id),
        "place": _service().place_in_line(details.job),
        # The page refreshes itself while any step of the pipeline (or child of a join)
        # may still change.
        "live": any(step.status in CANCELLABLE for step in details.steps)
        or any(unfinished & counts.keys() for counts in details.children.values()),
    }


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    return render_template("dashboard/job.html", **_job(job_id))


@blueprint.get("/jobs/<job_id>/live")
def job_fragment(job_id: str) -> str:
    return render_template("dashboard/_job_body.html", **_job(job_id))


@blueprint.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Redirect:
    tenant = _tenant()
    try:
        _service().retry(tenant, job_id)
    except JobConflict as exc:
        flash(str(exc), "error")
    else:
        _log("dashboard_retry", tenant, job_id)
        flash("Retry requested", "success")
    return _back("dashboard.job_page", job_id=job_id)


@blueprint.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Redirect:
    tenant = _tenant()
    try:
        details = _service().cancel(tenant, job_id)
    except JobConflict as exc:
        flash(str(exc), "error")
    else:
        _log("dashboard_cancel", tenant, job_id)
        stopped = details.job.status is JobStatus.CANCELLED
        flash("Cancelled" if stopped else "Cancel requested; the worker is stopping", "success")
    return _back("dashboard.job_page", job_id=job_id)


@blueprint.get("/dead-letters")
def dead_letters() -> str:
    tenant = _tenant()
    filters = ListFilters.from_request().model_copy(update={"status": None})
    return render_template(
        "dashboard/dead_letters.html",
        types=sorted(job_type.name for job_type in _runtime().registry),
        failed_total=_service().status_counts(tenant).get(JobStatus.FAILED.value, 0),
        **_jobs(tenant, filters, "dashboard.dead_letters", only=JobStatus.FAILED),
    )


@blueprint.post("/dead-letters/retry")
def retry_dead_letters() -> Redirect:
    tenant = _tenant()
    job_type = request.form.get("type", "").strip() or None
    try:
        retried = _service().retry_failed(tenant, JobFilter(type=job_type), limit=BULK_RETRY_LIMIT)
    except JobConflict as exc:
        flash(str(exc), "error")
    else:
        _log("dashboard_bulk_retry", tenant, None, count=len(retried))
        plural = "job" if len(retried) == 1 else "jobs"
        flash(f"Retry requested for {len(retried)} {plural}", "success")
    return _back("dashboard.dead_letters", **({"type": job_type} if job_type else {}))


def _log(action: str, tenant: str, job_id: str | None, **extra: Any) -> None:
    # The JSON lines keep only the context fields; anything else is said in the message.
    details = "".join(f" {name}={value}" for name, value in extra.items())
    log.info(
        "dashboard: %s%s",
        action,
        details,
        extra={"action": action, "tenant_id": tenant, "job_id": job_id},
    )


# -- errors, as pages -------------------------------------------------------------------------


def error_page(status: int, title: str, detail: str | None = None) -> tuple[str, int]:
    page = render_template("dashboard/error.html", status=status, title=title, detail=detail)
    return page, status


@blueprint.errorhandler(Problem)
def _problem(exc: Problem) -> tuple[str, int] | Redirect:
    if exc.status == 401 and auth_mode() is AuthMode.API_KEY and request.method == "GET":
        return redirect(url_for("dashboard.login", next=request.path))
    if (
        exc.status == 400
        and request.method == "GET"
        and TENANT_HEADER not in request.headers
        and may_pick_tenant()
    ):
        return redirect(url_for("dashboard.choose_tenant", next=request.full_path.rstrip("?")))
    return error_page(exc.status, exc.title, exc.detail)


# -- tenant picker (development with trusted headers) --------------------------------------------


@blueprint.get("/tenant")
def choose_tenant() -> tuple[str, int]:
    return _picker_page()


@blueprint.post("/tenant")
def choose_tenant_post() -> Redirect | tuple[str, int]:
    if not may_pick_tenant():
        return _picker_page()
    chosen = request.form.get("tenant", "")
    if problem := pick_tenant(chosen):
        return _picker_page(error=problem, status=400)
    _log("tenant_picked", chosen.strip(), None)
    return redirect(_safe_next(), code=303)


def _picker_page(error: str | None = None, status: int = 200) -> tuple[str, int]:
    """Where a browser, which sends no `X-Tenant-ID`, names its tenant (`make run`); a 404
    wherever the tenant must be proven."""
    if not may_pick_tenant():
        return error_page(404, "Not found", "Tenants are picked only in development.")
    page = render_template(
        "dashboard/tenant.html",
        next=_safe_next(),
        tenants=[t for t in known_tenants(_runtime().database) if not is_system_tenant(t)],
        current=session.get("picked_tenant"),
        error=error,
    )
    return page, status


# -- login (api-key mode) -----------------------------------------------------------------------


@blueprint.get("/login")
def login() -> str:
    return render_template("dashboard/login.html", next=_safe_next())


@blueprint.post("/login")
def log_in() -> Redirect | tuple[str, int]:
    identity = log_in_with_key(request.form.get("api_key", ""))
    if identity is None:
        _log("login_refused", "-", None)
        page = render_template(
            "dashboard/login.html",
            next=_safe_next(),
            error="That key is not valid (or was revoked).",
        )
        return page, 401
    _log("login", identity.tenant_id, None)
    return redirect(_safe_next(), code=303)


@blueprint.post("/logout")
def log_out() -> Redirect:
    session.clear()
    return redirect(url_for("dashboard.login"), code=303)


def _safe_next() -> str:
    return safe_next("/dashboard", "dashboard.overview")


def safe_next(area: str, home: str) -> str:
    """Where to go after signing in: a path of `area` only, never another site (nor a
    header broken by a control character or a backslash); else `home`'s page."""
    target = request.values.get("next", "")
    safe = (
        target.startswith(area)
        and "//" not in target
        and "\\" not in target
        and target.isprintable()
    )
    return target if safe else url_for(home)


@blueprint.errorhandler(JobNotFound)
def _not_found(exc: JobNotFound) -> tuple[str, int]:
    return error_page(404, "Job not found", f"There is no job {exc.job_id} among your jobs.")


@blueprint.errorhandler(JobArchived)
def _archived(exc: JobArchived) -> tuple[str, int]:
    return error_page(410, "Job archived", f"Job {exc.job_id} was archived and is no longer shown.")


@blueprint.errorhandler(ValidationError)
def _invalid(exc: ValidationError) -> tuple[str, int]:
    fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_page(400, "Invalid filter", fields)


@blueprint.errorhandler(HTTPException)
def _http(exc: HTTPException) -> tuple[str, int]:
    return error_page(exc.code or 500, exc.name, exc.description)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[str, int]:
    log.exception(
        "dashboard error on %s %s", request.method, request.path, extra={"action": "http_500"}
    )
    return error_page(500, "Something went wrong", "The error is logged; try again shortly.")
