"""Exceptions that cross module boundaries: the service raises them, the API renders them."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""


class PermanentError(OrchestratorError):
    """Raised by a handler to fail its job at once, without further attempts."""


class JobCancelled(OrchestratorError):
    """Raised inside a handler whose job was cancelled while it ran."""


class JobNotFound(OrchestratorError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobArchived(OrchestratorError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was archived")
        self.job_id = job_id


class JobConflict(OrchestratorError):
    """The job's state does not allow the operation (cancel a finished job, retry a running one)."""


class IdempotencyConflict(OrchestratorError):
    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class UnknownJobType(OrchestratorError):
    """A name no job type has; the message offers the closest known name and lists them
    (the first `LISTED` of them), so a typo is fixed from the error alone."""

    LISTED = 20

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        super().__init__(f"unknown job type {name!r}{_known_hint(name, known, self.LISTED)}")
        self.name = name


def _known_hint(name: str, known: Sequence[str], listed: int) -> str:
    if not known:
        return ""
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ";"
    more = f" and {len(known) - listed} more" if len(known) > listed else ""
    return f"{guess} known types: {', '.join(known[:listed])}{more}"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass
class InvalidInput(OrchestratorError):
    """Input that fails a job type's schema; carries one message per field."""

    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.message}" for e in self.errors)


class JobDefinitionError(OrchestratorError):
    """A job type declared wrongly: raised at definition time, never at run time."""
