"""Request and response bodies on the wire: JSON in, refused with a problem when it cannot
be read or stored, and pydantic models out."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request
from pydantic import BaseModel

from api.errors import Problem
from orchestrator.text import field_text_problems, json_text_problems

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def json_body(*, optional: bool = False) -> Any:
    """The request body as JSON. Malformed (or absurdly nested) bodies are a 400; strings
    that cannot be stored (lone surrogates, NUL) are a 422 naming each field."""
    raw = request.get_data(cache=True)
    if optional and not raw:
        return {}
    body = _parsed(raw)
    if problems := json_text_problems(body):
        raise Problem(
            422, "Invalid text", "The request body holds text that cannot be stored.", problems
        )
    return body


def _parsed(raw: bytes) -> Any:
    """The body as JSON, or a 400 that says what is wrong with it."""
    if not raw.strip():
        raise Problem(400, "Malformed JSON", "The request body is empty: send a JSON object.")
    try:
        body = json.loads(raw)  # UTF-8, or the UTF-16 or UTF-32 that JSON allows
    except UnicodeDecodeError:
        why = "is not UTF-8 text"
    except RecursionError:
        why = "is nested too deeply"
    except ValueError as exc:  # not JSON, or a number of thousands of digits
        why = f"cannot be read as JSON ({str(exc).split(';')[0]})"
    else:
        if body is not None:
            return body
        why = "is null: send a JSON object"
    raise Problem(400, "Malformed JSON", f"The request body {why}.")


def json_response(model: BaseModel, status: int = 200) -> Response:
    # Straight to JSON in pydantic's serializer: a batch's answer of a thousand jobs took
    # a tenth of its request as Python dicts through Flask's sorting encoder. The newline,
    # as jsonify's, keeps answers apart on a terminal (the README's curl examples).
    body = model.model_dump_json() + "\n"
    return Response(body, status=status, mimetype="application/json")


def refuse_unstorable_fields() -> None:
    """Query and form fields are text too: one that no store takes (a NUL, a lone
    surrogate), in its name or its value, is a 422 naming it on every route, before any
    view reads it. The dashboard's and the operator console's views looked jobs up by
    them, and the database's refusal was a 500."""
    fields = list(request.args.items(multi=True))
    if request.mimetype in FORM_TYPES:
        fields += request.form.items(multi=True)
    if problems := field_text_problems(fields):
        named = "; ".join(f"{e.field} {e.message}" for e in problems[:3])
        detail = f"The request holds text that cannot be stored: {named}."
        raise Problem(422, "Invalid text", detail, problems[:10])
