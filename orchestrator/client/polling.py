"""Waiting for a job to finish, by polling its page: when to look again and when to
give up. The clients do the looking and the sleeping (`time.sleep`, `asyncio.sleep`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestrator.client import routes
from orchestrator.client.calls import Call
from orchestrator.client.routes import Job
from orchestrator.states import TERMINAL


@dataclass(frozen=True)
class Waiting:
    call: Call[Job]
    job_id: str
    timeout: float
    poll: float
    pipeline: bool
    started: float = field(default_factory=time.monotonic)

    def pause_after(self, job: Job) -> float | None:
        """None once `job` (and, with `pipeline`, each step after it) has finished; else
        how long to sleep before looking again. `TimeoutError` when time is up."""
        steps = (job.get("pipeline") or {}).get("steps", []) if self.pipeline else []
        if all(each["status"] in TERMINAL for each in [job, *steps]):
            return None
        left = self.started + self.timeout - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.job_id} still {job['status']} after {self.timeout}s")
        return min(self.poll, left)


def wait_for_job(
    job_id: str, *, timeout: float = 300.0, poll: float = 0.5, pipeline: bool = True
) -> Waiting:
    """The job once it has finished (`succeeded`, `failed` or `cancelled`), and with
    `pipeline` each step after it too, looking every `poll` seconds; `TimeoutError` after
    `timeout` seconds."""
    return Waiting(routes.get_job(job_id), job_id, timeout, poll, pipeline)
