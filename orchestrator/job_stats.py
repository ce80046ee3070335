"""A tenant's jobs in figures (`GET /v1/stats`): how many it has in each status, and over
the jobs it created in a recent window (an hour by default) their count per type and
status, the failure rate, and the median and 95th percentile of queue wait and run time.

The window is read by creation time: ids sort by it, so the window is one range of the
(tenant, id) index, and its cost is the tenant's own jobs of the window, whatever other
tenants do. Its newest `MAX_ROWS` jobs at most are read; `truncated` says when there
were more.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.ids import PREFIX
from orchestrator.models import UNARCHIVED_SQL, Job, UTCDateTime
from orchestrator.states import JobStatus

MAX_ROWS = 100_000
# Statuses whose `started_at` is the start of the wait that ended last.
STARTED = frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED})
DEFAULT_WINDOW_SECONDS = 3600
JOBS: sa.Table = Job.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Spread:
    """Median and 95th percentile, in seconds (None: nothing measured)."""

    p50: float | None = None
    p95: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread:
        if not seconds:
            return cls()
        ordered = sorted(seconds)
        return cls(_percentile(ordered, 0.50), _percentile(ordered, 0.95))


@dataclass(frozen=True)
class Window:
    since: datetime
    seconds: int
    jobs: int = 0
    truncated: bool = False
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    failure_rate: float | None = None  # failed / (succeeded + failed); None if neither
    queue_wait: Spread = Spread()
    run_time: Spread = Spread()


@dataclass(frozen=True)
class TenantFigures:
    tenant_id: str
    by_status: dict[str, int]
    window: Window


def tenant_figures(
    database: Database,
    tenant_id: str,
    now: datetime,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> TenantFigures:
    since = now - timedelta(seconds=window_seconds)
    with database.session() as session:
        counts = session.execute(
            sa.select(JOBS.c.status, sa.func.count())
            .where(JOBS.c.tenant_id == tenant_id, sa.text(UNARCHIVED_SQL))
            .group_by(JOBS.c.status)
        ).all()
        rows = session.execute(
            sa.select(
                JOBS.c.type,
                JOBS.c.status,
                sa.func.coalesce(
                    JOBS.c.ready_since, JOBS.c.run_at, JOBS.c.created_at, type_=UTCDateTime()
                ),
                JOBS.c.started_at,
                JOBS.c.finished_at,
            )
            .where(
                JOBS.c.tenant_id == tenant_id,
                JOBS.c.id >= first_id_at(since),
                sa.text(UNARCHIVED_SQL),  # as `byStatus` counts
            )
            .order_by(JOBS.c.id.desc())
            .limit(MAX_ROWS + 1)
        ).all()
    by_status = {status.value: 0 for status in JobStatus}
    by_status.update({JobStatus(status).value: count for status, count in counts})
    window = _window(since, window_seconds, rows[:MAX_ROWS], truncated=len(rows) > MAX_ROWS)
    return TenantFigures(tenant_id, by_status, window)


def first_id_at(moment: datetime) -> str:
    """The smallest id a job created at `moment` or later can have."""
    millis = math.floor(moment.timestamp() * 1000)
    return f"{PREFIX}{millis:012x}{0:016x}"


def _window(
    since: datetime,
    seconds: int,
    rows: Sequence[sa.Row[Any, Any, Any, Any, Any]],
    *,
    truncated: bool,
) -> Window:
    by_type: defaultdict[str, Counter[str]] = defaultdict(Counter)
    waits: list[float] = []
    runs: list[float] = []
    for job_type, stored, due, started, finished in rows:
        status = JobStatus(stored)
        by_type[job_type][status.value] += 1
        # A job waiting again (a retry's backoff, a retry by hand) keeps its last start,
        # from before it became due: its present wait is not over, and not measured.
        if started is not None and status in STARTED and started >= due:
            waits.append((started - due).total_seconds())
        if started is not None and finished is not None and status is not JobStatus.CANCELLED:
            runs.append(max((finished - started).total_seconds(), 0.0))
    succeeded = sum(c[JobStatus.SUCCEEDED.value] for c in by_type.values())
    failed = sum(c[JobStatus.FAILED.value] for c in by_type.values())
    return Window(
        since=since,
        seconds=seconds,
        jobs=len(rows),
        truncated=truncated,
        by_type={t: dict(c) for t, c in sorted(by_type.items())},
        failure_rate=round(failed / (succeeded + failed), 4) if succeeded + failed else None,
        queue_wait=Spread.of(waits),
        run_time=Spread.of(runs),
    )


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank: a value that was measured, never one between two."""
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return round(ordered[rank - 1], 6)
