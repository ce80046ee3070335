"""Nightly archival: finished jobs older than their tenant's retention get `archived_at`.

It walks the finished, unarchived jobs oldest first through a partial index, a bounded
batch per short transaction, so memory stays flat and job creation and workers are never
blocked for long. Every run leaves a `maintenance_runs` record: counts per tenant, duration.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.models import Job, MaintenanceRun, Tenant, utcnow
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.archival")

KIND = "archive"
Progress = Callable[[int, int], None]  # (done so far, total eligible)


@dataclass
class ArchiveReport:
    run_id: int
    dry_run: bool
    total: int = 0
    per_tenant: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class Archiver:
    def __init__(
        self, database: Database, settings: Settings, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock

    def run(
        self,
        *,
        dry_run: bool = False,
        job_id: str | None = None,
        progress: Progress | None = None,
    ) -> ArchiveReport:
        now, started = self.clock(), time.monotonic()
        report = ArchiveReport(self._open_run(now, dry_run, job_id), dry_run)
        try:
            total = self.count_eligible(now)
            for batch in self._batches(now):
                archived = batch if dry_run else self._archive(batch, now)
                report.per_tenant.update(tenant for _, tenant in archived)
                report.total += len(archived)
                if progress is not None:
                    progress(report.total, total)
        except Exception as exc:
            self._close_run(report, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        report.seconds = time.monotonic() - started
        self._close_run(report, "succeeded")
        log.info(
            "archival %s %d job(s) in %.1fs",
            "found" if dry_run else "archived",
            report.total,
            report.seconds,
            extra={"action": "archived", "job_id": job_id},
        )
        return report

    def count_eligible(self, now: datetime) -> int:
        with self.database.session() as session:
            return sum(
                session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
                for query in self._queries(now)
            )

    def _queries(self, now: datetime) -> Iterator[sa.Select[str, str, datetime | None]]:
        """One query per tier: its tenants' finished jobs older than the tier's retention."""
        default = self.settings.default_tier
        others = [tier for tier in self.settings.retention_days if tier != default]
        # The tenant's tier is read per candidate, not joined: with a join PostgreSQL could
        # plan a hash join and a sort of every remaining candidate for each batch (it did,
        # when its estimate of the keyset range was off), where this keeps the walk in the
        # index's order and stops at the batch's size.
        tenant_tier = sa.select(Tenant.tier).where(Tenant.id == Job.tenant_id).scalar_subquery()
        for tier, days in self.settings.retention_days.items():
            cutoff = now - timedelta(days=days)
            in_tier = tenant_tier == tier
            if tier == default:
                # No tenant row, no tier or an unknown one: the default tier's retention.
                in_tier = sa.func.coalesce(tenant_tier, default).not_in(others)
            yield sa.select(Job.id, Job.tenant_id, Job.finished_at).where(
                Job.archived_at.is_(None), Job.finished_at < cutoff, in_tier
            )

    def _batches(self, now: datetime) -> Iterator[list[tuple[str, str]]]:
        size = self.settings.archive_batch_size
        for query in self._queries(now):
            after: tuple[datetime, str] | None = None
            while True:
                page = query.order_by(Job.finished_at, Job.id).limit(size)
                if after is not None:
                    page = page.where(sa.tuple_(Job.finished_at, Job.id) > after)
                with self.database.session() as session:
                    rows = session.execute(page).all()
                if not rows:
                    break
                yield [(row.id, row.tenant_id) for row in rows]
                last = rows[-1]
                assert last.finished_at is not None
                after = (last.finished_at, last.id)

    def _archive(self, batch: list[tuple[str, str]], now: datetime) -> list[tuple[str, str]]:
        """Archive the batch's jobs; those it did archive (id, tenant)."""
        with self.database.transaction() as session:
            archived = session.execute(
                sa.update(Job)
                # Still finished: a job retried since the batch was read is not archived.
                .where(
                    Job.id.in_([job_id for job_id, _ in batch]),
                    Job.archived_at.is_(None),
                    Job.finished_at.is_not(None),
                )
                .values(archived_at=now)
                .returning(Job.id, Job.tenant_id)
                .execution_options(synchronize_session=False)
            )
            return [(job_id, tenant_id) for job_id, tenant_id in archived]

    def _open_run(self, now: datetime, dry_run: bool, job_id: str | None) -> int:
        with self.database.transaction() as session:
            run = MaintenanceRun(
                kind=KIND,
                job_id=job_id,
                dry_run=dry_run,
                started_at=now,
                status="running",
                total=0,
                per_tenant={},
            )
            session.add(run)
            session.flush()
            return run.id

    def _close_run(self, report: ArchiveReport, status: str, error: str | None = None) -> None:
        with self.database.transaction() as session:
            session.execute(
                sa.update(MaintenanceRun)
                .where(MaintenanceRun.id == report.run_id)
                .values(
                    status=status,
                    finished_at=self.clock(),
                    total=report.total,
                    per_tenant=dict(report.per_tenant),
                    error=error,
                )
            )


def recent_runs(database: Database, limit: int = 20) -> list[MaintenanceRun]:
    with database.session() as session:
        return list(
            session.scalars(
                sa.select(MaintenanceRun).order_by(MaintenanceRun.id.desc()).limit(limit)
            )
        )
