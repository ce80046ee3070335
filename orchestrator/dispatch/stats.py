"""Dispatch counts per mode, for `GET /internal/stats`, from the same counters `/metrics`
exposes (summed over the host's processes in multiprocess mode)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import metrics
from orchestrator.dispatch.base import Delivery, Dispatcher, DispatchError, Held

STARTED_FILE = "started"


class DispatchStats:
    def __init__(self) -> None:
        self._started = datetime.now(UTC)

    def record(self, mode: str, outcome: str, count: int = 1) -> None:
        metrics.DISPATCHES.labels(mode=mode, outcome=outcome).inc(count)

    def snapshot(self) -> dict[str, Any]:
        counts: defaultdict[str, dict[str, int]] = defaultdict(
            lambda: {"attempted": 0, "succeeded": 0, "failed": 0}
        )
        for metric in metrics.collect_counters():
            for sample in metric.samples:
                if sample.name != "orchestrator_dispatches_total":
                    continue
                mode, outcome = sample.labels["mode"], sample.labels["outcome"]
                counts[mode][outcome] += int(sample.value)
                counts[mode]["attempted"] += int(sample.value)
        return {"since": self._since().isoformat(), "dispatches": dict(counts)}

    def _since(self) -> datetime:
        folder = metrics.multiprocess_dir()
        started = folder / STARTED_FILE if folder else None
        if started is not None and started.exists():
            return datetime.fromisoformat(started.read_text().strip())
        return self._started


def reset_multiprocess_dir(folder: Path) -> None:
    """Drop the counters of processes that have ended, when the web starts.

    A process still running (a worker on this host that outlives a restart of the web)
    keeps its file: it writes on through its open mapping, and a file removed under it
    would take its counts out of `/metrics` until it restarted. Counting starts afresh,
    and `since` with it, only when no process of the host is left counting.
    """
    folder.mkdir(parents=True, exist_ok=True)
    live = False
    for counts in folder.glob("*.db"):
        if _running(_writer_pid(counts)):
            live = True
        else:
            counts.unlink()
    if not live or not (folder / STARTED_FILE).exists():
        (folder / STARTED_FILE).write_text(datetime.now(UTC).isoformat())


def _writer_pid(counts: Path) -> int | None:
    """The process that writes `counts` (prometheus_client names it `<kind>_<pid>.db`).
    A pid reused after a restart (a container with a kept state folder) keeps an old file
    counted: the counts are then too high, never lost."""
    pid = counts.stem.rpartition("_")[2]
    return int(pid) if pid.isdigit() else None


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


class CountingDispatcher:
    """Wraps a dispatcher and counts its sends. A dispatcher that sends in the background
    (`reports_outcomes`) records its own outcomes through `stats`."""

    def __init__(self, inner: Dispatcher, stats: DispatchStats) -> None:
        self.inner = inner
        self.stats = stats
        self.mode = inner.mode
        self.reports_outcomes: bool = getattr(inner, "reports_outcomes", False)

    def send(self, deliveries: Sequence[Delivery]) -> None:
        if self.reports_outcomes or not deliveries:
            self.inner.send(deliveries)
            return
        try:
            self.inner.send(deliveries)
        except DispatchError:
            self.stats.record(self.mode, "failed", len(deliveries))
            raise
        self.stats.record(self.mode, "succeeded", len(deliveries))

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        return self.inner.waiting(queues)

    def held(self, queues: Iterable[str]) -> Held | None:
        return self.inner.held(queues)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
