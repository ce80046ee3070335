"""Fixtures of the database tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from orchestrator.models import JobEvent
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.states import JobStatus


@contextmanager
def current_runtime(database_url: str, **settings: object) -> Iterator[Runtime]:
    """This process's runtime (what `orchestrator.send_job` and friends use), on
    `database_url` with inline dispatch and the test job types."""
    built = Runtime.build(
        load_settings(
            database_url=database_url,
            dispatch_mode="inline",
            job_modules="tests.jobtypes",
            **settings,
        )
    )
    Runtime._current = built
    try:
        yield built
    finally:
        Runtime._current = None
        built.database.dispose()


@pytest.fixture
def inline_runtime(database_url: str) -> Iterator[Runtime]:
    with current_runtime(database_url) as runtime:
        yield runtime


def runs(runtime: Runtime, job_id: str) -> int:
    """How many times the job started running (its `running` events)."""
    with runtime.database.session() as session:
        started = sa.select(sa.func.count()).where(
            JobEvent.job_id == job_id, JobEvent.to_status == JobStatus.RUNNING
        )
        return session.scalar(started) or 0
