"""Alembic environment: the URL comes from the caller's config or from `ORCH_DATABASE_URL`."""

from __future__ import annotations

from alembic import context

from orchestrator.db import create_engine
from orchestrator.models import Base
from orchestrator.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
target_metadata = Base.metadata


def run_migrations() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
