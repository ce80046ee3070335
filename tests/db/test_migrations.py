"""Applying every migration yields exactly the models' schema, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator import migrate
from orchestrator.db import create_engine
from orchestrator.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
    assert migrate.is_current(database_url)


def test_downgrade_then_upgrade_round_trips(database_url: str) -> None:
    migrate.downgrade(database_url, "base")
    assert not migrate.is_current(database_url)
    migrate.upgrade(database_url)
    assert migrate.is_current(database_url)


def test_the_hot_path_indexes_are_partial(database_url: str) -> None:
    """Autogenerate does not compare index predicates: check them in the catalog."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"
            else:
                query = "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'jobs'"
            definitions = {name: sql for name, sql in connection.execute(sa.text(query))}
    finally:
        engine.dispose()
    for name, predicate in {
        "ix_jobs_ready": "ready_since IS NOT NULL",
        "ix_jobs_scheduled": "ready_since IS NULL",
        "ix_jobs_lease_expires_at": "lease_expires_at IS NOT NULL",
        "ix_jobs_status_updated_at": "status",
        "ix_jobs_finished_at_unarchived": "finished_at IS NOT NULL",
        "ix_jobs_parent_id": "parent_id IS NOT NULL",
        "ix_jobs_tenant_id_status_id": "archived_at IS NULL",
    }.items():
        where = (definitions[name] or "").split("WHERE", 1)
        assert len(where) == 2 and predicate in where[1], definitions[name]


def test_batch_items_recorded_with_the_old_separator_are_rewritten(database_url: str) -> None:
    """Migration 0011: a batch's items (one tenant, one creation instant, `K#0`..`K#n-1`)
    take the new separator; single jobs whose keys merely look alike keep theirs."""
    migrate.downgrade(database_url, "0010")
    engine = create_engine(database_url)
    batch_at, later = "2026-11-30 10:00:00", "2026-11-30 10:00:05"
    rows = [
        ("job_a0", "t1", batch_at, "nightly#0"),
        ("job_a1", "t1", batch_at, "nightly#1"),
        ("job_s1", "t1", later, "order#1"),  # a single job's own key
        ("job_s2", "t2", batch_at, "nightly#1"),  # another tenant, not a batch from 0
        ("job_s3", "t3", batch_at, "solo#0"),  # a batch of one, or a single job
    ]
    try:
        with engine.begin() as connection:
            for job_id, tenant_id, created_at, key in rows:
                connection.execute(
                    sa.text(
                        "INSERT INTO jobs (id, tenant_id, type, input, status, priority, queue,"
                        " attempt, max_attempts, requeues, parks, pipeline_id, step_index,"
                        " created_at, updated_at, idempotency_key) VALUES (:id, :tenant, 'T',"
                        " '{}', 'succeeded', 0, 'default', 1, 1, 0, 0, :id, 0, :at, :at, :key)"
                    ),
                    {"id": job_id, "tenant": tenant_id, "at": created_at, "key": key},
                )
        migrate.upgrade(database_url)
        with engine.connect() as connection:
            keys = dict(connection.execute(sa.text("SELECT id, idempotency_key FROM jobs")).all())
    finally:
        engine.dispose()
    assert keys == {
        "job_a0": "nightly\x1f0",
        "job_a1": "nightly\x1f1",
        "job_s1": "order#1",
        "job_s2": "nightly#1",
        "job_s3": "solo\x1e0",  # keyed apart: a repeat of either request finds it
    }
