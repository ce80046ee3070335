"""Applying every migration yields exactly the models' schema, on both backends."""

from __future__ import annotations

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
