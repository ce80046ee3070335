"""`/internal`: the worker endpoint that Cloud Tasks (or the http dispatcher) pushes jobs
to, and dispatch statistics. Service credentials only."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from api.auth import service_auth_required
from api.bodies import json_body
from api.errors import Problem
from api.schemas import STRICT_BODY, Name
from orchestrator.ids import ID_PATTERN
from orchestrator.runner import Skipped
from orchestrator.runtime import Runtime
from orchestrator.text import field_text_problems

log = logging.getLogger("orchestrator.api.internal")

blueprint = Blueprint("internal", __name__, url_prefix="/internal")

# What Cloud Tasks tells us about a push, kept in the job's events.
CLOUD_TASKS_HEADERS = {
    "X-CloudTasks-TaskName": "taskName",
    "X-CloudTasks-QueueName": "queueName",
    "X-CloudTasks-TaskRetryCount": "retryCount",
    "X-CloudTasks-TaskExecutionCount": "executionCount",
    "X-CloudTasks-TaskETA": "eta",
    "X-CloudTasks-TaskPreviousResponse": "previousResponse",
    "X-CloudTasks-TaskRetryReason": "retryReason",
}


class WorkerRun(BaseModel):
    model_config = STRICT_BODY

    jobId: str = Field(pattern=f"^{ID_PATTERN.pattern}$")  # noqa: N815 - the wire format's name
    idempotencyKey: Name | None = Field(None, max_length=500)  # noqa: N815


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["orchestrator"]
    return found


@blueprint.post("/worker/run")
@service_auth_required
def run_pushed_job() -> Response:
    """Run one pushed delivery. 2xx: done, or a duplicate; 503: try again later."""
    body = WorkerRun.model_validate(json_body())
    delivery = _cloud_tasks_headers()
    if body.idempotencyKey:
        delivery["idempotencyKey"] = body.idempotencyKey
    try:
        delivered = runtime().delivery.handle(body.jobId, delivery)
    except SQLAlchemyError as exc:
        log.exception(
            "pushed delivery failed", extra={"job_id": body.jobId, "action": "delivery_failed"}
        )
        raise Problem(
            503, "Try again later", "The database did not answer.", headers={"Retry-After": "5"}
        ) from exc
    answer: dict[str, str] = {"jobId": body.jobId, "outcome": delivered.name}
    if isinstance(delivered.outcome, Skipped):
        answer["reason"] = delivered.outcome.reason.value
    return jsonify(answer)


def _cloud_tasks_headers() -> dict[str, str]:
    """What Cloud Tasks said of the push, by `CLOUD_TASKS_HEADERS`' names; a 422 naming a
    header whose value cannot be stored in the job's events (Cloud Tasks sends none)."""
    found = {name: request.headers[name] for name in CLOUD_TASKS_HEADERS if name in request.headers}
    if problems := field_text_problems(found.items()):
        raise Problem(422, "Invalid header", "A Cloud Tasks header holds no text.", problems)
    return {CLOUD_TASKS_HEADERS[name]: value for name, value in found.items()}


@blueprint.get("/stats")
@service_auth_required
def stats() -> Response:
    return jsonify(runtime().stats.snapshot())
