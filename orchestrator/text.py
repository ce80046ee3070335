"""Text that may be stored, logged, put in a header or a Redis key: what it must not hold.

PostgreSQL stores no NUL character in text or JSON, and no encoder (the database driver's,
a log file's, a socket's) takes a lone UTF-16 surrogate, which a JSON string can carry as
an escape (`"\\ud800"`) and a command line as an undecodable byte. Both are refused where
text comes in, naming the field, instead of failing later as an error nobody can read.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from orchestrator.errors import FieldError

NUL_PROBLEM = "contains a NUL character (\\u0000)"
SURROGATE_PROBLEM = "contains a lone UTF-16 surrogate, which is not text"
CONTROL_PROBLEM = "contains a control character"
_SURROGATES = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or `None` if it can."""
    if "\x00" in value:
        return NUL_PROBLEM
    if _SURROGATES.search(value):
        return SURROGATE_PROBLEM
    return None


def name_problem(value: str) -> str | None:
    """Why `value` cannot be a key or name (stored, logged, compared): `text_problem`, or
    a control character, which no such name needs and a log line should not carry."""
    if problem := text_problem(value):
        return problem
    if any(unicodedata.category(char) == "Cc" for char in value):
        return CONTROL_PROBLEM
    return None


def json_text_problems(value: object, path: str = "", *, limit: int = 10) -> list[FieldError]:
    """Every string (and object key) in a parsed JSON value that cannot be stored, named by
    its path (`jobs.0.subject`, `input.rooms.2`), at most `limit` of them."""
    problems: list[FieldError] = []
    for where, problem in _walk(value, path):
        problems.append(FieldError(where or "body", problem))
        if len(problems) >= limit:
            break
    return problems


def field_text_problems(fields: Iterable[tuple[str, str]]) -> list[FieldError]:
    """Every named text field (a query string's, a form's, a header's) whose name or value
    cannot be stored, named by the field."""
    return [
        FieldError(name, problem)
        for name, value in fields
        if (problem := text_problem(name) or text_problem(value))
    ]


def _walk(value: object, path: str) -> Iterator[tuple[str, str]]:
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if problem := text_problem(item):
                yield where, problem
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if problem := text_problem(key):
                    yield where, f"has a key that {problem}"
                    continue
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            stack.extend(
                (child, f"{where}.{index}" if where else str(index))
                for index, child in reversed(list(enumerate(item)))
            )
