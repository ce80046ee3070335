"""Prometheus metrics: what happened to jobs (counters, histograms) and where they stand
(gauges read from the database at scrape time, where the database is the truth).

Counters are bumped only once the transaction that made the change has committed:
transitions queue their increments on the session (`count`), and a commit hook applies them,
a rollback drops them. With `PROMETHEUS_MULTIPROC_DIR` set (the launcher sets it), every
gunicorn and Celery process on the host writes its counts there and `/metrics` adds them up.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from orchestrator import tenant_stats
from orchestrator.models import LIVE_STATES_SQL, Job, utcnow
from orchestrator.states import CLAIMABLE, LIVE, JobStatus

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
JOB_EVENTS = ("created", "started", "succeeded", "failed", "retried", "cancelled")
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
PENDING_KEY = "orchestrator.metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST

registry = CollectorRegistry()
JOBS = {
    event: Counter(
        f"orchestrator_jobs_{event}", f"Jobs {event}, by type.", ["type"], registry=registry
    )
    for event in JOB_EVENTS
}
DURATION = Histogram(
    "orchestrator_job_duration_seconds",
    "Run time of an attempt, from claim to its outcome.",
    ["type"],
    buckets=SECONDS_BUCKETS,
    registry=registry,
)
QUEUE_WAIT = Histogram(
    "orchestrator_job_queue_wait_seconds",
    "Time from a job being due to a worker claiming it.",
    ["type"],
    buckets=SECONDS_BUCKETS,
    registry=registry,
)
DISPATCHES = Counter(
    "orchestrator_dispatches",
    "Dispatches by mode and outcome.",
    ["mode", "outcome"],
    registry=registry,
)


def multiprocess_dir() -> Path | None:
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


def count(session: Session, event: str, job_type: str, seconds: float | None = None) -> None:
    """Queue an increment for when `session` commits."""
    session.info.setdefault(PENDING_KEY, []).append((event, job_type, seconds))


def apply_pending(session: Session) -> None:
    for event, job_type, seconds in session.info.pop(PENDING_KEY, []):
        record(event, job_type, seconds)


def record(event: str, job_type: str, seconds: float | None = None) -> None:
    """Count a committed change now (what `count` does when its session commits)."""
    JOBS[event].labels(type=job_type).inc()
    if seconds is not None and event == "started":
        QUEUE_WAIT.labels(type=job_type).observe(seconds)
    elif seconds is not None:
        DURATION.labels(type=job_type).observe(seconds)


def drop_pending(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)


def collect_counters() -> Iterator[Any]:
    """Every counter and histogram: summed over the host's processes when multiprocess."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return iter(registry.collect())
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=folder)  # type: ignore[no-untyped-call]
    return iter(combined.collect())


class DatabaseGauges(Collector):
    """Queue depth, jobs per live state, the oldest due job's wait, and each tenant's jobs
    by where they stand in dispatch, read at scrape time from the live jobs only (through
    the live states' index): cost follows the live jobs, not history."""

    def __init__(self, session: Callable[[], Session], clock: Callable[[], datetime] = utcnow):
        self.session = session
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        # A job delayed or backing off is queued, but no worker may take it yet: it is no
        # backlog until it is ready, and it waits from then (`ready_since`).
        with self.session() as session:
            by_state = session.execute(
                sa.select(
                    Job.status,
                    Job.queue,
                    sa.func.count(),
                    sa.func.count(Job.ready_since),
                    sa.func.min(Job.ready_since),
                )
                .where(sa.text(LIVE_STATES_SQL))
                .group_by(Job.status, Job.queue)
            ).all()
            tenants = tenant_stats.loads(session)
        depth = GaugeMetricFamily(
            "orchestrator_queue_depth",
            "Jobs due and waiting for a worker (admitted or not), by queue.",
            labels=["queue"],
        )
        states = GaugeMetricFamily(
            "orchestrator_jobs_in_state", "Jobs in each live state.", labels=["status"]
        )
        oldest = GaugeMetricFamily(
            "orchestrator_oldest_queued_job_age_seconds",
            "How long the due job queued longest has waited (0 when none is).",
        )
        per_state: dict[str, int] = dict.fromkeys((str(s) for s in LIVE), 0)
        per_queue: Tally[str] = Tally()
        oldest_at: datetime | None = None
        for status, queue, total, ready, earliest in by_state:
            per_state[str(status)] += total
            if JobStatus(status) in CLAIMABLE:
                per_queue[queue] += ready
                oldest_at = min(filter(None, (oldest_at, earliest)), default=None)
        for queue, total in per_queue.items():
            depth.add_metric([queue], total)
        for name, total in per_state.items():
            states.add_metric([name], total)
        age = (now - oldest_at).total_seconds() if oldest_at else 0.0
        oldest.add_metric([], max(age, 0.0))
        yield from (depth, states, oldest, _tenant_gauge(tenants.values()))


def _tenant_gauge(loads: Iterable[tenant_stats.TenantLoad]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(
        "orchestrator_tenant_jobs",
        "Each tenant's live jobs by where they stand: queued (due, waiting for admission), "
        "admitted (in the workers' queues), running, scheduled (due later).",
        labels=["tenant", "place"],
    )
    for load in loads:
        for place in ("queued", "admitted", "running", "scheduled"):
            gauge.add_metric([load.tenant_id, place], getattr(load, place))
    return gauge


class _Counters(Collector):
    def collect(self) -> Iterator[Any]:
        return collect_counters()


def scrape_registry(gauges: DatabaseGauges | None = None) -> CollectorRegistry:
    """Counters of every process on this host, plus the database gauges if given."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Counters())
    if gauges is not None:
        scrape.register(gauges)
    return scrape


def exposition(gauges: DatabaseGauges) -> bytes:
    """The text for `GET /metrics`."""
    return generate_latest(scrape_registry(gauges))
