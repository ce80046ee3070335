"""Dispatch counts per mode since the process started, for `GET /internal/stats`."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.dispatch.base import Dispatcher, DispatchError, Step


class DispatchStats:
    def __init__(self) -> None:
        self.since = datetime.now(UTC)
        self._lock = threading.Lock()
        self._counts: defaultdict[str, dict[str, int]] = defaultdict(
            lambda: {"attempted": 0, "succeeded": 0, "failed": 0}
        )

    def record(self, mode: str, outcome: str) -> None:
        with self._lock:
            self._counts[mode]["attempted"] += 1
            self._counts[mode][outcome] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = {mode: dict(values) for mode, values in self._counts.items()}
        return {"since": self.since.isoformat(), "dispatches": counts}


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
