"""Every error answer is RFC 9457 problem+json, rendered here and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from orchestrator.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidInput,
    JobArchived,
    JobConflict,
    JobNotFound,
    UnknownJobType,
)

log = logging.getLogger("orchestrator.api")

PROBLEM_MIMETYPE = "application/problem+json"


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = list(errors), headers or {}


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "instance": request.path,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    response = jsonify(body)
    response.status_code = problem.status
    response.mimetype = PROBLEM_MIMETYPE
    response.headers.update(problem.headers)
    return response


def request_validation_problem(exc: ValidationError) -> Problem:
    where = "query string" if request.method == "GET" else "request body"
    errors = [
        FieldError(".".join(str(p) for p in err["loc"]) or "body", err["msg"])
        for err in exc.errors()
    ]
    return Problem(422, "Invalid request", f"The {where} failed validation.", errors)


def init_app(app: Flask) -> None:
    app.register_error_handler(Problem, problem_response)
    app.register_error_handler(
        JobNotFound, lambda e: problem_response(Problem(404, "Job not found", str(e)))
    )
    app.register_error_handler(
        JobArchived, lambda e: problem_response(Problem(410, "Job archived", str(e)))
    )
    app.register_error_handler(
        JobConflict, lambda e: problem_response(Problem(409, "Conflict", str(e)))
    )
    app.register_error_handler(
        IdempotencyConflict,
        lambda e: problem_response(Problem(409, "Idempotency key reused", str(e))),
    )
    app.register_error_handler(
        UnknownJobType,
        lambda e: problem_response(
            Problem(422, "Unknown job type", str(e), [FieldError("type", str(e))])
        ),
    )
    app.register_error_handler(
        InvalidInput,
        lambda e: problem_response(
            Problem(422, "Invalid input", "The job input failed its type's schema.", e.errors)
        ),
    )
    app.register_error_handler(
        ValidationError, lambda e: problem_response(request_validation_problem(e))
    )
    app.register_error_handler(HTTPException, _http_problem)
    app.register_error_handler(Exception, _unexpected)


def _http_problem(exc: HTTPException) -> Response:
    status = exc.code or 500
    # Werkzeug puts Allow (405) and WWW-Authenticate (401) in the exception's own headers.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return problem_response(Problem(status, exc.name, exc.description, headers=headers))


def _unexpected(exc: Exception) -> Response:
    log.exception(
        "unhandled error on %s %s", request.method, request.path, extra={"action": "http_500"}
    )
    return problem_response(
        Problem(500, "Internal Server Error", "The server failed; the error is logged.")
    )
