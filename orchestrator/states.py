"""Job states and which transitions between them are allowed.

The transitions themselves are written only by `orchestrator.transitions`; this module is the
vocabulary both it and its readers share.
"""

from __future__ import annotations

from enum import StrEnum


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
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.WAITING}),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every state from which `target` may be reached."""
    return frozenset(src for src, dests in ALLOWED.items() if target in dests)
