"""`GET /metrics` in Prometheus' text format, for callers with the service credentials
(`X-Service-Auth`, or the secret as a bearer token; `dev-secret` under `make run`)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from api.auth import service_auth_required
from orchestrator import metrics
from orchestrator.runtime import Runtime

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
@service_auth_required
def prometheus() -> Response:
    runtime: Runtime = current_app.extensions["orchestrator"]
    body = metrics.exposition(metrics.DatabaseGauges(runtime.database.session))
    return Response(
        body,
        mimetype=metrics.CONTENT_TYPE.split(";")[0],
        headers={"Content-Type": metrics.CONTENT_TYPE},
    )
