"""HTTP dispatch: POST each delivery straight to a worker URL, the shape older deployments
use (and local development without Redis).

Sends happen on a small thread pool so a create does not wait for the job to run. A send
that fails is logged and reported (`failed`): its admission is taken back and the job is
admitted again at the next fill. A delivery due later is sent by a timer; if the process
dies first, the dispatcher finds it missing and admits the job again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests

from orchestrator.dispatch.base import Delivery, Held
from orchestrator.dispatch.push import PushTarget, push_body
from orchestrator.dispatch.stats import DispatchStats

log = logging.getLogger("orchestrator.dispatch.http")


class HttpDispatcher:
    mode = "http"
    reports_outcomes = True  # sends finish in the background, after send() returned

    def __init__(
        self,
        target: PushTarget,
        stats: DispatchStats,
        *,
        timeout: float = 600.0,
        workers: int = 8,
    ) -> None:
        self.target = target
        self.stats = stats
        self.timeout = timeout
        # Told of a push that failed after send() returned (the runtime takes its
        # admission back).
        self.failed: Callable[[Delivery], None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http-dispatch")
        self._session = requests.Session()

    def send(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            not_before = delivery.not_before
            delay = (not_before - datetime.now(UTC)).total_seconds() if not_before else 0.0
            if delay > 0:
                timer = threading.Timer(delay, self._pool.submit, args=(self._push, delivery))
                timer.daemon = True
                timer.start()
            else:
                self._pool.submit(self._push, delivery)

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        return None

    def held(self, queues: Iterable[str]) -> Held | None:
        return None

    def _push(self, delivery: Delivery) -> None:
        try:
            response = self._session.post(
                self.target.url,
                data=push_body(delivery),
                headers=self.target.headers(),
                timeout=self.timeout,
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            self.stats.record(self.mode, "failed")
            log.warning(
                "push of %s failed; it is admitted again: %s",
                delivery.delivery_id,
                exc,
                extra={"job_id": delivery.job_id, "action": "dispatch_failed"},
            )
            self._report_failure(delivery)
            return
        self.stats.record(self.mode, "succeeded")

    def _report_failure(self, delivery: Delivery) -> None:
        if self.failed is None:
            return
        try:
            self.failed(delivery)
        except Exception:  # the dispatcher finds it missing later
            log.exception(
                "could not take %s's admission back",
                delivery.delivery_id,
                extra={"job_id": delivery.job_id, "action": "dispatch_failed"},
            )
