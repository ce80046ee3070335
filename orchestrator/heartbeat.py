"""Leases kept alive while handlers run, and cancels noticed while they do.

One daemon thread per process renews the lease of every run in progress. When the renewal
finds the run cancelled, or superseded by another attempt, it sets the run's stop event and,
in a Celery prefork child, interrupts the handler with the soft-time-limit signal so that
even a handler that never checks `ctx.cancelled` stops promptly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.states import Attempt, LeaseState

log = logging.getLogger("orchestrator.heartbeat")


@dataclass
class Watch:
    run: Attempt
    stop: threading.Event = field(default_factory=threading.Event)
    state: LeaseState = LeaseState.HELD
    interruptible: bool = False


class Heartbeat:
    def __init__(
        self,
        database: Database,
        *,
        lease_seconds: float,
        interval: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.database = database
        self.lease = timedelta(seconds=lease_seconds)
        self.interval = interval
        self.clock = clock
        # By attempt: in a threaded web process two attempts of one job may overlap.
        self._watches: dict[tuple[str, int], Watch] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @contextmanager
    def watch(self, run: Attempt, *, interruptible: bool = False) -> Iterator[Watch]:
        """Keep `run`'s lease while the block runs; `interruptible` lets us signal it."""
        entry = Watch(run, interruptible=interruptible and _can_interrupt())
        key = (run.job_id, run.attempt)
        with self._lock:
            self._watches[key] = entry
            self._ensure_thread()
        try:
            yield entry
        finally:
            self._forget(key, entry)

    def _forget(self, key: tuple[str, int], entry: Watch) -> None:
        """Stop watching. The stop signal is sent under the lock, so it can land while this
        waits for it, just as the handler has returned: the handler is done, so it is let
        go, and the watch (which would renew the lease for ever) is removed all the same."""
        while True:
            try:
                with self._lock:
                    entry.interruptible = False
                    self._watches.pop(key, None)
                return
            except SoftTimeLimitExceeded:
                continue

    def beat_once(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for entry in watches:
            self._renew(entry)

    def _renew(self, entry: Watch) -> None:
        try:
            with self.database.transaction() as session:
                state = transitions.extend_lease(session, entry.run, self.clock() + self.lease)
        except Exception:
            log.exception("lease renewal failed", extra=_extra(entry.run, "heartbeat_failed"))
            return
        if state is LeaseState.HELD or entry.stop.is_set():
            return
        entry.state = state
        entry.stop.set()
        log.info("stopping run: %s", state.value, extra=_extra(entry.run, "stop_requested"))
        with self._lock:
            if entry.interruptible:
                os.kill(os.getpid(), signal.SIGUSR1)

    def _ensure_thread(self) -> None:
        # After a fork the parent's thread does not exist in the child: start our own.
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._loop, name="orchestrator-heartbeat", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        stopped = threading.Event()
        while not stopped.wait(self.interval):
            self.beat_once()


def _can_interrupt() -> bool:
    """True in a Celery prefork child: it turns SIGUSR1 into SoftTimeLimitExceeded."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGUSR1)
    return callable(handler) and getattr(handler, "__name__", "") == "soft_timeout_sighandler"


def _extra(run: Attempt, action: str) -> dict[str, object]:
    return {
        "job_id": run.job_id,
        "tenant_id": run.tenant_id,
        "attempt": run.attempt,
        "action": action,
    }
