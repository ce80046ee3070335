"""Alembic environment: the URL comes from the caller's config or from `ORCH_DATABASE_URL`."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext

from orchestrator.db import create_engine
from orchestrator.models import Base, UTCDateTime
from orchestrator.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
target_metadata = Base.metadata


def render_item(kind: str, item: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Render the models' own column types by name in generated migrations."""
    if kind != "type":
        return False
    if isinstance(item, UTCDateTime):
        autogen.imports.add("from orchestrator.models import UTCDateTime")
        return "UTCDateTime(timezone=True)"
    if isinstance(item, sa.JSON) and "postgresql" in getattr(item, "_variant_mapping", {}):
        autogen.imports.add("from orchestrator.models import JSONType")
        return "JSONType"
    return False


def run_migrations() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
