"""Shared fixtures: real Redis and PostgreSQL started once per session, and databases per test.

Each test gets a fresh, migrated database: PostgreSQL clones a migrated template database,
SQLite copies a migrated template file. Both take milliseconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import migrate
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from tests.servers import free_port

# The tests' state folder is their own: a `make run` in the project folder must lend them
# none of its settings (`settings_sources`), and they leave nothing in its folder.
_OWN_STATE = None if "ORCH_STATE_DIR" in os.environ else tempfile.mkdtemp(prefix="orch-tests-")
if _OWN_STATE is not None:
    os.environ["ORCH_STATE_DIR"] = _OWN_STATE


def pytest_sessionfinish() -> None:
    if _OWN_STATE is not None:
        shutil.rmtree(_OWN_STATE, ignore_errors=True)


BACKENDS = ("sqlite", "postgresql")
TEMPLATE_DB = "orchestrator_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for tier in ("integration", "e2e"):
            if f"/tests/{tier}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis.start(port=free_port(), data_dir=tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres.start(free_port()) as server:
        server.create_database(TEMPLATE_DB)
        migrate.upgrade(server.url(TEMPLATE_DB))
        yield server


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "test.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh migrated database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    server: EmbeddedPostgres = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.create_database(name, template=TEMPLATE_DB)
    yield server.url(name)
    server.drop_database(name)
