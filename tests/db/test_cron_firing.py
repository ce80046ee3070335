"""Firing cron occurrences through the real service and runner (inline dispatch), on both
databases: the shipped per-tenant daily summary, exactly-once firing, the ledger, catch-up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orchestrator.models import CronFire, Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.settings import load_settings

DAY = datetime(2026, 3, 9, tzinfo=UTC)
OCCURRENCE = datetime(2026, 3, 10, 6, 0, tzinfo=UTC)  # summarises 2026-03-09


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def runtime(database_url: str) -> Iterator[Runtime]:
    settings = load_settings(env="development", database_url=database_url, dispatch_mode="inline")
    built = Runtime.build(settings)
    yield built
    built.database.dispose()


def _jobs(runtime: Runtime, job_type: str) -> list[Job]:
    with runtime.database.session() as session:
        return list(
            session.scalars(sa.select(Job).where(Job.type == job_type).order_by(Job.tenant_id))
        )


def test_daily_summary_fires_once_per_tenant_with_that_days_counts(runtime: Runtime) -> None:
    clock = Clock(DAY + timedelta(hours=10))
    runtime.service.clock = clock
    for tenant, count in (("acme", 2), ("globex", 1)):
        for _ in range(count):
            runtime.service.create(
                NewJob(
                    tenant_id=tenant,
                    type="ANALYZE_INSPECTION",
                    input={"analysisMode": "QUICK", "roomIds": ["r"]},
                )
            )
    clock.now = DAY - timedelta(hours=1)  # the day before: not counted
    runtime.service.create(
        NewJob(
            tenant_id="acme",
            type="ANALYZE_INSPECTION",
            input={"analysisMode": "QUICK", "roomIds": ["r"]},
        )
    )

    first = runtime.cron.fire("daily-tenant-summary", OCCURRENCE)
    again = runtime.cron.fire("daily-tenant-summary", OCCURRENCE)  # a second beat

    assert (first.created, again.created) == (2, 0)
    summaries = _jobs(runtime, "cron.daily-tenant-summary")
    assert [(j.tenant_id, j.status) for j in summaries] == [
        ("acme", "succeeded"),
        ("globex", "succeeded"),
    ]
    acme, globex = (j.result for j in summaries)
    # Each ANALYZE_INSPECTION made a pipeline of two jobs that day.
    assert acme == {
        "tenantId": "acme",
        "day": "2026-03-09",
        "created": 4,
        "byStatus": {"succeeded": 4},
    }
    assert globex["created"] == 2
    with runtime.database.session() as session:
        ledger = session.execute(
            sa.select(CronFire.cron_id, CronFire.occurrence, CronFire.jobs_created)
        ).all()
    assert [tuple(row) for row in ledger] == [("daily-tenant-summary", OCCURRENCE, 2)]


def test_nightly_archival_cron_creates_one_system_job(runtime: Runtime) -> None:
    occurrence = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    assert runtime.cron.fire("nightly-archival", occurrence).created == 1
    assert runtime.cron.fire("nightly-archival", occurrence).created == 0
    [job] = _jobs(runtime, "ARCHIVE_EXPIRED_JOBS")
    assert job.tenant_id == runtime.settings.system_tenant
    assert job.status == "succeeded" and job.result["archived"] == 0


def test_catch_up_fires_each_crons_latest_missed_occurrence_once(runtime: Runtime) -> None:
    runtime.cron.clock = Clock(datetime(2026, 3, 10, 9, 30, tzinfo=UTC))
    fired = dict(runtime.cron.catch_up())
    assert fired["nightly-archival"] == datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    assert fired["daily-tenant-summary"] == datetime(2026, 3, 10, 6, 0, tzinfo=UTC)
    assert runtime.cron.catch_up() == []  # already fired: nothing more
