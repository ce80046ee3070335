"""A claim commits without waiting for the disk; the run's outcome makes it durable.

A worker's claim is the first of its two commits per job. It does not wait for its WAL
to be flushed (`synchronous_commit` off for that transaction alone), because WAL is
written in order: the outcome's synchronous commit flushes the claim before it. These
tests check the setting is the claim's alone, and that a crash of PostgreSQL after an
outcome keeps the claim and its event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import migrate, transitions
from orchestrator.db import Database
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.models import Job, JobEvent, utcnow
from orchestrator.registry import load_job_modules
from orchestrator.service import NewJob
from orchestrator.settings import load_settings
from orchestrator.states import Attempt, JobStatus
from tests.recording import recording_service
from tests.servers import free_port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A cluster of this test's own (it is crashed), with production's durability."""
    with EmbeddedPostgres.start(free_port(), tmp_path / "pg", durable=True) as server:
        server.create_database("claims")
        migrate.upgrade(server.url("claims"))
        yield server


def _created(database: Database) -> str:
    settings = load_settings(env="development", database_url=database.url)
    service = recording_service(database, load_job_modules(("tests.jobtypes",)), settings)
    return service.create(NewJob(tenant_id="t1", type="TEST_SLEEP")).details.steps[0].id


def test_only_the_claims_own_transaction_skips_waiting_for_the_disk(
    cluster: EmbeddedPostgres,
) -> None:
    database = Database(cluster.url("claims"))
    try:
        job_id = _created(database)
        with database.transaction() as session:
            started = transitions.claim(
                session, job_id, worker="w1", lease_seconds=60, now=utcnow()
            )
            assert started is not None
            assert session.scalar(sa.text("SHOW synchronous_commit")) == "off"
        with database.session() as session:
            assert session.scalar(sa.text("SHOW synchronous_commit")) == "on"
    finally:
        database.dispose()


def test_a_runs_outcome_makes_its_claim_durable_across_a_crash(
    cluster: EmbeddedPostgres,
) -> None:
    database = Database(cluster.url("claims"))
    try:
        job_id = _created(database)
        claimed = transitions.claim_alone(
            database, job_id, worker="w1", lease_seconds=60, now=utcnow()
        )
        assert claimed is not None
        assert transitions.succeed_alone(database, Attempt.of(claimed.job), {"ok": 1}, utcnow())
    finally:
        database.dispose()
    cluster.crash()  # no checkpoint: what survives is what the WAL on disk holds
    cluster.restart()
    database = Database(cluster.url("claims"))
    try:
        with database.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert (job.status, job.attempt, job.result) == (JobStatus.SUCCEEDED, 1, {"ok": 1})
            targets = session.scalars(
                sa.select(JobEvent.to_status).where(JobEvent.job_id == job_id)
            ).all()
        assert JobStatus.RUNNING in targets and JobStatus.SUCCEEDED in targets
    finally:
        database.dispose()
