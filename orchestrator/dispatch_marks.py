"""Marks of jobs the broker accepted, written late and in bulk, and only where needed.

A job is recorded with an outbox entry due a grace period after its creation: if nobody
claimed it by then, the sweeper sends it (again). For a job the broker did accept but
which waits in a backlog, that resend would be a duplicate, so once the broker has a job
its entry is moved on to `redispatch_after` (for a broker that really lost it).

Most jobs are claimed within milliseconds, and a claim clears the entry anyway; writing a
mark for each of them cost about a third of a creation's throughput. So the marks wait
half the grace period, then one UPDATE writes those of the jobs still unclaimed, which
are the only ones the sweeper could resend. A mark lost in a crash costs one duplicate
message, which the claim skips.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.models import utcnow

log = logging.getLogger("orchestrator.dispatch")
CHUNK = 1000  # ids per UPDATE


class DispatchMarks:
    def __init__(
        self,
        database: Database,
        *,
        redispatch_after: float,
        delay: float,
        interval: float = 0.25,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.redispatch_after = timedelta(seconds=redispatch_after)
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self._pending: deque[tuple[float, Sequence[str]]] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, job_ids: Sequence[str]) -> None:
        """Mark these jobs dispatched in `delay` seconds, if no worker claimed them first."""
        with self._lock:
            self._pending.append((time.monotonic() + self.delay, job_ids))
            self._ensure_thread()

    def flush(self, *, due_only: bool = False) -> int:
        """Write the pending marks (only those due, with `due_only`); how many jobs they
        covered, claimed or not."""
        now_mono = time.monotonic()
        job_ids: list[str] = []
        with self._lock:
            while self._pending and (not due_only or self._pending[0][0] <= now_mono):
                job_ids.extend(self._pending.popleft()[1])
        for start in range(0, len(job_ids), CHUNK):
            self._write(job_ids[start : start + CHUNK])
        return len(job_ids)

    def _write(self, job_ids: list[str]) -> None:
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
            self.flush(due_only=True)
