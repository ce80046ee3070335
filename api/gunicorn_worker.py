"""gunicorn's threaded worker, with every request read whole before a thread takes it.

gunicorn's `gthread` hands a connection to one of its threads as soon as bytes arrive,
and the thread then blocks reading the rest of the request. A client that sends its
request slowly (a header line every few seconds, a body a byte at a time) holds a thread
for as long as it likes, and a web process has few: a handful of such clients stopped the
API, `/healthz` included, for every tenant.

Here the worker's event loop reads requests without blocking, and a thread gets a
connection only once its request's head and body are all in memory. What a thread then
reads comes from memory; its socket has a timeout besides, for whatever the framing
check below lets through (a malformed request the parser reads further than it).

- A request not received whole within `ORCH_WEB_READ_TIMEOUT` seconds of its first byte:
  408, and the connection is closed. A connection that sends nothing is closed at
  gunicorn's keep-alive timeout, as before.
- A head over `MAX_HEAD_BYTES`: 431. A body over the API's limit (`MAX_BODY_BYTES`),
  declared or chunked: 413, without reading it.
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
from enum import Enum
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from api import MAX_BODY_BYTES
from orchestrator.settings import get_settings

MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 1024 * 1024  # as much as has come: a batch's body whole, often
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE = 1024  # a chunk's size line (with extensions) longer than this is refused
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT = re.compile(rb"(?<=\r\n)expect:[ \t]*100-continue[ \t]*\r\n", re.IGNORECASE)


class Framing(Enum):
    """How far the bytes received so far go toward one whole request."""

    PARTIAL = "partial"  # more to come
    WHOLE = "whole"  # a request, or bytes the parser will refuse: a thread's turn
    HEAD_TOO_LARGE = "head too large"
    BODY_TOO_LARGE = "body too large"


class Framer:
    """Where a connection's next request stands, from its bytes so far. Each call's `data`
    is the last call's and more; a chunked body's framing is read once, not again at each
    call (a body of tiny chunks would cost the event loop its square). Framing the parser
    would refuse (a Content-Length that is no number, a chunk size that is no hex) counts
    as whole: the parser answers 400."""

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self.expects_continue = False
        self._body_at: int | None = None
        self._declared = 0  # Content-Length, for a body that is not chunked
        self._chunked = False
        self._next_chunk = 0  # where the next chunk's size line starts
        self._total = 0  # the chunks' bytes so far

    def judge(self, data: bytes) -> Framing:
        if self._body_at is None and (verdict := self._head(data)) is not None:
            return verdict
        assert self._body_at is not None
        if self._chunked:
            return self._chunks(data)
        return Framing.WHOLE if len(data) - self._body_at >= self._declared else Framing.PARTIAL

    def _head(self, data: bytes) -> Framing | None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return Framing.HEAD_TOO_LARGE if len(data) > MAX_HEAD_BYTES else Framing.PARTIAL
        if end > MAX_HEAD_BYTES:
            return Framing.HEAD_TOO_LARGE
        headers = _headers(data[:end])
        self.expects_continue = headers.get(b"expect", b"").strip().lower() == b"100-continue"
        self._body_at = self._next_chunk = end + 4
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._chunked = True
            return None
        declared = headers.get(b"content-length", b"0").strip()
        if not declared.isdigit():
            return Framing.WHOLE  # the parser refuses it
        if int(declared) > self.max_body:
            return Framing.BODY_TOO_LARGE
        self._declared = int(declared)
        return None

    def _chunks(self, data: bytes) -> Framing:
        assert self._body_at is not None
        # Framing beyond a quarter of the limit (thousands of tiny chunks): refused, so that
        # the sizes this loop reads stay few.
        if len(data) - self._body_at > self.max_body + self.max_body // 4 + MAX_CHUNK_LINE:
            return Framing.BODY_TOO_LARGE
        while True:
            line_end = data.find(b"\r\n", self._next_chunk)
            if line_end < 0:
                unended = len(data) - self._next_chunk
                return Framing.PARTIAL if unended <= MAX_CHUNK_LINE else Framing.WHOLE
            text = data[self._next_chunk : line_end].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(text):
                return Framing.WHOLE  # the parser refuses it
            size = int(text, 16)
            if self._total + size > self.max_body:
                return Framing.BODY_TOO_LARGE
            if size == 0:  # the last chunk, then trailer fields up to an empty line
                done = data.startswith(b"\r\n\r\n", line_end) or b"\r\n\r\n" in data[line_end:]
                return Framing.WHOLE if done else Framing.PARTIAL
            following = line_end + 2 + size + 2
            if following > len(data):
                return Framing.PARTIAL
            self._total += size
            self._next_chunk = following


def _headers(head: bytes) -> dict[bytes, bytes]:
    """The head's fields by lower-case name (a repeated one: the values joined, so that
    two Content-Lengths are no number, and the parser refuses them)."""
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        fields[key] = fields[key] + b"," + value if key in fields else value
    return fields


def problem(status: int, title: str, detail: str) -> bytes:
    """A whole HTTP answer that closes the connection."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _write_problem(sock: Any, status: int, reason: str, message: str) -> None:
    """`gunicorn.util.write_error`'s place: the same answer, as problem+json."""
    util.write_nonblock(sock, problem(status, reason, message))


class _ReadAhead:
    """A client socket whose next reads return what the event loop read already. Put
    in blocking mode (a thread's turn), it blocks for `timeout` seconds at most."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.early = bytearray()

    def recv(self, size: int, *flags: int) -> bytes:
        if self.early:
            data = bytes(self.early[:size])
            del self.early[:size]
            return data
        return self.sock.recv(size, *flags)

    def setblocking(self, blocking: bool) -> None:
        self.sock.settimeout(self.timeout if blocking else 0.0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


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


class WholeRequestWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no types
    """`gthread`, but a thread gets a connection once its request is all in memory."""

    def init_process(self) -> None:
        # gunicorn answers a request it cannot parse (two Content-Lengths, a NUL in a
        # header, a head field too long) itself, as an HTML page; in this process, as
        # problem+json, like every other answer of the API.
        util.write_error = _write_problem
        self.read_seconds = get_settings().web_read_timeout
        # What each read fills: one, reused (only the event loop's thread reads into it).
        self.buffer = bytearray(RECV_BYTES)
        self.view = memoryview(self.buffer)
        # Connections whose request is still arriving, oldest first.
        self.reading: dict[TConn, _Reading] = {}
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())
        conn.sock = _ReadAhead(conn.sock, self.read_seconds)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        """Every way to a thread comes here (a new connection, a kept-alive one that became
        readable, one with bytes of its next request read already): read first."""
        if self.cfg.is_ssl or not isinstance(conn.sock, _ReadAhead):
            super().enqueue_req(conn)
            return
        held = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        state = _Reading(time.monotonic() + self.read_seconds, held + conn.sock.early)
        conn.sock.setblocking(False)
        self.reading[conn] = state
        # Most requests are in already (a kept-alive connection comes here once readable):
        # read now, and wait on the poller only for the rest. A trip through the poller
        # costs this thread the interpreter lock again, behind the request threads.
        if not self._read(conn, state):
            state.polled = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def finish_request(self, conn: TConn, fs: Any) -> None:
        super().finish_request(conn, fs)
        # Kept alive with the start of its next request read already (a client that sent
        # two at once): its socket may never become readable again, so read on now.
        if isinstance(conn.sock, _ReadAhead) and conn.sock.early and conn in self.keepalived_conns:
            self.poller.unregister(conn.sock)
            self.keepalived_conns.remove(conn)
            self.enqueue_req(conn)

    def _readable(self, conn: TConn, _client: Any) -> None:
        self._read(conn, self.reading[conn])

    def _read(self, conn: TConn, state: _Reading) -> bool:
        """Read all that has come (a batch's body arrives in many segments: each trip
        through the poller would wait for the interpreter lock again); whether the
        connection left this stage, to a thread or closed."""
        while True:
            try:
                size = conn.sock.sock.recv_into(self.buffer)
            except (BlockingIOError, InterruptedError):
                return self._judge(conn, state) if state.data else False
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
            if size < RECV_BYTES or state.framer.judge(bytes(state.data)) is not Framing.PARTIAL:
                return self._judge(conn, state)

    def _judge(self, conn: TConn, state: _Reading) -> bool:
        """Whether the request is in (and gone to a thread) or refused; else wait on."""
        verdict = state.framer.judge(bytes(state.data))
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
        if state.continued:  # answered already: gunicorn would send a second 100
            fresh = _EXPECT.sub(b"", fresh, count=1)
        conn.sock.early += fresh
        conn.data_ready = True  # gunicorn's thread would otherwise wait for bytes again
        super().enqueue_req(conn)

    def murder_pending(self) -> None:
        """gunicorn's sweep of idle connections, and of requests that take too long."""
        super().murder_pending()
        now = time.monotonic()
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
        self._close(conn)

    def _send(self, conn: TConn, data: bytes) -> None:
        # Small, into an empty send buffer: sent whole, or the client is gone and closing
        # is all that is left.
        with contextlib.suppress(OSError):
            conn.sock.sock.send(data)

    def _stop_reading(self, conn: TConn) -> None:
        if self.reading.pop(conn).polled:
            self.poller.unregister(conn.sock)

    def _close(self, conn: TConn) -> None:
        if conn in self.reading:
            self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()
