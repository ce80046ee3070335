"""Engine and sessions: one `Database` per process, created from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import metrics
from orchestrator.settings import Settings


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Metrics count only what committed (see orchestrator.metrics).
        sa.event.listen(self._sessions, "after_commit", metrics.apply_pending)
        sa.event.listen(self._sessions, "after_rollback", metrics.drop_pending)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return cls(settings.database_url)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        """Drop pooled connections (after a fork, or at shutdown)."""
        self.engine.dispose()


def create_engine(url: str, *, echo: bool = False) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _tune_sqlite)
        sa.event.listen(engine, "begin", _begin_immediate)
        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web process read while a worker writes; the busy timeout makes writers
    # queue for the lock instead of failing at once. Autocommit off in the driver, so that
    # SQLAlchemy's BEGIN (below) is the only one issued.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: sa.Connection) -> None:
    # Take the write lock at BEGIN: a deferred transaction that reads and then writes can
    # fail with "database is locked" without waiting, whatever the busy timeout.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
