"""A pushed delivery (Cloud Tasks or plain HTTP): run the job, then fill the window again.

Push backends have no canvas and no retry policy of ours: a run's end frees its place in
the window and may have made jobs ready (the next pipeline step, a retry due now), so the
request that ran it fills the window right after (`Admission.pump`), fairly, as the
dispatcher would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.admission import Admission
from orchestrator.runner import Outcome, Runner


@dataclass(frozen=True)
class Delivered:
    outcome: Outcome

    @property
    def name(self) -> str:
        return type(self.outcome).__name__.lower()


class PushDelivery:
    def __init__(self, runner: Runner, admission: Admission) -> None:
        self.runner = runner
        self.admission = admission

    def handle(self, job_id: str, delivery: dict[str, Any]) -> Delivered:
        outcome = self.runner.run(job_id, delivery=delivery)
        if self.admission.in_process:
            self.admission.pump()
        return Delivered(outcome)
