"""Job states, which transitions between them are allowed, and the values a run carries
(its fencing token, its error).

The transitions themselves are written only by `orchestrator.transitions`; this module is the
vocabulary both it and its readers share.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.models import Job


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# The states a job can still leave, in declaration order (the gauges, and their index).
LIVE = tuple(status for status in JobStatus if status not in TERMINAL)
# How a job ends without succeeding: what a join counts as a lost child.
LOST = (JobStatus.FAILED, JobStatus.CANCELLED)

# The states a delivery may claim a job from.
CLAIMABLE = frozenset({JobStatus.QUEUED, JobStatus.RETRYING})

# from-state -> states it may move to; the transition module asserts every write against it.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    # FAILED -> WAITING: a workflow's gate, or a map's job held back, retried by request.
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.WAITING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.WAITING}),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every state from which `target` may be reached."""
    return frozenset(src for src, dests in ALLOWED.items() if target in dests)


@dataclass(frozen=True)
class Attempt:
    """The fencing token of one claimed run: writes for it must match `job_id` and
    `attempt`. The rest labels metrics: the job's type and when the run started."""

    job_id: str
    tenant_id: str
    attempt: int
    job_type: str = "unknown"
    started_at: datetime | None = None

    @classmethod
    def of(cls, job: Job) -> Attempt:
        """The attempt a claimed job's row holds."""
        return cls(job.id, job.tenant_id, job.attempt, job.type, job.started_at)


class LeaseState(Enum):
    HELD = "held"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str | None = None
