"""Dispatch counts per mode, for `GET /internal/stats` (and, through the same counters, for
Prometheus).

Counters live in prometheus_client. When `PROMETHEUS_MULTIPROC_DIR` is set (the launcher
sets it, see `orchestrator.processes`), every process of the deployment on this host writes
its counts there and the snapshot adds them up, so any gunicorn worker answers for all.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, multiprocess

from orchestrator.dispatch.base import Dispatcher, DispatchError, Step

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STARTED_FILE = "started"
OUTCOMES = ("succeeded", "failed")


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


class DispatchStats:
    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self._counter = Counter(
            "orchestrator_dispatches",
            "Dispatches handed to a backend, by mode and outcome.",
            ["mode", "outcome"],
            registry=self._registry,
        )
        self._started = datetime.now(UTC)

    def record(self, mode: str, outcome: str) -> None:
        self._counter.labels(mode=mode, outcome=outcome).inc()

    def snapshot(self) -> dict[str, Any]:
        counts: defaultdict[str, dict[str, int]] = defaultdict(
            lambda: {"attempted": 0, "succeeded": 0, "failed": 0}
        )
        for metric in self._collect():
            for sample in metric.samples:
                if sample.name != "orchestrator_dispatches_total":
                    continue
                mode, outcome = sample.labels["mode"], sample.labels["outcome"]
                counts[mode][outcome] += int(sample.value)
                counts[mode]["attempted"] += int(sample.value)
        return {"since": self._since().isoformat(), "dispatches": dict(counts)}

    def _collect(self) -> Any:
        folder = multiprocess_dir()
        if folder is None:
            return self._registry.collect()
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=str(folder))  # type: ignore[no-untyped-call]
        return combined.collect()

    def _since(self) -> datetime:
        folder = multiprocess_dir()
        started = folder / STARTED_FILE if folder else None
        if started is not None and started.exists():
            return datetime.fromisoformat(started.read_text().strip())
        return self._started


def reset_multiprocess_dir(folder: Path) -> None:
    """Start counting afresh: called once by the launcher, before any process writes."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    (folder / STARTED_FILE).write_text(datetime.now(UTC).isoformat())


class CountingDispatcher:
    """Wraps a dispatcher and counts its sends. A dispatcher that sends in the background
    (`reports_outcomes`) records its own outcomes through `stats`."""

    def __init__(self, inner: Dispatcher, stats: DispatchStats) -> None:
        self.inner = inner
        self.stats = stats
        self.mode = inner.mode
        self.drives_pipelines = inner.drives_pipelines

    def dispatch(self, steps: Sequence[Step], *, not_before: datetime | None = None) -> None:
        if getattr(self.inner, "reports_outcomes", False):
            self.inner.dispatch(steps, not_before=not_before)
            return
        try:
            self.inner.dispatch(steps, not_before=not_before)
        except DispatchError:
            self.stats.record(self.mode, "failed")
            raise
        self.stats.record(self.mode, "succeeded")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
