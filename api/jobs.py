"""The public `/v1` API: a tenant's jobs. Validation and HTTP mapping only."""

from __future__ import annotations

from contextlib import AbstractContextManager

from flask import Blueprint, Response, current_app, request, url_for

from api.bodies import json_body, json_response
from api.errors import Problem
from api.identity import Identity, current_identity
from api.schemas import (
    BulkRetry,
    BulkRetryResult,
    ChildList,
    ChildrenQuery,
    CreateBatch,
    CreateJob,
    EventList,
    EventOut,
    EventsQuery,
    JobBatch,
    JobOut,
    JobPage,
    ListQuery,
    RetryRequest,
    StatsQuery,
    TenantStatsOut,
)
from api.tenant_slots import TenantSlots
from orchestrator.errors import FieldError, UnknownJobType
from orchestrator.job_stats import tenant_figures
from orchestrator.limits import CreationRateLimiter
from orchestrator.models import utcnow
from orchestrator.runtime import Runtime
from orchestrator.service import MAX_BATCH_KEY_LENGTH, JobFilter, JobService, NewJob
from orchestrator.text import name_problem

blueprint = Blueprint("jobs", __name__, url_prefix="/v1")

IDEMPOTENCY_HEADER = "Idempotency-Key"


def service() -> JobService:
    runtime: Runtime = current_app.extensions["orchestrator"]
    return runtime.service


def _idempotency_key(body: CreateJob) -> str | None:
    header = request.headers.get(IDEMPOTENCY_HEADER)
    if header is not None and body.idempotencyKey is not None and header != body.idempotencyKey:
        raise Problem(
            422,
            "Conflicting idempotency keys",
            f"The {IDEMPOTENCY_HEADER} header and idempotencyKey differ.",
        )
    if header is not None:
        return _checked_key(header, 256)
    return body.idempotencyKey  # the body's key was checked with the body


def _checked_key(key: str | None, longest: int) -> str | None:
    """The `Idempotency-Key` header's key, or a 422 naming the header."""
    if key is None:
        return None
    problem = name_problem(key) or (
        None if 1 <= len(key) <= longest else f"is not 1 to {longest} characters long"
    )
    if problem:
        raise Problem(
            422,
            "Invalid idempotency key",
            f"Keys are 1 to {longest} characters of text, without control characters.",
            [FieldError(IDEMPOTENCY_HEADER, problem)],
        )
    return key


def _is_public(job_type: str) -> bool:
    registry = service().registry
    return job_type in registry and registry.get(job_type).public


def _new_job(identity: Identity, body: CreateJob, idempotency_key: str | None) -> NewJob:
    return NewJob(
        tenant_id=identity.tenant_id,
        type=body.type,
        input=body.input,
        subject=body.subject,
        created_by=identity.user_id,
        idempotency_key=idempotency_key,
        delay_seconds=body.delaySeconds,
        run_at=body.runAt,
        priority=body.priority,
    )


def _check_rate(tenant_id: str, cost: int = 1) -> None:
    limiter: CreationRateLimiter | None = current_app.extensions.get("rate_limiter")
    if limiter is None:
        return
    verdict = limiter.check(tenant_id, cost)
    if not verdict.allowed:
        raise Problem(
            429,
            "Too many requests",
            f"This tenant may create {limiter.rate:g} jobs per second.",
            headers={"Retry-After": str(verdict.retry_after)},
        )


@blueprint.post("/jobs")
def create_job() -> Response:
    identity = current_identity()
    _check_rate(identity.tenant_id)
    body = CreateJob.model_validate(json_body())
    if not _is_public(body.type):
        # System job types are not the public's to create, nor named to it.
        raise UnknownJobType(body.type, service().registry.public_names())
    outcome = service().create(_new_job(identity, body, _idempotency_key(body)))
    # 201 for a new job; 200 when an idempotent repeat returns the job made before.
    response = json_response(JobOut.of_details(outcome.details), 201 if outcome.created else 200)
    response.headers["Location"] = url_for("jobs.get_job", job_id=outcome.details.job.id)
    return response


@blueprint.post("/jobs:batch")
def create_jobs() -> Response:
    """Up to 1,000 jobs in one transaction and one broker connection; all or none. An
    `Idempotency-Key` header makes a repeat of the batch answer with the jobs it made."""
    identity = current_identity()
    batch = CreateBatch.model_validate(json_body())
    key = _checked_key(request.headers.get(IDEMPOTENCY_HEADER), MAX_BATCH_KEY_LENGTH)
    for index, body in enumerate(batch.jobs):
        if not _is_public(body.type):
            unknown = UnknownJobType(body.type, service().registry.public_names())
            raise Problem(
                422, "Unknown job type", errors=[FieldError(f"jobs.{index}.type", str(unknown))]
            )
    requests = [_new_job(identity, body, body.idempotencyKey) for body in batch.jobs]
    # A repeat of a keyed batch creates nothing, so it costs no tokens.
    outcome = service().earlier_batch(requests, key) if key else None
    if outcome is None:
        _check_rate(identity.tenant_id, cost=len(batch.jobs))
        outcome = service().create_batch(requests, idempotency_key=key, asked_earlier=True)
    jobs = [JobOut.of_details(details) for details in outcome.jobs]
    return json_response(JobBatch(jobs=jobs), 201 if outcome.created else 200)


@blueprint.get("/jobs/<job:job_id>")
def get_job(job_id: str) -> Response:
    identity = current_identity()
    return json_response(JobOut.of_details(service().get(identity.tenant_id, job_id)))


@blueprint.get("/jobs")
def list_jobs() -> Response:
    identity = current_identity()
    query = ListQuery.model_validate(request.args.to_dict())
    page = service().list_jobs(
        identity.tenant_id,
        JobFilter(status=query.status, type=query.type),
        limit=query.limit,
        cursor=query.cursor,
    )
    return json_response(
        JobPage(jobs=[JobOut.of(j) for j in page.jobs], nextCursor=page.next_cursor)
    )


@blueprint.get("/jobs/<job:job_id>/events")
def job_events(job_id: str) -> Response:
    identity = current_identity()
    query = EventsQuery.model_validate(request.args.to_dict())
    events = service().events(identity.tenant_id, job_id, after=query.after, limit=query.limit)
    return json_response(EventList(jobId=job_id, events=[EventOut.of(e) for e in events]))


def _slot(tenant_id: str) -> AbstractContextManager[None]:
    slots: TenantSlots = current_app.extensions["tenant_slots"]
    return slots.held(tenant_id)


@blueprint.get("/jobs/<job:job_id>/children")
def job_children(job_id: str) -> Response:
    """A join's children (`JobContext.spawn`), in spawn order, a page at a time."""
    identity = current_identity()
    query = ChildrenQuery.model_validate(request.args.to_dict())
    rows, next_after = service().children(
        identity.tenant_id, job_id, limit=query.limit, after=query.after, step=query.step
    )
    children = [JobOut.of(row) for row in rows]
    return json_response(ChildList(jobId=job_id, children=children, nextAfter=next_after))


@blueprint.post("/jobs/<job:job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    identity = current_identity()
    with _slot(identity.tenant_id):
        details = service().cancel(identity.tenant_id, job_id)
    # 202: the running job's worker was asked to stop; the job page and its events show
    # when it did. Nobody waits for it here.
    status = 202 if details.job.status == "running" else 200
    return json_response(JobOut.of_details(details), status)


@blueprint.post("/jobs/<job:job_id>/retry")
def retry_job(job_id: str) -> Response:
    identity = current_identity()
    body = RetryRequest.model_validate(json_body(optional=True))
    with _slot(identity.tenant_id):
        details = service().retry(identity.tenant_id, job_id, run_now=body.runNow)
    return json_response(JobOut.of_details(details))


@blueprint.post("/jobs/retry")
def retry_failed_jobs() -> Response:
    identity = current_identity()
    body = BulkRetry.model_validate(json_body(optional=True))
    with _slot(identity.tenant_id):
        retried = service().retry_failed(
            identity.tenant_id, JobFilter(type=body.type), limit=body.limit
        )
    return json_response(BulkRetryResult(retried=retried, count=len(retried)))


@blueprint.get("/stats")
def stats() -> Response:
    """The tenant's jobs in figures (`job_stats`). It reads up to a window's worth of the
    tenant's jobs: it takes one of the tenant's slots, as cancel and retry do, so a tenant
    asking without pause slows only itself."""
    identity = current_identity()
    query = StatsQuery.model_validate(request.args.to_dict())
    with _slot(identity.tenant_id):
        figures = tenant_figures(
            service().database, identity.tenant_id, utcnow(), query.windowSeconds
        )
    return json_response(TenantStatsOut.of(figures))
