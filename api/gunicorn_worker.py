"""gunicorn's threaded worker, with every request read whole before a thread takes it.

gunicorn's `gthread` hands a connection to one of its threads as soon as bytes arrive,
and the thread then blocks reading the rest of the request. A client that sends its
request slowly (a header line every few seconds, a body a byte at a time) holds a thread
for as long as it likes, and a web process has few: a handful of such clients stopped the
API, `/healthz` included, for every tenant.

Here the worker's event loop reads requests without blocking (where a request ends is
`api.http_framing`'s to say), and a thread gets a connection only once its request's head
and body are all in memory. What the thread's parser reads comes from memory; should it
read further (framing misjudged), it may wait until the request's deadline and no later.

- A request not received whole within `ORCH_WEB_READ_TIMEOUT` seconds: 408, and the
  connection is closed (one that sent nothing is closed without an answer).
- A head over `MAX_HEAD_BYTES`: 431. A body over the API's limit (`MAX_BODY_BYTES`),
  declared or chunked: 413, without reading it.
- The requests still arriving may hold `READING_BUDGET` bytes between them, past the first
  `FREE_BYTES` of each: a request that would need more is a 503 (Retry-After: 1).
- `Expect: 100-continue` is answered as soon as the head is in, so that a client that
  waits for it sends its body.

Each answer is problem+json, as the app's are, and so are those gunicorn writes itself for
a request its parser refuses (its own are HTML pages).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from api.http_framing import MAX_BODY_BYTES, Framer, Framing
from orchestrator.settings import get_settings

RECV_BYTES = 1024 * 1024  # as much as has come: a batch's body whole, often
FREE_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # gunicorn's own, for a closing socket's last bytes
READING_BUDGET = 64 * 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT = re.compile(rb"(?<=\r\n)expect:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)


def problem(status: int, title: str, detail: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP answer that closes the connection."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
        f"{retry}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _write_problem(sock: Any, status: int, reason: str, message: str) -> None:
    """`gunicorn.util.write_error`'s place: the same answer, as problem+json."""
    util.write_nonblock(sock, problem(status, reason, message))


class _ReadAhead:
    """A client socket whose next reads return what the event loop read already. Reads
    from the socket itself wait until `deadline` at the latest (the request's); sends are
    the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.early = bytearray()
        self.deadline = float("inf")

    def recv(self, size: int, *flags: int) -> bytes:
        if self.early:
            data = bytes(self.early[:size])
            del self.early[:size]
            return data
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received in time")
        previous = self.sock.gettimeout()
        self.sock.settimeout(left if previous is None else min(previous, left))
        try:
            return self.sock.recv(size, *flags)
        finally:
            self.sock.settimeout(previous)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _Conn(TConn):  # type: ignore[misc]  # gunicorn has no types
    """gthread's connection, with what it counts against `READING_BUDGET` (its request's
    bytes, from the first read until a thread is done with them), closed gracefully (a
    FIN, then the client's last bytes drained) without blocking the event loop: gunicorn's
    own graceful close waits up to two seconds for the client, on the loop's thread, after
    every answer that closes a connection."""

    def __init__(self, worker: WholeRequestWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.charged = 0

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock.sock)
        else:
            super().close()


class _Reading:
    """A connection whose next request is still arriving: its bytes so far, the first
    `held` of which its parser or socket holds already (read ahead with the last one)."""

    def __init__(self, deadline: float, held: bytes) -> None:
        self.deadline = deadline
        self.data = bytearray(held)
        self.held = len(held)
        self.framer = Framer()
        self.continued = False
        self.polled = False  # on the poller, waiting for more

    @property
    def charged(self) -> int:
        """What it counts against `READING_BUDGET`."""
        return max(0, len(self.data) - FREE_BYTES)


class WholeRequestWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no types
    """`gthread`, but a thread gets a connection once its request is all in memory."""

    def init_process(self) -> None:
        # gunicorn answers a request it cannot parse (two Content-Lengths, a NUL in a
        # header, a head field too long) itself, as an HTML page; in this process, as
        # problem+json, like every other answer of the API.
        util.write_error = _write_problem
        self.prepare_reading(get_settings().web_read_timeout)
        super().init_process()

    def prepare_reading(self, read_seconds: float) -> None:
        self.read_seconds = read_seconds
        # What each read fills: one, reused (only the event loop's thread reads into it).
        self.buffer = bytearray(RECV_BYTES)
        self.view = memoryview(self.buffer)
        # Connections whose request is still arriving, oldest first; the bytes of requests
        # arriving or not yet done with (`_Conn.charged`); closed sockets being drained.
        self.reading: dict[TConn, _Reading] = {}
        self.reading_bytes = 0
        self.lingering: dict[socket.socket, float] = {}

    def accept(self, listener: socket.socket) -> None:
        if self.cfg.is_ssl:  # a TLS handshake is a thread's work, as in gthread
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self, self.cfg, client, address, listener.getsockname())
        conn.sock = _ReadAhead(conn.sock)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        """Every way to a thread comes here (a new connection, a kept-alive one that became
        readable, one with bytes of its next request read already): read first."""
        if not isinstance(conn, _Conn):  # a TLS connection: gthread's way
            super().enqueue_req(conn)
            return
        held = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        state = _Reading(time.monotonic() + self.read_seconds, held + conn.sock.early)
        conn.sock.setblocking(False)
        self.reading[conn] = state
        self._charge(conn, state.charged)
        # Most requests are in already (a kept-alive connection comes here once readable):
        # read now, and wait on the poller only for the rest. A trip through the poller
        # costs this thread the interpreter lock again, behind the request threads.
        if not self._guarded_read(conn):
            state.polled = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def finish_request(self, conn: TConn, fs: Any) -> None:
        if isinstance(conn, _Conn):
            self._charge(conn, 0)  # its thread is done with the request's bytes
        super().finish_request(conn, fs)
        # Kept alive with the start of its next request read already (a client that sent
        # two at once): its socket may never become readable again, so read on now.
        if isinstance(conn, _Conn) and conn.sock.early and conn in self.keepalived_conns:
            self.poller.unregister(conn.sock)
            self.keepalived_conns.remove(conn)
            self.enqueue_req(conn)

    def _readable(self, conn: TConn, _client: Any) -> None:
        self._guarded_read(conn)

    def _guarded_read(self, conn: TConn) -> bool:
        """`_read`, with a failure of its own ending this connection only: raised into
        gunicorn's event loop, it would end the worker and every request on it."""
        try:
            state = self.reading[conn]
            # Bytes read ahead with the last request may hold this one whole: judged
            # before more are read (a pipelining client's would pile up a read at a time).
            if state.data and (verdict := state.framer.judge(state.data)) is not Framing.PARTIAL:
                return self._act(conn, state, verdict)
            return self._read(conn, state)
        except Exception:
            self.log.exception("error reading a request from %s", conn.client)
            self._close(conn)
            return True

    def _read(self, conn: TConn, state: _Reading) -> bool:
        """Read all that has come (a batch's body arrives in many segments: each trip
        through the poller would wait for the interpreter lock again); whether the
        connection left this stage, to a thread or closed. What it holds when it starts
        was judged partial already."""
        while True:
            try:
                size = conn.sock.sock.recv_into(self.buffer)
            except (BlockingIOError, InterruptedError):
                return self._act(conn, state, Framing.PARTIAL)
            except OSError:
                self._close(conn)
                return True
            if not size:  # the client's side is closed: the parser says what it sent
                if state.data:
                    self._hand_over(conn, state)
                else:
                    self._close(conn)
                return True
            state.data += self.view[:size]
            self._charge(conn, state.charged)
            if self.reading_bytes > READING_BUDGET:
                busy = "Too many requests are arriving at once; send it again in a second."
                self._refuse(conn, problem(503, "Service Unavailable", busy, retry_after=1))
                return True
            verdict = state.framer.judge(state.data)
            if size < RECV_BYTES or verdict is not Framing.PARTIAL:
                return self._act(conn, state, verdict)

    def _act(self, conn: TConn, state: _Reading, verdict: Framing) -> bool:
        """On the framer's verdict: whether the request is in (and gone to a thread) or
        refused; else wait on."""
        if verdict is Framing.PARTIAL:
            if state.framer.expects_continue and not state.continued:
                state.continued = True
                self._send(conn, _CONTINUE)
            return False
        if verdict is Framing.HEAD_TOO_LARGE:
            self._refuse(
                conn, problem(431, "Request Header Fields Too Large", "The head is too large.")
            )
        elif verdict is Framing.BODY_TOO_LARGE:
            limit = f"The request body is larger than {MAX_BODY_BYTES} bytes."
            self._refuse(conn, problem(413, "Content Too Large", limit))
        else:
            self._hand_over(conn, state)
        return True

    def _hand_over(self, conn: TConn, state: _Reading) -> None:
        self._stop_reading(conn)
        fresh = bytes(state.data[state.held :])
        head_end = state.framer.body_at
        if state.continued and state.held == 0 and head_end is not None:
            # Answered already, and gunicorn would answer again: the field goes from the
            # head (the head only, and only a head all in `fresh`; else the client gets
            # two, which HTTP allows).
            fresh = _EXPECT.sub(b"", fresh[:head_end], count=1) + fresh[head_end:]
        conn.sock.early += fresh
        conn.sock.deadline = state.deadline
        conn.data_ready = True  # gunicorn's thread would otherwise wait for bytes again
        super().enqueue_req(conn)

    def murder_pending(self) -> None:
        """gunicorn's sweep of idle connections, and of requests that take too long, and
        of closing sockets whose client does not close its side."""
        super().murder_pending()
        now = time.monotonic()
        for sock in [s for s, deadline in self.lingering.items() if deadline <= now]:
            self._end_linger(sock)
        for conn, state in list(self.reading.items()):
            if state.deadline > now:
                break
            if state.data:
                late = f"The request was not received whole within {self.read_seconds:g} s."
                self._refuse(conn, problem(408, "Request Timeout", late))
            else:
                self._close(conn)

    def _refuse(self, conn: TConn, answer: bytes) -> None:
        self._send(conn, answer)
        self._close(conn, graceful=True)  # an abrupt close could lose the answer to a reset

    def _send(self, conn: TConn, data: bytes) -> None:
        # Small, into an empty send buffer: sent whole, or the client is gone and closing
        # is all that is left.
        with contextlib.suppress(OSError):
            conn.sock.sock.send(data)

    def _stop_reading(self, conn: TConn) -> None:
        if self.reading.pop(conn).polled:
            self.poller.unregister(conn.sock)

    def _charge(self, conn: _Conn, charged: int) -> None:
        self.reading_bytes += charged - conn.charged
        conn.charged = charged

    def _close(self, conn: TConn, *, graceful: bool = False) -> None:
        if conn in self.reading:
            self._stop_reading(conn)
        self._charge(conn, 0)
        self.nr_conns -= 1
        conn.close(graceful=graceful)

    def linger(self, sock: socket.socket) -> None:
        """Close `sock` as gunicorn's graceful close does (RFC 9112 9.6: a FIN, then what
        the client still sends is read and dropped, so that no reset cuts the answer),
        with the waiting on the poller, not on this thread."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self.lingering[sock] = time.monotonic() + LINGER_SECONDS
        self.poller.register(sock, selectors.EVENT_READ, self._drain)

    def _drain(self, sock: socket.socket) -> None:
        try:
            more = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            more = b""
        if not more:  # the client closed too
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        del self.lingering[sock]
        self.poller.unregister(sock)
        sock.close()
