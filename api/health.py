"""Liveness and readiness, for load balancers and orchestrators' probes."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from orchestrator.readiness import check_readiness
from orchestrator.runtime import Runtime

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up and answering."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> Response:
    """Database and broker reachable, migrations current: 200, or 503 with the reasons."""
    runtime: Runtime = current_app.extensions["orchestrator"]
    checks = check_readiness(runtime)
    ready = all(result == "ok" for result in checks.values())
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    return response
