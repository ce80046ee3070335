"""Request and response bodies on the wire: JSON in, refused with a problem when it cannot
be read or stored, and pydantic models out."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from pydantic import BaseModel

from api.errors import Problem
from orchestrator.text import json_text_problems


def json_body(*, optional: bool = False) -> Any:
    """The request body as JSON. Malformed (or absurdly nested) bodies are a 400; strings
    that cannot be stored (lone surrogates, NUL) are a 422 naming each field."""
    if optional and not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        body = None
    if body is None:
        raise Problem(400, "Malformed JSON", "The request body must be a JSON object.")
    if problems := json_text_problems(body):
        raise Problem(
            422, "Invalid text", "The request body holds text that cannot be stored.", problems
        )
    return body


def json_response(model: BaseModel, status: int = 200) -> Response:
    # Straight to JSON in pydantic's serializer: a batch's answer of a thousand jobs took
    # a tenth of its request as Python dicts through Flask's sorting encoder. The newline,
    # as jsonify's, keeps answers apart on a terminal (the README's curl examples).
    body = model.model_dump_json() + "\n"
    return Response(body, status=status, mimetype="application/json")
