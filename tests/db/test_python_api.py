"""Every operation from Python (`orchestrator.send_job` and friends), with the same errors
as the HTTP API, and a send inside the caller's own transaction, on SQLite and PostgreSQL.

Inline dispatch runs a ready job in the process that made it ready: a job that runs has
been dispatched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import orchestrator
from orchestrator.errors import (
    IdempotencyConflict,
    InvalidInput,
    JobConflict,
    JobNotFound,
    OrchestratorError,
    UnknownJobType,
)
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.states import JobStatus


@pytest.fixture
def runtime(inline_runtime: Runtime) -> Runtime:
    return inline_runtime


def _status(runtime: Runtime, job_id: str) -> JobStatus | None:
    with runtime.database.session() as session:
        job = session.get(Job, job_id)
        return None if job is None else job.status


def test_send_read_list_cancel_and_retry(runtime: Runtime, tmp_path: Path) -> None:
    done = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", subject="s1")
    assert done.job.status is JobStatus.SUCCEEDED
    assert orchestrator.get_job(done.job.id, tenant_id="tnt_a").job.subject == "s1"
    with pytest.raises(JobNotFound):
        orchestrator.get_job(done.job.id, tenant_id="tnt_b")

    later = orchestrator.schedule_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", delay=3600)
    assert later.job.status is JobStatus.QUEUED and later.job.run_at is not None
    page = orchestrator.list_jobs(tenant_id="tnt_a", limit=1)
    assert [j.id for j in page.jobs] == [later.job.id] and page.next_cursor is not None
    older = orchestrator.list_jobs(tenant_id="tnt_a", cursor=page.next_cursor)
    assert [j.id for j in older.jobs] == [done.job.id]
    assert [j.id for j in orchestrator.list_jobs(tenant_id="tnt_a", status="succeeded").jobs] == [
        done.job.id
    ]

    cancelled = orchestrator.cancel_job(later.job.id, tenant_id="tnt_a")
    assert cancelled.job.status is JobStatus.CANCELLED
    with pytest.raises(JobConflict):
        orchestrator.cancel_job(done.job.id, tenant_id="tnt_a")
    again = orchestrator.retry_job(later.job.id, tenant_id="tnt_a", run_now=True)
    assert again.job.status is JobStatus.SUCCEEDED

    failed = orchestrator.send_job("TEST_EXPLODES", tenant_id="tnt_a")
    assert failed.job.status is JobStatus.FAILED
    assert orchestrator.retry_failed_jobs(tenant_id="tnt_a") == [failed.job.id]


def test_same_errors_as_the_api(runtime: Runtime) -> None:
    with pytest.raises(UnknownJobType):
        orchestrator.send_job("NO_SUCH_TYPE", tenant_id="tnt_a")
    with pytest.raises(InvalidInput) as invalid:
        orchestrator.send_job("TEST_FLAKY", {"failTimes": "many"}, tenant_id="tnt_a")
    assert [e.field for e in invalid.value.errors] == ["input.failTimes"]
    first = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", idempotency_key="k1")
    repeat = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", idempotency_key="k1")
    assert repeat.job.id == first.job.id
    with pytest.raises(IdempotencyConflict):
        orchestrator.send_job("TEST_FLAKY", tenant_id="tnt_a", idempotency_key="k1")
    with pytest.raises(TypeError, match="either at= or delay="):
        orchestrator.schedule_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a")


def test_run_at_and_priority(runtime: Runtime) -> None:
    at = datetime.now(UTC) + timedelta(hours=2)
    later = orchestrator.schedule_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", at=at, priority=9)
    assert later.job.run_at == at and later.job.priority == 9


def test_a_time_in_the_callers_zone_is_kept_to_the_second(runtime: Runtime) -> None:
    """Whatever its zone (here an offset with seconds, which ISO 8601 text may drop), the
    time stored is the instant the caller named."""
    zone = timezone(timedelta(minutes=19, seconds=32))
    at = (datetime.now(UTC) + timedelta(hours=2)).astimezone(zone).replace(microsecond=0)
    later = orchestrator.schedule_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", at=at)
    assert orchestrator.get_job(later.job.id, tenant_id="tnt_a").job.run_at == at


def test_a_send_in_the_callers_transaction_runs_once_it_commits(runtime: Runtime) -> None:
    with Session(runtime.database.engine) as session, session.begin():
        session.execute(sa.text("SELECT 1"))  # the caller's own work, in the same transaction
        sent = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", session=session)
        assert sent.job.status is JobStatus.QUEUED
        assert _status(runtime, sent.job.id) is None  # nobody else sees it before the commit
    assert _status(runtime, sent.job.id) is JobStatus.SUCCEEDED  # dispatched after it


def test_a_rollback_leaves_no_job_and_sends_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    nudges: list[str] = []
    monkeypatch.setattr(runtime.admission, "became_ready", lambda: nudges.append("nudge"))
    with Session(runtime.database.engine) as session:
        session.begin()
        sent = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", session=session)
        session.flush()
        session.rollback()
    assert _status(runtime, sent.job.id) is None
    assert nudges == []
    assert runtime.admission.tick() == (0, 0)  # the dispatcher finds nothing to send


def test_a_crash_between_commit_and_dispatch_loses_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process dies right after its commit: the nudge to the dispatcher never goes.
    monkeypatch.setattr(runtime.admission, "became_ready", lambda: None)
    with Session(runtime.database.engine) as session, session.begin():
        sent = orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", session=session)
    assert _status(runtime, sent.job.id) is JobStatus.QUEUED  # recorded, ready
    monkeypatch.undo()
    runtime.admission.tick()  # the dispatcher's next look
    assert _status(runtime, sent.job.id) is JobStatus.SUCCEEDED


def test_a_session_on_another_database_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with (
        Session(other) as session,
        pytest.raises(OrchestratorError, match="orchestrator's database"),
    ):
        orchestrator.send_job("TEST_ECHO_UPSTREAM", tenant_id="tnt_a", session=session)
