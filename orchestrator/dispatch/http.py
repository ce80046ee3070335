"""HTTP dispatch: POST each delivery straight to a worker URL, the shape older deployments
use (and local development without Redis).

Sends happen on a small thread pool so a create does not wait for the job to run; a send
that fails is logged and left to the outbox sweeper. A delayed delivery is sent by a timer;
if the process dies first, the sweeper sends it when due.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests

from orchestrator.dispatch.base import Step
from orchestrator.dispatch.push import PushTarget, push_body
from orchestrator.dispatch.stats import DispatchStats

log = logging.getLogger("orchestrator.dispatch.http")


class HttpDispatcher:
    mode = "http"
    drives_pipelines = False
    reports_outcomes = True  # sends finish in the background, after dispatch() returned

    def __init__(
        self,
        target: PushTarget,
        stats: DispatchStats,
        *,
        timeout: float = 600.0,
        workers: int = 8,
        failed: Callable[[Step], None] | None = None,
    ) -> None:
        self.target = target
        self.stats = stats
        self.timeout = timeout
        # Told of a push that failed after dispatch() returned, when the job's outbox entry
        # already waits for the long resend of a job handed over.
        self.failed = failed
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http-dispatch")
        self._session = requests.Session()

    def dispatch(self, steps: Sequence[Step], *, not_before: datetime | None = None) -> None:
        step = steps[0]
        delay = (not_before - datetime.now(UTC)).total_seconds() if not_before else 0.0
        if delay > 0:
            timer = threading.Timer(delay, self._pool.submit, args=(self._send, step))
            timer.daemon = True
            timer.start()
            return
        self._pool.submit(self._send, step)

    def _send(self, step: Step) -> None:
        try:
            response = self._session.post(
                self.target.url,
                data=push_body(step),
                headers=self.target.headers(),
                timeout=self.timeout,
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            self.stats.record(self.mode, "failed")
            log.warning(
                "push of %s failed; the outbox sweeper will resend: %s",
                step.delivery_id,
                exc,
                extra={"job_id": step.job_id, "action": "dispatch_failed"},
            )
            self._report_failure(step)
            return
        self.stats.record(self.mode, "succeeded")

    def _report_failure(self, step: Step) -> None:
        if self.failed is None:
            return
        try:
            self.failed(step)
        except Exception:  # the sweeper still resends it, only later
            log.exception(
                "could not bring %s's resend forward",
                step.delivery_id,
                extra={"job_id": step.job_id, "action": "dispatch_failed"},
            )

    def dispatch_many(self, pipelines: Sequence[Sequence[Step]]) -> None:
        for steps in pipelines:
            self.dispatch(steps)

    def lost_messages(self) -> bool:
        return False  # A push is answered or reported failed; nothing waits anywhere.

    def messages_resent(self) -> None:
        pass
