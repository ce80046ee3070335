"""Where each tenant stands: its jobs waiting, admitted, running and scheduled (read from the
database at the time of asking), and how many it had admitted in the last minute (counted
as they are sent), with its share of all admissions.

An operator reads them in `/metrics` (gauges), `GET /admin/tenants/stats` and the dashboard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import window
from orchestrator.db import Database
from orchestrator.models import LIVE_STATES_SQL, READY_SQL, Job, WindowEntry
from orchestrator.states import CLAIMABLE, JobStatus
from orchestrator.tenant_limits import TenantLimits

log = logging.getLogger("orchestrator.tenant_stats")

JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
WINDOW: sa.Table = WindowEntry.__table__  # type: ignore[assignment]
# The jobs ahead of one in its tenant's line are counted up to this many, then "more".
POSITION_LIMIT = 10_000


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's live jobs by where they stand in dispatch."""

    tenant_id: str
    queued: int = 0  # due, waiting in the database for admission
    admitted: int = 0  # sent to the workers' queues, not yet started
    running: int = 0
    scheduled: int = 0  # due later (a delay, a retry's backoff)

    @property
    def backlog(self) -> int:
        """Due and not started: what the tenant waits for."""
        return self.queued + self.admitted


def loads(session: Session, tenant_id: str | None = None) -> dict[str, TenantLoad]:
    """Each tenant's live jobs (or one tenant's), counted where they stand. Reads the live
    jobs only (through the live states' index), never the history."""
    jobs = sa.select(
        JOBS.c.tenant_id,
        JOBS.c.status,
        JOBS.c.ready_since.is_not(None),
        sa.func.count(),
    ).where(sa.text(LIVE_STATES_SQL))
    admitted = (
        sa.select(WINDOW.c.tenant_id, sa.func.count())
        .join(JOBS, JOBS.c.id == WINDOW.c.job_id)
        .where(JOBS.c.status.in_(sorted(CLAIMABLE)), JOBS.c.attempt == WINDOW.c.attempt)
    )
    if tenant_id is not None:
        jobs = jobs.where(JOBS.c.tenant_id == tenant_id)
        admitted = admitted.where(WINDOW.c.tenant_id == tenant_id)
    counts: dict[str, Counter[str]] = {}
    for tenant, status, ready, total in session.execute(jobs.group_by(*jobs.selected_columns[:3])):
        counts.setdefault(tenant, Counter())[_place(JobStatus(status), ready=bool(ready))] += total
    for tenant, total in session.execute(admitted.group_by(WINDOW.c.tenant_id)):
        place = counts.setdefault(tenant, Counter())
        place["admitted"] = total
        place["queued"] = max(place["queued"] - total, 0)  # the due jobs were counted there
    return {
        tenant: TenantLoad(
            tenant, place["queued"], place["admitted"], place["running"], place["scheduled"]
        )
        for tenant, place in counts.items()
    }


@dataclass(frozen=True)
class Standing:
    """A tenant's load, its tier and weight, and its admissions in the last minute with
    their share of everyone's (None when the counts cannot be read)."""

    load: TenantLoad
    tier: str
    weight: int
    admitted_last_minute: int | None
    share: float | None


def standings(database: Database, limits: TenantLimits, counts: AdmissionCounts) -> list[Standing]:
    """Every tenant with live jobs or admissions in the last minute, busiest first."""
    with database.session() as session:
        by_tenant = loads(session)
    recent = counts.last_minute()
    for tenant in recent or {}:
        by_tenant.setdefault(tenant, TenantLoad(tenant))
    total = sum((recent or {}).values())
    found = [
        Standing(
            load,
            limits.tier(tenant),
            limits.weight(tenant),
            None if recent is None else recent.get(tenant, 0),
            None if recent is None else (recent.get(tenant, 0) / total if total else 0.0),
        )
        for tenant, load in by_tenant.items()
    ]
    return sorted(found, key=lambda s: (-s.load.backlog, -s.load.running, s.load.tenant_id))


def _place(status: JobStatus, *, ready: bool) -> str:
    if status is JobStatus.RUNNING:
        return "running"
    if status in CLAIMABLE:
        return "queued" if ready else "scheduled"
    return "other"  # waiting on an upstream step: not the dispatcher's yet


@dataclass(frozen=True)
class Place:
    """Where a due job stands in its tenant's line in its queue."""

    admitted: bool  # in the workers' queue already
    ahead: int  # of the tenant's jobs, how many go first (up to POSITION_LIMIT)


def place_in_line(session: Session, job: Job) -> Place | None:
    """Where this job stands, or None when it is not waiting in line (not due yet, running,
    finished). Ahead of a job not yet admitted: the tenant's admitted jobs in its queue,
    then its other ready ones of higher priority, or as high and ready longer."""
    if job.ready_since is None or job.status not in CLAIMABLE:
        return None
    mine = sa.and_(sa.text(READY_SQL), JOBS.c.queue == job.queue, JOBS.c.tenant_id == job.tenant_id)
    is_admitted = window.admitted()
    if session.scalar(sa.select(is_admitted.where(JOBS.c.id == job.id))):
        return Place(admitted=True, ahead=0)
    before = sa.or_(
        is_admitted,
        JOBS.c.priority > job.priority,
        sa.and_(
            JOBS.c.priority == job.priority,
            sa.tuple_(JOBS.c.ready_since, JOBS.c.id) < sa.tuple_(job.ready_since, job.id),
        ),
    )
    ahead = sa.select(JOBS.c.id).where(mine, before).limit(POSITION_LIMIT).subquery()
    count = session.scalar(sa.select(sa.func.count()).select_from(ahead))
    return Place(admitted=False, ahead=int(count or 0))


class AdmissionCounts:
    """Admissions per tenant over the last minute, in ten-second buckets. With a Redis
    client every process that admits adds to the same counts (the dispatcher, and the
    requests that admit a new job at once); without one (inline mode: one process does
    everything) they are this process's."""

    BUCKET_SECONDS = 10
    BUCKETS = 6  # a minute
    KEY = "orchestrator:admitted:{bucket}"

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client
        self._local: dict[int, Counter[str]] = {}
        self._lock = threading.Lock()
        self._warned_at = float("-inf")

    def record(self, tenants: Iterable[str]) -> None:
        counts = Counter(tenants)
        if not counts:
            return
        bucket = self._bucket()
        if self.client is None:
            with self._lock:
                self._local.setdefault(bucket, Counter()).update(counts)
                for old in [b for b in self._local if b <= bucket - self.BUCKETS]:
                    del self._local[old]
            return
        key = self.KEY.format(bucket=bucket)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for tenant, n in counts.items():
                    pipe.hincrby(key, tenant, n)
                pipe.expire(key, self.BUCKET_SECONDS * (self.BUCKETS + 1))
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)  # figures only: the admission itself stands

    def last_minute(self) -> dict[str, int] | None:
        """Each tenant's admissions in the last minute's buckets, or None if unreadable."""
        newest = self._bucket()
        buckets = range(newest - self.BUCKETS + 1, newest + 1)
        if self.client is None:
            total: Counter[str] = Counter()
            with self._lock:
                for bucket in buckets:
                    total.update(self._local.get(bucket, {}))
            return dict(total)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for bucket in buckets:
                    pipe.hgetall(self.KEY.format(bucket=bucket))
                found = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)
            return None
        summed: Counter[str] = Counter()
        for counts in found:
            summed.update({k.decode(): int(v) for k, v in counts.items()})
        return dict(summed)

    def _bucket(self) -> int:
        return int(time.time()) // self.BUCKET_SECONDS

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned_at > 60:  # once a minute, not per send
            self._warned_at = time.monotonic()
            log.warning("admission counts unavailable: %s", exc, extra={"action": "counts_skipped"})
