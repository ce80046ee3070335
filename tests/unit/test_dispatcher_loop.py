"""The dispatcher's loop outlives a database that fails it: it logs, lets its lease go,
and tries again, rather than exit and leave ready jobs to nobody."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from orchestrator import dispatcher as dispatcher_module
from orchestrator.dispatcher import IDLE_SECONDS, POLL_SECONDS, DispatchLoop, next_look
from orchestrator.window import WindowSizes


class _Lease:
    def __init__(self) -> None:
        self.token: int | None = None
        self.released = 0

    def hold(self, now: Any) -> bool:
        self.token = 1
        return True

    def fence(self) -> Any:
        return "the lease's token, as a fill reads it"

    def release(self) -> None:
        self.released += 1


class _FailingOnce:
    """An admission whose first fill meets a database error."""

    backlogged = False
    full_queues: list[str] = []

    def __init__(self, loop: DispatchLoop) -> None:
        self.loop = loop
        self.fills = 0

    def find_missing(self, *, recheck: bool = False) -> int:
        return 0

    def fill(self, fence: Any = None) -> list[Any]:
        self.fills += 1
        if self.fills == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        self.loop.stop.set()
        return []

    def send(self, deliveries: Any) -> None:
        pass

    def until_next_due(self) -> float | None:
        return None


class _Broker:
    def wait_for_nudge(self, timeout: float) -> bool:
        return False


def test_a_database_error_in_a_round_is_survived(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dispatcher_module, "RENEW_EVERY", 0.01)
    loop = DispatchLoop.__new__(DispatchLoop)
    lease = _Lease()
    loop.leadership = lease  # type: ignore[assignment]
    loop.broker = _Broker()  # type: ignore[assignment]
    loop.stop = threading.Event()
    loop._renewed = loop._checked = 0.0
    loop._sized = float("inf")  # no asking the workers their concurrency
    admission = _FailingOnce(loop)
    loop.admission = admission  # type: ignore[assignment]
    loop.run()
    assert admission.fills == 2  # it went on after the failure
    assert lease.released == 1
    assert "dispatcher round failed" in caplog.text


def test_a_floor_is_looked_at_often_only_while_its_window_moves() -> None:
    """A pace known only as a floor is measured by looking at once; but a window nobody
    takes from (workers busy with long jobs) would then be asked about every 2 ms for as
    long as a job runs, and by taking the least pause of all queues, would make every
    other queue's looks that frequent too."""
    sizes = WindowSizes(0, default_concurrency=2)
    sizes.observe_drain("slow", taken=100, seconds=0.1, dry=True)  # found empty: a floor
    sizes.observe_drain("fast", taken=100, seconds=0.1)  # measured: 1,000 a second
    calm: dict[str, float] = {}
    untouched = [next_look(sizes, "slow", 8, False, calm) for _ in range(4)]
    assert untouched == [POLL_SECONDS, 2 * POLL_SECONDS, 4 * POLL_SECONDS, 8 * POLL_SECONDS]
    assert next_look(sizes, "slow", 6, True, calm) == POLL_SECONDS  # taken from: at once
    assert max(next_look(sizes, "slow", 6, False, calm) for _ in range(20)) == IDLE_SECONDS
    # A measured pace: when half the window (250) should be gone, whatever the floor does.
    assert next_look(sizes, "fast", 200, False, calm) == pytest.approx((200 - 125) / 1000)
