"""Engine and sessions: one `Database` per process, created from the settings."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import metrics
from orchestrator.prepared import Preparable, PreparedStatement, StatementPool
from orchestrator.settings import Settings

T = TypeVar("T")
# An execution option that marks a read-only session's connection (see `_begin`).
READ_ONLY = "orchestrator_read_only"


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo)
        self._sessions = _sessions(self.engine)
        # Reads need no write lock: on SQLite they begin deferred (see _begin).
        self._read_sessions = _sessions(self.engine.execution_options(**{READ_ONLY: True}))
        self._autocommit: sa.Engine | None = None
        self._statement_sessions = self._sessions
        self._hot: StatementPool | None = None
        self._prepared: dict[int, PreparedStatement] = {}
        self._turns = WriterTurns(url) if url.startswith("sqlite") else None
        self._writer: AbstractContextManager[object] = self._turns or nullcontext()
        if not url.startswith("sqlite"):
            # Its own pool (as large as the main one: a pool too small for the threads that
            # share it opens and closes a connection per statement): no pre-ping, and no
            # BEGIN or COMMIT to send.
            self._autocommit = sa.create_engine(
                url, echo=echo, isolation_level="AUTOCOMMIT", **_POSTGRESQL_POOL
            )
            self._statement_sessions = _sessions(self._autocommit)
            self._hot = StatementPool(partial(_own_connection, self._autocommit))

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return cls(settings.database_url)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self._writer, self._sessions() as session, session.begin():
            yield session

    def session(self) -> Session:
        """A session for reading (it never commits): on SQLite it takes no write lock, so
        reads never queue behind writers (WAL lets them see the last commit)."""
        return self._read_sessions()

    def statement(self, work: Callable[[Session], T]) -> T:
        """Run `work`, which must be atomic by itself: one statement on PostgreSQL, where it
        runs in autocommit (its own transaction, without the round trips of BEGIN, COMMIT
        and a pre-ping); on SQLite a transaction like any other.

        The workers' claims and successes on SQLite run here (on PostgreSQL those two take
        `first_row`). A connection the server dropped fails the statement and leaves the
        pool; the work then runs once more on a new one.
        """
        return self._once_more_if_dropped(work, self._statement_sessions)

    def unit(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a transaction of its own, once more on a new connection if the
        server dropped the first (a creation: its rows and, maybe, their admission)."""
        return self._once_more_if_dropped(work, self._sessions)

    def _once_more_if_dropped(
        self, work: Callable[[Session], T], sessions: sessionmaker[Session]
    ) -> T:
        for retry in (False, True):
            try:
                with self._writer, sessions() as session, session.begin():
                    return work(session)
            except sa.exc.DBAPIError as exc:
                if retry or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def first_row(self, statement: Preparable, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run one prebuilt statement by itself (PostgreSQL, autocommit) and return its
        first row by column name, or `None`.

        The workers' hot path (a claim, a success): the statement is compiled once,
        prepared on the server once per connection and run through libpq, with the type
        conversions SQLAlchemy would apply but without its per-execution work (pool
        checkout, session, compiled-cache lookup, result objects), which cost more CPU
        than the statement itself (see `prepared`). A connection the server dropped is
        replaced and the statement run once more, as `statement` does.
        """
        if self._hot is None or self._autocommit is None:
            raise RuntimeError(f"first_row needs PostgreSQL, not {self.dialect}")
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = PreparedStatement.compile(statement, self._autocommit.dialect)
            self._prepared[id(statement)] = prepared
        return self._hot.first_row(prepared, params)

    def dispose(self) -> None:
        """Drop pooled connections (after a fork, or at shutdown)."""
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()
        if self._hot is not None:
            self._hot.dispose()
        if self._turns is not None:
            self._turns.close()


class WriterTurns:
    """SQLite writers take turns through a file lock beside the database, which the kernel
    hands to the next waiter the moment it is free. Left to SQLite, a writer that finds
    the database locked sleeps and looks again, in naps growing to 100 ms: under many
    concurrent writes (a burst of cancels, a busy worker), requests waited for those naps,
    not for each other's writes. Within a process, threads queue on a lock first. Reads
    take no turn (see `Database.session`)."""

    def __init__(self, url: str) -> None:
        database = url.removeprefix("sqlite:///")
        self.path = None if ":memory:" in url or not database else f"{database}.writer-lock"
        self._thread_lock = threading.RLock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._depth = 0

    def __enter__(self) -> object:
        self._thread_lock.acquire()
        self._depth += 1
        if self._depth == 1 and self.path is not None:
            fcntl.flock(self._lock_fd(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *_: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def _lock_fd(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


def _own_connection(engine: sa.Engine) -> Any:
    """A new autocommit driver connection, set up as the engine sets up its own (connect
    arguments, adapters), but outside its pool: the caller owns and closes it."""
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    pooled.detach()
    return connection


def _sessions(engine: sa.Engine) -> sessionmaker[Session]:
    sessions = sessionmaker(engine, expire_on_commit=False)
    # Metrics count only what committed (see orchestrator.metrics).
    sa.event.listen(sessions, "after_commit", metrics.apply_pending)
    sa.event.listen(sessions, "after_rollback", metrics.drop_pending)
    return sessions


def create_engine(url: str, *, echo: bool = False) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _tune_sqlite)
        sa.event.listen(engine, "begin", _begin)
        return engine
    engine = sa.create_engine(url, echo=echo, **_POSTGRESQL_POOL)
    _ping_when_idle(engine)
    return engine


CONNECT_TIMEOUT_SECONDS = 5
# Both PostgreSQL engines (sessions, autocommit statements). A server that does not answer
# fails the request (and /readyz) in seconds, not after the operating system's TCP timeout
# of two minutes.
_POSTGRESQL_POOL: dict[str, Any] = {
    "pool_size": 5,
    "max_overflow": 10,
    "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
}


# A pooled connection unused this long is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: sa.Engine) -> None:
    """Pre-ping, but only connections that sat idle: a server restart or an idle timeout
    drops those, while a connection in steady use would pay a round trip per transaction
    for nothing. (A busy connection the server drops fails one transaction; the pool then
    replaces every connection it holds.)"""

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get("checked_in")
        if checked_in is not None and time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards it and checks out another
            raise sa.exc.DisconnectionError(str(exc)) from exc

    sa.event.listen(engine, "checkin", on_checkin)
    sa.event.listen(engine, "checkout", on_checkout)


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


def _begin(connection: sa.Connection) -> None:
    # A transaction that may write takes the write lock at BEGIN: a deferred one that reads
    # and then writes can fail with "database is locked" without waiting, whatever the busy
    # timeout. A read-only session needs no lock at all.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
