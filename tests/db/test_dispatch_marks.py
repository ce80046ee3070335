"""Dispatched marks are written in the background, and never revive a claimed job's
outbox entry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.dispatch_marks import DispatchMarks
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.models import Job, utcnow
from orchestrator.registry import load_job_modules
from orchestrator.runtime import Runtime
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
    """HTTP push sends after `dispatch` returned, when the job's entry has been given (or
    will be given, by its mark) the long resend of a job a backend took: a failure brings
    it forward, the sweeper's send too."""
    runtime = _http_runtime(database_url, f"http://127.0.0.1:{free_port()}/internal/worker/run")
    database = runtime.database
    try:
        grace = timedelta(seconds=runtime.settings.dispatch_grace_seconds)
        job = runtime.service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job
        _wait_for(lambda: _job(database, job.id).updated_at > job.created_at)
        runtime.service.marks.flush()  # a mark comes late: it must not undo that
        assert _job(database, job.id).dispatch_due_at <= utcnow() + grace

        later = utcnow() + 2 * grace
        runtime.maintenance.clock = lambda: later
        assert runtime.maintenance.sweep_outbox() == 1  # its entry: `later` + 15 minutes
        _wait_for(lambda: _job(database, job.id).dispatch_due_at < later + 2 * grace)
    finally:
        database.dispose()


def test_a_push_still_on_its_way_keeps_the_long_resend(database_url: str) -> None:
    """A busy worker answers a push only when the job has run: meanwhile the sweeper must
    not send it again every grace period."""
    with _slow_worker() as url:
        runtime = _http_runtime(database_url, url)
        try:
            service = runtime.service
            job = service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job
            service.marks.flush()
            resend = _job(runtime.database, job.id).dispatch_due_at - job.created_at
            assert resend.total_seconds() >= runtime.settings.redispatch_after_seconds
        finally:
            runtime.database.dispose()


def _http_runtime(database_url: str, worker_url: str) -> Runtime:
    settings = load_settings(
        env="development",
        database_url=database_url,
        dispatch_mode="http",
        worker_url=worker_url,
        job_modules="tests.jobtypes",
    )
    return Runtime.build(settings)


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def _slow_worker() -> Iterator[str]:
    """A worker URL that takes pushes and answers only after the test is done."""
    release = threading.Event()

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(10)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/internal/worker/run"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_broker_that_lost_its_data_gets_its_jobs_again(
    database_url: str, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs the broker accepted wait for the long resend; when the broker loses its data
    set (its epoch marker goes with it), the next sweep sends them again at once, once."""
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/13"
    settings = load_settings(
        env="development",
        database_url=database_url,
        redis_url=redis_url,
        job_modules="tests.jobtypes",
    )
    runtime = Runtime.build(settings)
    broker = redis.Redis.from_url(redis_url)
    try:
        broker.flushdb()
        sweep = runtime.maintenance.sweep_outbox
        assert sweep() == 0  # the first sweep sets the epoch (nothing was sent yet)
        job_id = runtime.service.create(NewJob(tenant_id="t1", type="TEST_FLAKY")).details.job.id
        runtime.service.marks.flush()
        assert broker.llen("default") == 1
        waiting = _job(runtime.database, job_id)
        assert waiting.dispatch_due_at is not None and waiting.dispatch_due_at > utcnow()
        assert sweep() == 0  # the broker holds it: nothing to send
        broker.flushdb()  # the broker loses everything, its epoch marker included
        with monkeypatch.context() as patched:  # a sweep that fails to bring them forward
            patched.setattr(transitions, "bring_forward_sent", _refuse)
            with pytest.raises(RuntimeError):
                sweep()
        assert sweep() == 1  # the loss is still noticed
        assert broker.llen("default") == 1  # sent again
        assert sweep() == 0  # once: the entry waits for the long resend again
        assert _job(runtime.database, job_id).dispatch_due_at > utcnow()  # type: ignore[operator]
    finally:
        broker.close()
        runtime.database.dispose()


def _refuse(*_: object) -> int:
    raise RuntimeError("the database went away")
