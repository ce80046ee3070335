"""The hot path's statement pool on PostgreSQL: one connection per caller, errors as
SQLAlchemy's, disposal and forks that leave no connection shared or half-closed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from orchestrator.prepared import PreparedStatement, StatementPool, _numbered

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
# The serving backend, and a parameter that goes through the server's type inference.
BACKEND = PreparedStatement.compile(
    sa.select(
        sa.func.pg_backend_pid().label("pid"),
        sa.cast(sa.bindparam("x", type_=sa.Integer), sa.Integer).label("x"),
    ),
    DIALECT,
)
SLEEP = PreparedStatement.compile(
    sa.select(sa.func.pg_sleep(sa.bindparam("seconds", type_=sa.Float)).label("slept")),
    DIALECT,
)
RATIO = PreparedStatement.compile(
    sa.select(
        sa.cast(sa.literal(6) / sa.bindparam("by", type_=sa.Integer), sa.Integer).label("ratio")
    ),
    DIALECT,
)


class Connects:
    """`StatementPool`'s connect, counting the connections it opened."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.opened: list[psycopg.Connection[Any]] = []

    def __call__(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self.url, autocommit=True)
        self.opened.append(connection)
        return connection


@pytest.fixture
def connects(database_url: str) -> Iterator[Connects]:
    connects = Connects(database_url)
    yield connects
    for connection in connects.opened:
        connection.close()


def _pid(pool: StatementPool, x: int = 1) -> int:
    row = pool.first_row(BACKEND, {"x": x})
    assert row is not None and row["x"] == x
    return int(row["pid"])


def test_binds_keep_one_number_each_and_literal_percents_unescape() -> None:
    sql, order = _numbered("a = %(x)s AND b = %(y)s OR c = %(x)s AND d LIKE 'a%%'")
    assert sql == "a = $1 AND b = $2 OR c = $1 AND d LIKE 'a%'"
    assert order == ("x", "y")


@on_postgresql
def test_a_callers_statements_share_one_connection(connects: Connects) -> None:
    pool = StatementPool(connects)
    assert len({_pid(pool, x) for x in range(5)}) == 1
    assert len(connects.opened) == 1


@on_postgresql
def test_a_failed_statement_raises_sqlalchemys_error_and_its_connection_is_replaced(
    connects: Connects,
) -> None:
    pool = StatementPool(connects)
    before = _pid(pool)
    with pytest.raises(sa.exc.DataError) as raised:
        pool.first_row(RATIO, {"by": 0})
    assert isinstance(raised.value.orig, psycopg.errors.DivisionByZero)
    assert raised.value.orig.diag.sqlstate == "22012"
    assert "division by zero" in str(raised.value)
    assert connects.opened[0].closed  # not run once more: the error was the statement's
    assert pool.first_row(RATIO, {"by": 3}) == {"ratio": 2}
    assert _pid(pool) != before and len(connects.opened) == 2


class Interrupted(Exception):
    pass


@on_postgresql
def test_a_signal_lands_once_the_statement_answered_and_its_connection_is_replaced(
    connects: Connects,
) -> None:
    """As Celery's soft time limit does: the handler's exception is raised when libpq's
    call returns, and the connection, whose state is then unknown, is not reused."""

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        pool = StatementPool(connects)
        _pid(pool)
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        started = time.monotonic()
        timer.start()
        with pytest.raises(Interrupted):
            pool.first_row(SLEEP, {"seconds": 0.4})
        assert time.monotonic() - started >= 0.4
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert connects.opened[0].closed
    _pid(pool)
    assert len(connects.opened) == 2


@on_postgresql
def test_idle_connections_beyond_keep_are_closed(connects: Connects) -> None:
    pool = StatementPool(connects, keep=2)
    together = threading.Barrier(4)

    def sleep() -> None:
        together.wait()
        pool.first_row(SLEEP, {"seconds": 0.3})

    sleepers = [threading.Thread(target=sleep) for _ in range(4)]
    for sleeper in sleepers:
        sleeper.start()
    for sleeper in sleepers:
        sleeper.join()
    assert len(connects.opened) == 4
    assert sum(connection.closed for connection in connects.opened) == 2


@on_postgresql
def test_dispose_closes_idle_connections_and_busy_ones_when_they_are_done(
    connects: Connects,
) -> None:
    pool = StatementPool(connects)
    _pid(pool)
    busy = connects.opened[0]
    sleeper = threading.Thread(target=pool.first_row, args=(SLEEP, {"seconds": 0.5}))
    sleeper.start()
    while busy.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
        threading.Event().wait(0.01)
    _pid(pool)  # opens a second connection, idle once the statement is done
    idle = connects.opened[1]
    pool.dispose()
    assert idle.closed
    assert not busy.closed  # still running its statement
    sleeper.join()
    assert busy.closed  # closed on its return, not handed out again
    _pid(pool)
    assert len(connects.opened) == 3


@on_postgresql
def test_a_forked_child_neither_uses_nor_ends_the_parents_connection(
    connects: Connects,
) -> None:
    pool = StatementPool(connects)
    parent_backend = _pid(pool)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        code = 1
        try:
            pool.dispose()  # as a Celery pool process does when it starts
            os.write(writing, str(_pid(pool)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writing)
    child_backend = int(os.read(reading, 32) or b"0")
    os.close(reading)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend not in (0, parent_backend)
    assert _pid(pool) == parent_backend  # the parent's session was not ended
