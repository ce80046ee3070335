"""A pushed delivery (Cloud Tasks or plain HTTP): run the job, then dispatch what follows.

Push backends have no canvas and no retry policy of ours, so after the runner records the
outcome this dispatches the next pipeline step on success, or the next attempt at its
backoff time. If that dispatch fails, the outbox entry the transition wrote is still
there and the sweeper sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from orchestrator.models import Job
from orchestrator.runner import Outcome, RetryLater, Runner, Succeeded
from orchestrator.service import JobService
from orchestrator.states import JobStatus


@dataclass(frozen=True)
class Delivered:
    outcome: Outcome

    @property
    def name(self) -> str:
        return type(self.outcome).__name__.lower()


class PushDelivery:
    def __init__(self, runner: Runner, service: JobService) -> None:
        self.runner = runner
        self.service = service

    def handle(self, job_id: str, delivery: dict[str, Any]) -> Delivered:
        outcome = self.runner.run(job_id, delivery=delivery)
        if self.service.dispatcher.drives_pipelines:
            return Delivered(outcome)
        if isinstance(outcome, Succeeded):
            self._send(Job.parent_id == job_id, JobStatus.QUEUED)
        elif isinstance(outcome, RetryLater):
            self._send(Job.id == job_id, JobStatus.RETRYING)
        return Delivered(outcome)

    def _send(self, which: sa.ColumnElement[bool], status: JobStatus) -> None:
        """Dispatch the job `which` selects if it is in `status`, at its `run_at`."""
        with self.service.database.session() as session:
            job = session.scalar(sa.select(Job).where(which, Job.status == status))
        if job is not None:
            self.service.send([job], not_before=job.run_at)
