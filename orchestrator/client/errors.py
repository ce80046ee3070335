"""What the clients raise when the API answers with an error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

# How much of a body that is not a problem document (a proxy's HTML page) to keep.
DETAIL_CHARACTERS = 200


class ApiError(Exception):
    """An error answer: its `status`, `title`, the field `errors` of a 422 (each a
    `{"field", "message"}`) and the whole problem document as `problem`."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.title = str(problem.get("title", "error"))
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        detail = problem.get("detail")
        super().__init__(f"{status} {self.title}" + (f": {detail}" if detail else ""))

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        return cls(response.status_code, _problem(response))


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The API's problem document; for anything else in front of it (a gateway's HTML or
    text page), one made of the reason phrase and the body's opening."""
    try:
        problem = response.json()
    except ValueError:  # not JSON, or not text at all
        problem = None
    if isinstance(problem, dict):
        return problem
    text = response.text[:DETAIL_CHARACTERS].strip()
    return {"title": response.reason_phrase or "error", "detail": text or None}
