"""Archival on SQLite and PostgreSQL: who is archived, when, in batches, and what is recorded.

Jobs are written straight into the tables with fixed timestamps, and the archiver runs with
a fixed clock, so every cutoff is exact. One test drives the real path instead (JobService
creates, the Runner finishes, both on an injected clock). The 100,000-job memory test runs
on SQLite only.
"""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import transitions
from orchestrator.archival import KIND, Archiver, ArchiveReport, Progress, recent_runs
from orchestrator.db import Database
from orchestrator.errors import JobArchived
from orchestrator.models import Job, MaintenanceRun, Tenant
from orchestrator.registry import load_job_modules
from orchestrator.runner import Runner, Succeeded
from orchestrator.service import JobFilter, NewJob
from orchestrator.settings import Settings, load_settings
from orchestrator.states import JobStatus
from orchestrator.tenants import set_tier
from tests.recording import recording_service

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FREE_CUTOFF = NOW - timedelta(days=30)
PRO_CUTOFF = NOW - timedelta(days=365)
TICK = timedelta(milliseconds=1)  # "just before" / "just after" a cutoff

_ids = itertools.count(1)


def fixed_clock() -> datetime:
    return NOW


def new_id() -> str:
    return f"job_test{next(_ids):020d}"


def job_row(
    tenant: str,
    *,
    finished_at: datetime | None,
    status: JobStatus = JobStatus.SUCCEEDED,
    archived_at: datetime | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """A complete `jobs` row as a dict, for `session.execute(sa.insert(Job), rows)`."""
    job_id = job_id or new_id()
    created = (finished_at or NOW - timedelta(days=1000)) - timedelta(minutes=5)
    return {
        "id": job_id,
        "tenant_id": tenant,
        "type": "TEST_ECHO_UPSTREAM",
        "input": {},
        "status": status,
        "priority": 0,
        "queue": "default",
        "attempt": 1 if status is not JobStatus.QUEUED else 0,
        "max_attempts": 3,
        "pipeline_id": job_id,
        "step_index": 0,
        "created_at": created,
        "updated_at": finished_at or created,
        "started_at": created if status is not JobStatus.QUEUED else None,
        "finished_at": finished_at,
        "archived_at": archived_at,
    }


def insert_jobs(database: Database, rows: list[dict[str, Any]]) -> None:
    with database.transaction() as session:
        session.execute(sa.insert(Job), rows)


def add_tenants(database: Database, tiers: dict[str, str | None]) -> None:
    with database.transaction() as session:
        session.execute(
            sa.insert(Tenant),
            [
                {"id": t, "tier": tier, "created_at": NOW - timedelta(days=2000)}
                for t, tier in tiers.items()
            ],
        )


def archived_at_by_id(database: Database) -> dict[str, datetime | None]:
    with database.session() as session:
        return {
            row.id: row.archived_at for row in session.execute(sa.select(Job.id, Job.archived_at))
        }


def run_row(database: Database, run_id: int) -> MaintenanceRun:
    with database.session() as session:
        run = session.get(MaintenanceRun, run_id)
        assert run is not None
        return run


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "database_url": database_url,
        "retention_days": "free=30,pro=365",
        "default_tier": "free",
    }
    return load_settings(**{**values, **overrides})


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


MAX_BATCHES = 1000


class BoundedArchiver(Archiver):
    """An Archiver that fails, instead of looping forever, if its batches never end."""

    def run(
        self,
        *,
        dry_run: bool = False,
        job_id: str | None = None,
        progress: Progress | None = None,
    ) -> ArchiveReport:
        batches = 0

        def counted(done: int, total: int) -> None:
            nonlocal batches
            batches += 1
            if batches > MAX_BATCHES:
                raise AssertionError(f"more than {MAX_BATCHES} batches: pagination never ends")
            if progress is not None:
                progress(done, total)

        return super().run(dry_run=dry_run, job_id=job_id, progress=counted)


def archiver(database: Database, **overrides: Any) -> Archiver:
    return BoundedArchiver(database, make_settings(database.url, **overrides), clock=fixed_clock)


# -- who is archived ----------------------------------------------------------------------


@pytest.fixture
def scenario(database: Database) -> dict[str, Any]:
    """Jobs on each side of each tier's cutoff, plus jobs that must never be archived.

    Returns the ids expected to be archived, the per-tenant counts, and the ids to keep.
    """
    add_tenants(
        database,
        {
            "t_free": "free",
            "t_pro": "pro",
            "t_null": None,  # a row without a tier: the default tier
            "t_weird": "enterprise",  # a tier the settings do not know: the default tier
        },
    )
    archive: dict[str, list[str]] = {}
    keep: list[str] = []
    rows: list[dict[str, Any]] = []

    def add(tenant: str, finished_at: datetime | None, *, expect: bool, **kw: Any) -> str:
        row = job_row(tenant, finished_at=finished_at, **kw)
        rows.append(row)
        (archive.setdefault(tenant, []) if expect else keep).append(row["id"])
        return str(row["id"])

    # Free tier (30 days), and every tenant that falls back to the default tier.
    for tenant in ("t_free", "t_norow", "t_null", "t_weird"):
        add(tenant, FREE_CUTOFF - TICK, expect=True)
        add(tenant, FREE_CUTOFF + TICK, expect=False)
        add(tenant, NOW - timedelta(days=400), expect=True, status=JobStatus.FAILED)
        add(tenant, NOW - timedelta(hours=1), expect=False, status=JobStatus.CANCELLED)
    # Pro tier (365 days): what free would archive, pro keeps.
    add("t_pro", PRO_CUTOFF - TICK, expect=True)
    add("t_pro", PRO_CUTOFF + TICK, expect=False)
    add("t_pro", FREE_CUTOFF - TICK, expect=False)
    add("t_pro", NOW - timedelta(days=1000), expect=True, status=JobStatus.CANCELLED)
    # Unfinished jobs, however old, are never archived.
    for tenant in ("t_free", "t_norow", "t_pro"):
        for status in (
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.WAITING,
            JobStatus.RETRYING,
        ):
            add(tenant, None, expect=False, status=status)
    insert_jobs(database, rows)
    # Already archived: neither touched nor counted.
    earlier = NOW - timedelta(days=200)
    already = [
        job_row("t_free", finished_at=NOW - timedelta(days=500), archived_at=earlier),
        job_row("t_pro", finished_at=NOW - timedelta(days=900), archived_at=earlier),
        job_row("t_norow", finished_at=NOW - timedelta(days=500), archived_at=earlier),
    ]
    insert_jobs(database, already)
    return {
        "archive": archive,
        "per_tenant": {t: len(ids) for t, ids in archive.items()},
        "keep": keep,
        "already": {row["id"]: earlier for row in already},
    }


def test_per_tier_selection_is_exact(database: Database, scenario: dict[str, Any]) -> None:
    report = archiver(database).run()
    expected = {job_id for ids in scenario["archive"].values() for job_id in ids}
    state = archived_at_by_id(database)
    archived_now = {job_id for job_id, at in state.items() if at == NOW}
    assert archived_now == expected
    assert all(state[job_id] is None for job_id in scenario["keep"])
    for job_id, at in scenario["already"].items():
        assert state[job_id] == at, "an already archived job was touched"
    assert (
        dict(report.per_tenant)
        == scenario["per_tenant"]
        == {
            "t_free": 2,
            "t_norow": 2,
            "t_null": 2,
            "t_weird": 2,
            "t_pro": 2,
        }
    )
    assert report.total == len(expected) == 10
    assert report.dry_run is False


def test_report_and_maintenance_run_record_the_counts(
    database: Database, scenario: dict[str, Any]
) -> None:
    report = archiver(database).run(job_id="job_trigger")
    run = run_row(database, report.run_id)
    assert run.kind == KIND == "archive"
    assert run.status == "succeeded"
    assert run.dry_run is False
    assert run.job_id == "job_trigger"
    assert run.started_at == NOW
    assert run.finished_at == NOW  # the injected clock
    assert run.total == report.total == 10
    assert run.per_tenant == dict(report.per_tenant) == scenario["per_tenant"]
    assert run.error is None
    assert report.seconds >= 0
    assert [r.id for r in recent_runs(database)] == [report.run_id]


def test_dry_run_changes_nothing_but_reports_the_same_counts(
    database: Database, scenario: dict[str, Any]
) -> None:
    before = archived_at_by_id(database)
    dry = archiver(database).run(dry_run=True)
    assert archived_at_by_id(database) == before
    dry_run = run_row(database, dry.run_id)
    assert dry.dry_run is True and dry_run.dry_run is True
    assert dry_run.status == "succeeded" and dry_run.finished_at == NOW
    assert dry_run.total == dry.total == 10
    assert dry_run.per_tenant == scenario["per_tenant"]

    real = archiver(database).run()
    assert (real.total, dict(real.per_tenant)) == (dry.total, dict(dry.per_tenant))
    assert run_row(database, real.run_id).dry_run is False
    assert real.run_id != dry.run_id


def test_a_second_run_archives_nothing(database: Database, scenario: dict[str, Any]) -> None:
    first = archiver(database).run()
    state = archived_at_by_id(database)
    # A microsecond later: nothing new is due, and a re-archived job would show the new time.
    later = NOW + timedelta(microseconds=1)
    second = BoundedArchiver(database, make_settings(database.url), clock=lambda: later).run()
    assert second.total == 0 and not second.per_tenant
    assert archived_at_by_id(database) == state  # archived_at not moved to the later time
    run = run_row(database, second.run_id)
    assert (run.status, run.total, run.per_tenant) == ("succeeded", 0, {})
    assert [r.id for r in recent_runs(database)] == [second.run_id, first.run_id]


def test_nothing_eligible_still_records_a_run(database: Database) -> None:
    insert_jobs(database, [job_row("t_free", finished_at=NOW - timedelta(days=1))])
    calls: list[tuple[int, int]] = []
    report = archiver(database).run(progress=lambda done, total: calls.append((done, total)))
    assert report.total == 0 and calls == []
    assert run_row(database, report.run_id).status == "succeeded"


def test_a_failing_run_is_recorded_as_failed(database: Database, scenario: dict[str, Any]) -> None:
    def explode(done: int, total: int) -> None:
        raise RuntimeError("progress sink broke")

    with pytest.raises(RuntimeError, match="progress sink broke"):
        archiver(database).run(progress=explode)
    (run,) = recent_runs(database)
    assert run.status == "failed"
    assert run.finished_at == NOW
    assert run.error == "RuntimeError: progress sink broke"


# -- batches and progress -----------------------------------------------------------------


class RecordingArchiver(BoundedArchiver):
    """Records every batch it writes, to prove each job is archived exactly once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    def _archive(self, batch: list[tuple[str, str]], now: datetime) -> list[tuple[str, str]]:
        self.batches.append([job_id for job_id, _ in batch])
        return super()._archive(batch, now)


@pytest.fixture
def twenty_eligible(database: Database) -> dict[str, int]:
    """20 eligible jobs over two tiers, many sharing a `finished_at` across batch edges."""
    add_tenants(database, {"b_free": "free", "b_pro": "pro"})
    same = NOW - timedelta(days=40)
    rows = [job_row("b_free", finished_at=same) for _ in range(7)]
    rows += [job_row("b_free", finished_at=same - timedelta(seconds=i)) for i in range(1, 6)]
    rows += [job_row("b_norow", finished_at=same) for _ in range(2)]
    pro_same = NOW - timedelta(days=366)
    rows += [job_row("b_pro", finished_at=pro_same) for _ in range(4)]
    rows += [job_row("b_pro", finished_at=pro_same - timedelta(days=i)) for i in range(1, 3)]
    # Not eligible: fresh jobs of both tiers.
    rows += [job_row("b_free", finished_at=NOW - timedelta(days=2)) for _ in range(4)]
    rows += [job_row("b_pro", finished_at=NOW - timedelta(days=40)) for _ in range(4)]
    insert_jobs(database, rows)
    return {"b_free": 12, "b_norow": 2, "b_pro": 6}


def guarded_progress(calls: list[tuple[int, int]], limit: int = 200) -> Any:
    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) > limit:  # a pagination bug would otherwise loop forever
            raise AssertionError("archiver does not terminate")

    return progress


def test_a_job_retried_after_its_batch_was_read_is_not_archived(database: Database) -> None:
    """The batch is read, then the update written in another transaction: a job retried
    in between (queued again, no longer finished) must not come out archived."""
    add_tenants(database, {"t_free": "free"})
    row = job_row("t_free", finished_at=NOW - timedelta(days=400), status=JobStatus.FAILED)
    insert_jobs(database, [row])
    run = archiver(database)
    batch = next(run._batches(NOW))
    assert [job_id for job_id, _ in batch] == [row["id"]]
    with database.transaction() as session:  # a manual retry, as the API makes it
        job = session.get(Job, row["id"])
        assert job is not None
        assert transitions.requeue(session, job, 1, NOW, run_at=NOW)
    assert run._archive(batch, NOW) == []  # and the run's report does not count it
    assert archived_at_by_id(database) == {row["id"]: None}


def test_small_batches_archive_everything_exactly_once(
    database: Database, twenty_eligible: dict[str, int]
) -> None:
    settings = make_settings(database.url, archive_batch_size=3)
    arch = RecordingArchiver(database, settings, clock=fixed_clock)
    calls: list[tuple[int, int]] = []
    report = arch.run(progress=guarded_progress(calls))

    written = [job_id for batch in arch.batches for job_id in batch]
    assert len(written) == len(set(written)) == 20
    assert all(1 <= len(batch) <= 3 for batch in arch.batches)
    assert report.total == 20
    assert dict(report.per_tenant) == twenty_eligible
    state = archived_at_by_id(database)
    assert {job_id for job_id, at in state.items() if at == NOW} == set(written)
    assert sum(at is None for at in state.values()) == 8

    dones = [done for done, _ in calls]
    assert dones == sorted(set(dones)), "done must strictly increase"
    assert dones[-1] == 20
    assert {total for _, total in calls} == {20}
    assert len(calls) == len(arch.batches)


def test_small_batches_in_a_dry_run_terminate_and_count_everything(
    database: Database, twenty_eligible: dict[str, int]
) -> None:
    calls: list[tuple[int, int]] = []
    report = archiver(database, archive_batch_size=3).run(
        dry_run=True, progress=guarded_progress(calls)
    )
    assert report.total == 20 and dict(report.per_tenant) == twenty_eligible
    assert all(at is None for at in archived_at_by_id(database).values())
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert calls[-1] == (20, 20)


def test_batch_size_one_and_batch_size_larger_than_the_data_agree(
    database: Database, twenty_eligible: dict[str, int]
) -> None:
    one = archiver(database, archive_batch_size=1).run(dry_run=True)
    big = archiver(database, archive_batch_size=1000).run(dry_run=True)
    assert one.total == big.total == 20
    assert dict(one.per_tenant) == dict(big.per_tenant) == twenty_eligible


# -- the real path: JobService creates, the Runner finishes --------------------------------


def test_jobs_finished_through_the_runner_are_archived_by_tier(database: Database) -> None:
    settings = make_settings(database.url)
    registry = load_job_modules(("tests.jobtypes",))
    long_ago = NOW - timedelta(days=100)
    service = recording_service(database, registry, settings, clock=lambda: long_ago)
    runner = Runner(database, registry, settings, worker="w-test", clock=lambda: long_ago)

    finished: dict[str, str] = {}
    for tenant in ("svc_free", "svc_pro"):
        job = service.create(NewJob(tenant_id=tenant, type="TEST_ECHO_UPSTREAM")).details.job
        assert isinstance(runner.run(job.id), Succeeded)
        finished[tenant] = job.id
    pending = service.create(NewJob(tenant_id="svc_free", type="TEST_ECHO_UPSTREAM")).details.job
    set_tier(database, settings, "svc_pro", "pro")
    with database.session() as session:
        tiers = {row.id: row.tier for row in session.execute(sa.select(Tenant.id, Tenant.tier))}
    assert tiers == {"svc_free": None, "svc_pro": "pro"}  # created on first job, tier unset

    report = BoundedArchiver(database, settings, clock=fixed_clock).run()
    assert (report.total, dict(report.per_tenant)) == (1, {"svc_free": 1})

    with pytest.raises(JobArchived):
        service.get("svc_free", finished["svc_free"])
    assert service.get("svc_pro", finished["svc_pro"]).job.archived_at is None
    assert service.get("svc_free", pending.id).job.status is JobStatus.QUEUED
    listed = service.list_jobs("svc_free", JobFilter()).jobs
    assert [j.id for j in listed] == [pending.id]
    assert service.list_jobs("svc_free", JobFilter(status=JobStatus.SUCCEEDED)).jobs == []


# -- memory --------------------------------------------------------------------------------

BIG = 100_000
MEMORY_BOUND_MB = 30


def test_archiving_100k_jobs_keeps_memory_flat_sqlite_only(sqlite_url: str) -> None:
    """SQLite only. 100,000 eligible jobs, `archive_batch_size=1000`.

    Bound: the archiver's peak traced memory growth (tracemalloc, from just before the run
    to its end) stays below 30 MB; loading every eligible row at once would not. Every job
    must be archived.
    """
    database = Database(sqlite_url)
    try:
        tenants: dict[str, str | None] = {
            f"big_{i}": ("pro" if i % 2 else "free") for i in range(10)
        }
        tenants["big_norow"] = None
        add_tenants(database, {t: tier for t, tier in tenants.items() if t != "big_norow"})
        start = NOW - timedelta(days=3000)
        names = list(tenants)
        chunk = 10_000
        for offset in range(0, BIG, chunk):
            insert_jobs(
                database,
                [
                    job_row(
                        names[n % len(names)],
                        # Runs of 7 jobs share a timestamp: ties straddle batch edges.
                        finished_at=start + timedelta(minutes=n // 7),
                        job_id=f"job_big{n:024d}",
                    )
                    for n in range(offset, offset + chunk)
                ],
            )
        settings = make_settings(sqlite_url, archive_batch_size=1000)
        arch = Archiver(database, settings, clock=fixed_clock)
        calls = 0

        def progress(done: int, total: int) -> None:
            nonlocal calls
            calls += 1
            assert total == BIG
            assert calls <= BIG // 1000 + 2, "pagination never ends"

        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            began = time.monotonic()
            report: ArchiveReport = arch.run(progress=progress)
            elapsed = time.monotonic() - began
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        growth_mb = (peak - baseline) / 1024 / 1024
        print(f"\n100k archival: peak traced growth {growth_mb:.1f} MB in {elapsed:.1f}s")

        assert report.total == BIG
        assert sum(report.per_tenant.values()) == BIG
        assert BIG // 1000 <= calls <= BIG // 1000 + 2  # one short batch per tier at most
        with database.session() as session:
            left = session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(Job.archived_at.is_(None))
            )
            archived = session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(Job.archived_at == NOW)
            )
        assert (left, archived) == (0, BIG)
        assert growth_mb < MEMORY_BOUND_MB, f"peak growth {growth_mb:.1f} MB"
    finally:
        database.dispose()
