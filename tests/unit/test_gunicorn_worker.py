"""The web worker's event loop (`api.gunicorn_worker`) on socket pairs, without gunicorn's
arbiter: what it hands to a thread, what it refuses, and that a failure of its own ends
one connection, never the worker (gunicorn's loop lets any error but OSError end it)."""

from __future__ import annotations

import collections
import io
import logging
import selectors
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.workers.gthread import TConn, ThreadWorker

from api import gunicorn_worker
from api.gunicorn_worker import WholeRequestWorker, _Conn, _ReadAhead
from api.http_framing import Framer

HEAD = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"


class Loop:
    """A worker's reading stage, with the threads' side recorded instead of run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.handed: list[TConn] = []
        monkeypatch.setattr(ThreadWorker, "enqueue_req", lambda _, conn: self.handed.append(conn))
        self.worker = WholeRequestWorker.__new__(WholeRequestWorker)
        self.worker.cfg = Config()
        self.worker.log = logging.getLogger("test.gunicorn_worker")
        self.worker.poller = selectors.DefaultSelector()
        self.worker.nr_conns = 0
        self.worker.keepalived_conns = collections.deque()
        self.worker.alive = True
        self.worker.prepare_reading(read_seconds=5.0)
        self.sockets: list[socket.socket] = []

    def connect(self) -> tuple[TConn, socket.socket]:
        server, client = socket.socketpair()
        self.sockets += [server, client]
        conn = _Conn(self.worker, self.worker.cfg, server, ("127.0.0.1", 1), ("127.0.0.1", 2))
        conn.sock = _ReadAhead(conn.sock)
        self.worker.nr_conns += 1
        self.worker.enqueue_req(conn)
        return conn, client

    def turn(self) -> None:
        """One pass of the event loop: every callback that is due."""
        for key, _ in self.worker.poller.select(0.05):
            key.data(key.fileobj)

    def answer(self, client: socket.socket) -> bytes:
        client.settimeout(2)
        return client.recv(65536)


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    made = Loop(monkeypatch)
    yield made
    for each in made.sockets:
        each.close()


def test_a_whole_request_goes_to_a_thread_with_its_bytes(loop: Loop) -> None:
    conn, client = loop.connect()
    client.sendall(HEAD + b"Content-Length: 4\r\n\r\n{")
    loop.turn()
    assert loop.handed == []
    client.sendall(b"  }")
    loop.turn()
    assert loop.handed == [conn] and conn.data_ready
    assert bytes(conn.sock.early) == HEAD + b"Content-Length: 4\r\n\r\n{  }"
    assert loop.worker.reading == {} and loop.worker.reading_bytes == 0


def test_a_content_length_of_thousands_of_digits_is_a_413_not_a_dead_worker(loop: Loop) -> None:
    """Python reads no decimal of over 4,300 digits: the error reached gunicorn's loop."""
    _, client = loop.connect()
    client.sendall(HEAD + b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n")
    loop.turn()
    assert loop.answer(client).startswith(b"HTTP/1.1 413 ")
    assert loop.handed == [] and loop.worker.nr_conns == 0


def test_a_failure_while_reading_ends_that_connection_only(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    conn, client = loop.connect()
    monkeypatch.setattr(Framer, "judge", broken)
    client.sendall(HEAD + b"\r\n")
    loop.turn()  # raises nothing
    assert loop.worker.nr_conns == 0 and conn not in loop.worker.reading
    assert loop.answer(client) == b""  # closed


def test_requests_arriving_past_the_budget_are_a_503(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gunicorn_worker, "READING_BUDGET", 30_000)
    partial = HEAD + b"Content-Length: 900000\r\n\r\n" + b" " * 90_000
    first, first_client = loop.connect()
    first_client.sendall(partial)
    loop.turn()
    _, second_client = loop.connect()
    second_client.sendall(partial)
    loop.turn()
    refused = loop.answer(second_client)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in refused
    assert list(loop.worker.reading) == [first]
    assert loop.worker.reading_bytes == len(partial) - gunicorn_worker.FREE_BYTES


def test_expect_100_continue_is_answered_and_dropped_from_the_head_only(loop: Loop) -> None:
    """gunicorn would answer it again; a body that holds the same words keeps them."""
    body = b"a\r\nExpect: 100-continue\r\nb"
    conn, client = loop.connect()
    client.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    loop.turn()
    assert loop.answer(client) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(body)
    loop.turn()
    assert bytes(conn.sock.early) == HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_a_head_read_ahead_with_the_last_request_is_left_as_it_is(loop: Loop) -> None:
    """Its head sits in the parser's buffer already: nothing is cut from what follows
    (it was cut from the body, which then took the next request's bytes)."""
    server, client = socket.socketpair()
    loop.sockets += [server, client]
    conn = _Conn(loop.worker, loop.worker.cfg, server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    conn.sock = _ReadAhead(conn.sock)
    head = HEAD + b"Expect: 100-continue\r\nContent-Length: 25\r\n\r\n"
    conn.parser = SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO(head)))
    loop.worker.nr_conns += 1
    loop.worker.enqueue_req(conn)
    assert loop.answer(client) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(b"a\r\nExpect: 100-continue\r\nb")
    loop.turn()
    assert loop.handed == [conn]
    assert bytes(conn.sock.early) == b"a\r\nExpect: 100-continue\r\nb"


def test_a_thread_reading_past_the_request_waits_until_its_deadline_only() -> None:
    server, client = socket.socketpair()
    with server, client:
        sock = _ReadAhead(server)
        sock.early += b"GET"
        sock.deadline = time.monotonic() + 0.2
        assert sock.recv(10) == b"GET"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert time.monotonic() - started < 1
        assert server.gettimeout() is None  # the thread's sends are the socket's own


def test_a_requests_bytes_count_until_its_thread_is_done_and_the_close_waits_on_no_one(
    loop: Loop,
) -> None:
    """Whole requests waiting for a thread still hold their bytes (400 of 1 MiB each took
    half a gigabyte past the budget); and a connection closed after its answer lingers for
    the client's last bytes on the poller, not on the event loop's thread (gunicorn's own
    close waited up to two seconds there, after every answer that closed a connection)."""
    body = b" " * 200_000
    conn, client = loop.connect()
    client.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    for _ in range(20):
        loop.turn()
        if loop.handed:
            break
    assert loop.handed == [conn]
    assert loop.worker.reading_bytes == conn.charged > len(body) - gunicorn_worker.FREE_BYTES
    done: Future[bool] = Future()
    done.set_result(False)  # its answer closes the connection
    started = time.monotonic()
    loop.worker.finish_request(conn, done)
    assert time.monotonic() - started < 0.1  # the client has not closed its side
    assert loop.worker.reading_bytes == 0 and loop.worker.nr_conns == 0
    assert list(loop.worker.lingering) == [conn.sock.sock]
    assert client.recv(10) == b""  # our FIN
    client.close()
    loop.turn()
    assert loop.worker.lingering == {}
