"""The running system, once per database backend, each on its own Redis database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import migrate
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from tests.conftest import BACKENDS
from tests.integration.stack import Stack, stack_settings


@pytest.fixture(scope="session", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"stack-{request.param}")
    database_url = _database(request, folder)
    migrate.upgrade(database_url)
    # Each backend's stack gets its own Redis database, so their workers never meet.
    redis_db = 1 + BACKENDS.index(request.param)
    settings = stack_settings(database_url, f"{redis_server.url.rsplit('/', 1)[0]}/{redis_db}")
    stack = Stack.build(settings, folder)
    try:
        yield stack.start()
    finally:
        stack.stop()


def _database(request: pytest.FixtureRequest, folder: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{folder / 'stack.db'}"
    server: EmbeddedPostgres = request.getfixturevalue("postgres_server")
    name = "stack"
    server.create_database(name)
    return server.url(name)


@pytest.fixture
def tenant() -> str:
    """A tenant of its own per test: tests share a stack but never each other's jobs."""
    return f"tnt_{uuid.uuid4().hex[:10]}"
