"""The dispatcher interface: hand a pipeline's remaining steps to whatever runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.models import Job


@dataclass(frozen=True)
class Step:
    """What goes on the wire for one job: its id, and where its type's task lives."""

    job_id: str
    type: str
    queue: str

    @classmethod
    def of(cls, job: Job) -> Step:
        return cls(job_id=job.id, type=job.type, queue=job.queue)


class DispatchError(Exception):
    """The backend did not accept the work; the outbox keeps it for the sweeper."""


class Dispatcher(Protocol):
    mode: str

    def dispatch(self, steps: Sequence[Step]) -> None:
        """Send `steps` (the first to run, then the ones after it) or raise DispatchError."""
        ...
