"""Liveness: the process is up and answering."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
