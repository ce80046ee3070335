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
        "ix_jobs_dispatch_due_at": "dispatch_due_at IS NOT NULL",
        "ix_jobs_lease_expires_at": "lease_expires_at IS NOT NULL",
        "ix_jobs_status_updated_at": "status",
        "ix_jobs_finished_at_unarchived": "finished_at IS NOT NULL",
        "ix_jobs_parent_id": "parent_id IS NOT NULL",
        "ix_jobs_parked": "dispatch_due_at IS NULL",
        "ix_jobs_tenant_id_status_id": "archived_at IS NULL",
    }.items():
        where = (definitions[name] or "").split("WHERE", 1)
        assert len(where) == 2 and predicate in where[1], definitions[name]
