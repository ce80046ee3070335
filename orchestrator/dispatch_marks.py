"""Marks of jobs the broker accepted, written a few at a time in the background.

A job is recorded with an outbox entry due a grace period after its creation. Once the
broker has it, the entry moves on to `redispatch_after` (for a broker that loses it).
That second write only saves work: without it the sweeper would send a job still waiting
in a backlog once more after the grace period, and the claim would skip the copy. So it
is not worth a transaction per job: a thread writes the marks of every job dispatched in
the last `interval` with one UPDATE. A mark lost in a crash costs one duplicate message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.models import utcnow

log = logging.getLogger("orchestrator.dispatch")


class DispatchMarks:
    def __init__(
        self,
        database: Database,
        *,
        redispatch_after: float,
        interval: float = 0.05,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.redispatch_after = timedelta(seconds=redispatch_after)
        self.interval = interval
        self.clock = clock
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, job_ids: Sequence[str]) -> None:
        """Mark these jobs dispatched soon (within `interval`)."""
        with self._lock:
            self._pending.extend(job_ids)
            self._ensure_thread()

    def flush(self) -> int:
        """Write the pending marks now; how many jobs they covered."""
        with self._lock:
            job_ids, self._pending = self._pending, []
        if not job_ids:
            return 0
        now = self.clock()
        try:
            self.database.statement(
                lambda session: transitions.mark_dispatched(
                    session, job_ids, now, resend_at=now + self.redispatch_after
                )
            )
        except Exception:
            # The jobs are in the broker; without their marks the sweeper sends them once
            # more after the grace period, and the claim skips the copies.
            log.exception("could not mark %d dispatched job(s)", len(job_ids))
        return len(job_ids)

    def _ensure_thread(self) -> None:
        # Called under the lock. The thread lives while there are marks to write; after a
        # fork (gunicorn, Celery) the parent's thread does not exist here.
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="dispatch-marks", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
            self.flush()
