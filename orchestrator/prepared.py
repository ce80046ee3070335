"""Statements prepared once per connection and run through libpq: the workers' hot path.

A claim and a success are one prebuilt statement each (see transition_statements). Run
through a pool checkout and a psycopg cursor, the Python around each of them (checkout
and return, the cursor, query conversion, prepared-statement bookkeeping) cost a pool
process more CPU than PostgreSQL spent on the statement, and in a prefork worker that CPU
comes from the cores Celery's parent and PostgreSQL are waiting for. Here a statement is
prepared on each connection once, under a name of its own, and run with `PQexecPrepared`;
psycopg's adapters (a `Transformer` of the connection) convert its parameters and results,
so values come out as they would through a cursor.

libpq's call blocks until the server answers (it releases the GIL). A signal that lands
meanwhile (Celery's soft time limit, the heartbeat's stop) is handled once the statement
has answered, not inside a Python-level wait (as psycopg's cursor would take it); so a
statement that hangs (a lock held for long, a network partition) is ended by the hard
time limit, which kills the pool process, not by the soft one. A statement interrupted
that way may have committed, like one whose connection dropped: the lease expires and the
reaper takes the job back.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

# SQLAlchemy renders binds for psycopg as `%(name)s` and a literal percent sign as `%%`.
_PYFORMAT = re.compile(r"%\((\w+)\)s|%%")
_names = itertools.count(1)
# What can be prepared: a select, or a textual statement with its result columns declared.
Preparable = sa.Select[Any] | sa.TextualSelect


@dataclass(frozen=True)
class PreparedStatement:
    """A statement compiled for PostgreSQL once: its name on the server, its SQL with `$n`
    placeholders, and the conversions SQLAlchemy applies to its parameters and result
    columns (enums, JSON, UTC timestamps), found through the types' own processors."""

    statement: Preparable  # kept alive: callers cache these by the statement's id
    name: bytes
    sql: bytes
    order: tuple[str, ...]  # the parameter each `$n` stands for
    # Text, so that the server gives each parameter the type it infers from the SQL.
    formats: tuple[PyFormat, ...]
    defaults: Mapping[str, Any]
    binds: Mapping[str, Callable[[Any], Any]]
    columns: tuple[str, ...]
    results: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def compile(cls, statement: Preparable, dialect: sa.Dialect) -> PreparedStatement:
        compiled = statement.compile(dialect=dialect)
        if compiled.escaped_bind_names or compiled.post_compile_params:
            # Renamed binds and expanding IN lists are not `%(name)s` in the SQL.
            raise ValueError("escaped or expanding bind parameters cannot be prepared here")
        sql, order = _numbered(compiled.string)
        binds = {
            name: processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
        }
        defaults = {
            name: binds[name](value) if name in binds else value
            for name, value in compiled.params.items()
        }
        columns = list(statement.selected_columns)
        return cls(
            statement,
            f"orchestrator_{next(_names)}".encode(),
            sql.encode(),
            order,
            (PyFormat.TEXT,) * len(order),
            defaults,
            binds,
            tuple(str(column.key) for column in columns),
            tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in columns
            ),
        )

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        return [self._value(name, params) for name in self.order]

    def _value(self, name: str, params: Mapping[str, Any]) -> Any:
        if name not in params:
            return self.defaults[name]
        process = self.binds.get(name)
        return process(params[name]) if process else params[name]

    def row(self, values: tuple[Any, ...]) -> dict[str, Any]:
        return {
            name: process(value) if process else value
            for name, process, value in zip(self.columns, self.results, values, strict=True)
        }


def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with `$1, $2, ...` for its named binds (a name used twice keeps its number)."""
    order: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PYFORMAT.sub(placeholder, sql), tuple(order)


class StatementPool:
    """Autocommit connections that run prepared statements, one per concurrent caller (a
    Celery pool process uses one; a threaded web process one per thread running jobs), of
    which `keep` stay open when idle.

    `connect` makes a new autocommit connection. A connection the server dropped is
    replaced and the statement run once more (there is no pre-ping: it would cost a round
    trip per statement). A connection whose statement did not answer normally is closed,
    not reused: what it holds (a statement prepared or not, a plan a migration made stale)
    is unknown. After a fork the parent's connections are left alone.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, keep: int = 5) -> None:
        self._connect = connect
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._generation = 0
        self._pid = os.getpid()

    def first_row(
        self, statement: PreparedStatement, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Run `statement` (in its own transaction) and return its first row by column
        name, or `None`. Errors are SQLAlchemy's, as through an engine."""
        values = statement.parameters(params)
        for retry in (False, True):
            connection = self._checkout()
            try:
                row = connection.run(statement, values)
            except psycopg.Error as exc:
                dropped = connection.dropped
                connection.close()
                if retry or not dropped:
                    raise sa.exc.DBAPIError.instance(
                        statement.sql.decode(),
                        values,
                        exc,
                        psycopg.Error,
                        connection_invalidated=dropped,
                    ) from exc
                continue
            except BaseException:  # a signal's exception, raised as the statement answered
                connection.close()
                raise
            self._checkin(connection)
            return None if row is None else statement.row(row)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        """Close the idle connections; those in use close when their statement is done."""
        with self._lock:
            idle = self._adopt()
            self._idle = []
            self._generation += 1
        for connection in idle:
            connection.close()

    def _checkout(self) -> _Connection:
        with self._lock:
            idle = self._adopt()
            if idle:
                return idle.pop()
            generation = self._generation
        return _Connection(self._connect(), generation)

    def _checkin(self, connection: _Connection) -> None:
        with self._lock:
            if connection.generation == self._generation and len(self._idle) < self._keep:
                self._idle.append(connection)
                return
        connection.close()

    def _adopt(self) -> list[_Connection]:
        # Under the lock. A forked child must not use (or close: that would end the
        # parent's session) the connections it inherited.
        if self._pid != os.getpid():
            self._pid, self._idle = os.getpid(), []
        return self._idle


class _Connection:
    """One connection and the statements prepared on it."""

    def __init__(self, connection: psycopg.Connection[Any], generation: int) -> None:
        self.connection = connection
        self.generation = generation
        self._transformer = Transformer(connection)
        self._prepared: set[bytes] = set()

    @property
    def dropped(self) -> bool:
        """Whether the server ended the session (the connection is unusable)."""
        return self.connection.pgconn.status == pq.ConnStatus.BAD

    def run(self, statement: PreparedStatement, values: list[Any]) -> tuple[Any, ...] | None:
        pgconn = self.connection.pgconn
        if statement.name not in self._prepared:
            self._checked(pgconn.prepare(statement.name, statement.sql), pq.ExecStatus.COMMAND_OK)
            self._prepared.add(statement.name)
        transformer = self._transformer
        # `None` stands for NULL, as in psycopg's own cursors (the stub leaves it out).
        params: Any = transformer.dump_sequence(values, statement.formats)
        result = self._checked(
            pgconn.exec_prepared(statement.name, params), pq.ExecStatus.TUPLES_OK
        )
        if result.ntuples == 0:
            return None
        transformer.set_pgresult(result)
        row: tuple[Any, ...] = transformer.load_row(0, tuple)
        return row

    def close(self) -> None:
        self.connection.close()

    def _checked(self, result: pq.abc.PGresult, expected: pq.ExecStatus) -> pq.abc.PGresult:
        if result.status == expected:
            return result
        if self.dropped or not result.error_field(pq.DiagnosticField.SQLSTATE):
            message = result.error_message.decode("utf-8", "replace").strip()
            raise psycopg.OperationalError(message or "the connection was lost")
        raise psycopg.errors.error_from_result(result, self.connection.info.encoding)
