"""Dispatched marks are written in the background, and never revive a claimed job's
outbox entry."""

from __future__ import annotations

import time

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.dispatch_marks import DispatchMarks
from orchestrator.models import Job, utcnow
from orchestrator.registry import load_job_modules
from orchestrator.service import JobService, NewJob
from orchestrator.settings import load_settings
from tests.db.test_transitions import RecordingDispatcher


def _service(database: Database) -> JobService:
    settings = load_settings(env="development", database_url=database.url)
    registry = load_job_modules(("tests.jobtypes",))
    return JobService(database, registry, RecordingDispatcher(), settings)


def _job(database: Database, job_id: str) -> Job:
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_marks_are_written_by_the_background_thread_before_the_grace_ends(
    database_url: str,
) -> None:
    database = Database(database_url)
    try:
        service = _service(database)
        grace = service.settings.dispatch_grace_seconds
        job_id = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job.id
        assert _job(database, job_id).dispatched_at is None  # not at once: most get claimed
        deadline = time.monotonic() + grace
        while (job := _job(database, job_id)).dispatched_at is None:
            assert time.monotonic() < deadline, "no mark within the grace period"
            time.sleep(0.05)
        assert job.dispatch_due_at is not None
        resend = (job.dispatch_due_at - job.dispatched_at).total_seconds()
        assert resend == service.settings.redispatch_after_seconds
    finally:
        database.dispose()


def test_a_late_mark_leaves_a_claimed_job_alone(database_url: str) -> None:
    database = Database(database_url)
    try:
        service = _service(database)
        job_id = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job.id
        service.marks.flush()
        database.statement(
            lambda s: transitions.claim(s, job_id, worker="w", lease_seconds=60, now=utcnow())
        )
        marks = DispatchMarks(database, redispatch_after=900, delay=60, interval=60)
        marks.add([job_id])
        assert marks.flush() == 1
        assert _job(database, job_id).dispatch_due_at is None  # no outbox entry came back
    finally:
        database.dispose()


def test_a_late_mark_leaves_a_released_job_due(database_url: str) -> None:
    """Parked at a tenant's limit and released before the mark came: the release's entry
    (due now) stands, or the sweeper would not send the job for a quarter of an hour."""
    database = Database(database_url)
    try:
        service = _service(database)
        job_id = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job.id
        with database.transaction() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert transitions.defer(session, job, utcnow())
        with database.transaction() as session:
            assert transitions.release_deferred(session, "t1", utcnow()) == 1
        released = _job(database, job_id).dispatch_due_at
        assert service.marks.flush() == 1
        after = _job(database, job_id)
        assert after.dispatch_due_at == released and after.dispatched_at is None
    finally:
        database.dispose()
