"""Inline dispatch: run each admitted job in this process, now. For tests and scripts.

A job's retries run here too, after their backoff, so a `send` returns once each job it
was given has finished; the steps its success made ready are admitted by the next fill
(`Admission.pump` runs fills until nothing is left to run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from orchestrator.dispatch.base import Delivery, Held
from orchestrator.runner import RetryLater, Runner


class InlineDispatcher:
    mode = "inline"

    def __init__(self, runner: Runner, sleep: Callable[[float], None] = time.sleep) -> None:
        self.runner = runner
        self.sleep = sleep

    def send(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            while isinstance(outcome := self.runner.run(delivery.job_id), RetryLater):
                self.sleep(outcome.delay)

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        return dict.fromkeys(queues, 0)  # nothing ever waits: jobs run as they are sent

    def held(self, queues: Iterable[str]) -> Held | None:
        return Held(frozenset(), frozenset())
