"""The heartbeat's stop signal, landing at the worst moment."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import cast

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from orchestrator.db import Database
from orchestrator.heartbeat import Heartbeat
from orchestrator.states import Attempt


def soft_timeout_sighandler(signum: int, frame: FrameType | None) -> None:
    """What a Celery prefork child installs for SIGUSR1 (the heartbeat looks for the name)."""
    raise SoftTimeLimitExceeded()


@pytest.fixture
def celery_child_signals() -> Iterator[None]:
    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_stop_signal_landing_as_the_handler_returns_leaves_no_watch_behind(
    celery_child_signals: None,
) -> None:
    heartbeat = Heartbeat(
        database=cast(Database, None),  # never used: the first renewal is an hour away
        lease_seconds=60,
        interval=3600,
        clock=lambda: datetime.now(UTC),
    )
    holding = threading.Event()

    def stop_it_while_it_leaves() -> None:
        # What _renew does when it finds the run cancelled: signal, holding the lock.
        with heartbeat._lock:
            holding.set()
            time.sleep(0.2)  # the handler has returned; the watch waits for the lock
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            time.sleep(0.2)

    with heartbeat.watch(Attempt("job_1", "t1", 1), interruptible=True) as entry:
        assert entry.interruptible
        stopper = threading.Thread(target=stop_it_while_it_leaves)
        stopper.start()
        holding.wait()
    stopper.join()
    assert heartbeat._watches == {}
