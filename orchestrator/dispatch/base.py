"""The dispatcher interface: send admitted jobs to whatever runs them, and say what the
broker holds, so the dispatcher keeps its window full and notices what went missing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """What goes on the wire for one admitted job: ids, not objects.

    `number` is its admission's, from the dispatch window: together with the job's id it
    names the delivery, so each admission is a new name (Cloud Tasks keeps a used one
    reserved for an hour) and a repeat of the same admission is the same name.
    """

    job_id: str
    type: str
    queue: str
    number: int
    priority: int = 5
    not_before: datetime | None = None
    trace: str | None = None  # the W3C traceparent the job carries
    tenant_id: str | None = None  # for the figures of who was admitted

    @property
    def delivery_id(self) -> str:
        return f"{self.job_id}-d{self.number}"


class DispatchError(Exception):
    """The backend did not accept the work; the job stays ready and is admitted again."""


class Dispatcher(Protocol):
    mode: str

    def send(self, deliveries: Sequence[Delivery]) -> None:
        """Send these deliveries (one round trip where the backend allows), or raise
        DispatchError; a backend that sends in the background reports its failures to
        the window itself."""
        ...

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        """How many deliveries wait in the broker per queue for a worker to take them, or
        None when the backend cannot tell (the window counts its own entries then)."""
        ...

    def held(self, queues: Iterable[str]) -> Held | None:
        """The delivery ids the broker holds, waiting or taken and not yet acknowledged,
        or None when it cannot tell."""
        ...


@dataclass(frozen=True)
class Held:
    waiting: frozenset[str]  # in the queues, for any worker to take
    taken: frozenset[str]  # taken by a worker, not yet acknowledged
