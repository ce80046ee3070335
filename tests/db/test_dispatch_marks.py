"""Dispatched marks are written in the background, and never revive a claimed job's
outbox entry."""

from __future__ import annotations

import time
from datetime import timedelta

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.dispatch.http import HttpDispatcher
from orchestrator.dispatch.push import PushTarget
from orchestrator.dispatch.stats import CountingDispatcher, DispatchStats
from orchestrator.dispatch_marks import DispatchMarks
from orchestrator.maintenance import Maintenance
from orchestrator.models import Job, utcnow
from orchestrator.registry import load_job_modules
from orchestrator.service import JobService, NewJob
from orchestrator.settings import load_settings
from tests.db.test_transitions import RecordingDispatcher
from tests.servers import free_port


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


def test_a_push_that_fails_in_the_background_is_sent_again_after_the_grace(
    database_url: str,
) -> None:
    """HTTP push sends after `dispatch` returned: nothing has taken the job then, so no
    mark may move its entry to the long resend, and nor may the sweeper's own send."""
    database = Database(database_url)
    try:
        settings = load_settings(env="development", database_url=database.url)
        stats = DispatchStats()
        nobody = PushTarget(url=f"http://127.0.0.1:{free_port()}/internal/worker/run")
        dispatcher = CountingDispatcher(HttpDispatcher(nobody, stats, timeout=2), stats)
        registry = load_job_modules(("tests.jobtypes",))
        service = JobService(database, registry, dispatcher, settings)
        job = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job
        deadline = time.monotonic() + 10
        while stats.snapshot()["dispatches"].get("http", {}).get("failed", 0) < 1:
            assert time.monotonic() < deadline, "the push did not fail"
            time.sleep(0.05)
        service.marks.flush()
        grace = timedelta(seconds=settings.dispatch_grace_seconds)
        assert _job(database, job.id).dispatch_due_at == job.created_at + grace

        later = job.created_at + 2 * grace
        sweeper = Maintenance(database, dispatcher, settings, clock=lambda: later)
        assert sweeper.sweep_outbox() == 1
        assert _job(database, job.id).dispatch_due_at == later + grace
    finally:
        database.dispose()
