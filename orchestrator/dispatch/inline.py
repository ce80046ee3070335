"""Inline dispatch: run the pipeline in this process, now. For tests and scripts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from orchestrator.dispatch.base import Step
from orchestrator.runner import RetryLater, Runner, Succeeded


class InlineDispatcher:
    mode = "inline"
    drives_pipelines = True

    def __init__(self, runner: Runner, sleep: Callable[[float], None] = time.sleep) -> None:
        self.runner = runner
        self.sleep = sleep

    def dispatch(self, steps: Sequence[Step], *, not_before: datetime | None = None) -> None:
        if not_before is not None:
            self.sleep(max((not_before - datetime.now(UTC)).total_seconds(), 0.0))
        for step in steps:
            if not self._run_to_end(step):
                return

    def _run_to_end(self, step: Step) -> bool:
        """Run one step through its retries; True when the next step may run."""
        while True:
            outcome = self.runner.run(step.job_id)
            if isinstance(outcome, RetryLater):
                self.sleep(outcome.delay)
                continue
            return isinstance(outcome, Succeeded)

    def dispatch_many(self, pipelines: Sequence[Sequence[Step]]) -> None:
        for steps in pipelines:
            self.dispatch(steps)

    def lost_messages(self) -> bool:
        return False  # Nothing waits anywhere: jobs run as they are sent.

    def messages_resent(self) -> None:
        pass
