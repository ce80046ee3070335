"""The dispatcher interface: hand a pipeline's remaining steps to whatever runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from orchestrator.models import Job


@dataclass(frozen=True)
class Step:
    """What goes on the wire for one job: ids, not objects.

    `attempt` is the attempt this delivery is for, `requeues` how often the job was
    retried by hand and `parks` how often it was parked under a running limit (and sent
    anew on its release): together with the id they name the delivery, so a backend that
    de-duplicates by name (Cloud Tasks) drops a repeat of the same dispatch, and only that.
    """

    job_id: str
    type: str
    queue: str
    attempt: int = 1
    requeues: int = 0
    parks: int = 0

    @classmethod
    def of(cls, job: Job) -> Step:
        return cls(
            job_id=job.id,
            type=job.type,
            queue=job.queue,
            attempt=job.attempt + 1,
            requeues=job.requeues,
            parks=job.parks,
        )

    @property
    def delivery_id(self) -> str:
        parked = f"-p{self.parks}" if self.parks else ""  # names of jobs never parked stay
        return f"{self.job_id}-a{self.attempt}-r{self.requeues}{parked}"


class DispatchError(Exception):
    """The backend did not accept the work; the outbox keeps it for the sweeper."""


class Dispatcher(Protocol):
    mode: str
    # True when the backend runs a pipeline's later steps by itself (a Celery chain, the
    # inline loop); False when whoever runs a step must dispatch the next (push modes).
    drives_pipelines: bool

    def dispatch(self, steps: Sequence[Step], *, not_before: datetime | None = None) -> None:
        """Send `steps` (the first to run, then the ones after it), to start no earlier than
        `not_before`, or raise DispatchError."""
        ...

    def dispatch_many(self, pipelines: Sequence[Sequence[Step]]) -> None:
        """Send many pipelines at once; a backend may share one connection for them."""
        ...

    def lost_messages(self) -> bool:
        """Whether the backend lost what it held (a broker restarted without its data):
        everything it had accepted must then be sent again."""
        ...

    def messages_resent(self) -> None:
        """What the backend lost was sent again: `lost_messages` is false from now on."""
        ...
