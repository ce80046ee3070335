"""The public `/v1` API: create, read and list a tenant's jobs. Logic lives in the service."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from pydantic import BaseModel

from api.errors import Problem
from api.identity import current_identity
from api.schemas import CreateJob, EventList, EventOut, EventsQuery, JobOut, JobPage, ListQuery
from orchestrator.runtime import Runtime
from orchestrator.service import JobFilter, JobService, NewJob

blueprint = Blueprint("jobs", __name__, url_prefix="/v1")


def service() -> JobService:
    runtime: Runtime = current_app.extensions["orchestrator"]
    return runtime.service


def json_body() -> Any:
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise Problem(400, "Malformed JSON", "The request body must be a JSON object.")
    return body


def json_response(model: BaseModel, status: int = 200) -> Response:
    response = jsonify(model.model_dump(mode="json"))
    response.status_code = status
    return response


@blueprint.post("/jobs")
def create_job() -> Response:
    identity = current_identity()
    body = CreateJob.model_validate(json_body())
    details = service().create(
        NewJob(
            tenant_id=identity.tenant_id,
            type=body.type,
            input=body.input,
            subject=body.subject,
            created_by=identity.user_id,
        )
    )
    response = json_response(JobOut.of_details(details), 201)
    response.headers["Location"] = url_for("jobs.get_job", job_id=details.job.id)
    return response


@blueprint.get("/jobs/<job_id>")
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


@blueprint.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    identity = current_identity()
    query = EventsQuery.model_validate(request.args.to_dict())
    events = service().events(identity.tenant_id, job_id, after=query.after, limit=query.limit)
    return json_response(EventList(jobId=job_id, events=[EventOut.of(e) for e in events]))
