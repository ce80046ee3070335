"""What `/readyz` checks: can this process do its work right now?"""

from __future__ import annotations

import functools
from collections.abc import Callable

import redis
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orchestrator.migrate import alembic_config
from orchestrator.runtime import Runtime
from orchestrator.settings import DispatchMode

TIMEOUT_SECONDS = 2.0


def check_readiness(runtime: Runtime) -> dict[str, str]:
    """Each check's result: `ok`, or one line saying what is wrong (no secrets)."""
    checks: dict[str, Callable[[Runtime], str]] = {"database": _database_and_migrations}
    if runtime.settings.dispatch_mode is DispatchMode.CELERY:
        checks["broker"] = _redis
    return {name: _safely(check, runtime) for name, check in checks.items()}


def _safely(check: Callable[[Runtime], str], runtime: Runtime) -> str:
    try:
        return check(runtime)
    except Exception as exc:  # any failure means "not ready"; say which, briefly
        return f"unreachable: {type(exc).__name__}"


@functools.cache
def _newest_migration(url: str) -> str | None:
    """Read once per process: the migration scripts do not change while it runs."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _database_and_migrations(runtime: Runtime) -> str:
    head = _newest_migration(runtime.database.url)
    with runtime.database.engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        return f"migrations behind: at {current}, newest is {head} (run orchestrator db upgrade)"
    return "ok"


def _redis(runtime: Runtime) -> str:
    client = redis.Redis.from_url(
        runtime.settings.redis_url,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=None,
    )
    try:
        client.ping()
    finally:
        client.close()
    return "ok"
