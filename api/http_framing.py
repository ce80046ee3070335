"""Where an HTTP/1.1 request's bytes end (RFC 9112), judged as they arrive.

The web's event loop (`api.gunicorn_worker`) reads requests without blocking and hands a
connection to a thread once its request is whole. It must agree with gunicorn's parser
about where a request ends: a request this module calls whole while the parser still
waits for bytes would hold a thread after all (a slow client's way back in). So framing
the parser refuses (a Content-Length that is no number, a bare LF, a chunk size that is
no hex) counts as whole, to be refused by the parser at once, and framing the parser
accepts is followed to its end, by the parser's own limits.
"""

from __future__ import annotations

from enum import Enum

MAX_BODY_BYTES = 1024 * 1024  # the API's: the app's MAX_CONTENT_LENGTH too
MAX_HEAD_BYTES = 64 * 1024
# gunicorn's own limits, from its defaults (`limit_request_field_size` 8,190 and
# `limit_request_fields` 100): a chunk-size line or a trailer section longer than these,
# its parser refuses; shorter, it waits for the rest, so this must too.
MAX_CHUNK_LINE = 8190
MAX_TRAILERS = 100 * (8190 + 2) + 4
_HEX = frozenset(b"0123456789abcdefABCDEF")
CR = ord("\r")


class Framing(Enum):
    """How far the bytes received so far go toward one whole request."""

    PARTIAL = "partial"  # more to come
    WHOLE = "whole"  # a request, or bytes the parser will refuse: a thread's turn
    HEAD_TOO_LARGE = "head too large"
    BODY_TOO_LARGE = "body too large"


class Framer:
    """Where a connection's next request stands, from its bytes so far. Each call's `data`
    is the last call's and more; what was read once is not read again (a head searched
    from where the last search stopped, a chunked body's sizes each read once), so a
    request sent a byte at a time costs the event loop its length, not its square."""

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self.expects_continue = False
        self.body_at: int | None = None  # where the body starts, once the head is in
        self._searched = 0  # how far the head's end was looked for
        self._declared = 0  # Content-Length, for a body that is not chunked
        self._chunked = False
        self._next_chunk = 0  # where the next chunk's size line starts
        self._line_searched = 0  # how far that line's end was looked for
        self._total = 0  # the chunks' bytes so far
        self._trailers_at: int | None = None  # where the trailer section starts

    def judge(self, data: bytes | bytearray) -> Framing:
        if self.body_at is None and (verdict := self._head(data)) is not None:
            return verdict
        assert self.body_at is not None
        if self._chunked:
            return self._chunks(data)
        return Framing.WHOLE if len(data) - self.body_at >= self._declared else Framing.PARTIAL

    def _head(self, data: bytes | bytearray) -> Framing | None:
        end = data.find(b"\r\n\r\n", self._searched)
        if end < 0:
            return self._unended(data)
        if end > MAX_HEAD_BYTES:
            return Framing.HEAD_TOO_LARGE
        head = bytes(data[:end])
        headers = _headers(head)
        # HTTP/1.0 has no interim answers (RFC 9110 15.2): its Expect is ignored.
        self.expects_continue = headers.get(
            b"expect", b""
        ).strip().lower() == b"100-continue" and not head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0")
        self.body_at = self._next_chunk = self._line_searched = end + 4
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._chunked = True
            return None
        declared = headers.get(b"content-length", b"0").strip()
        if not declared.isdigit():
            return Framing.WHOLE  # the parser refuses it
        # Compared by length first: Python reads no decimal of over 4,300 digits.
        digits = declared.lstrip(b"0") or b"0"
        if len(digits) > len(str(self.max_body)) or int(digits) > self.max_body:
            return Framing.BODY_TOO_LARGE
        self._declared = int(digits)
        return None

    def _unended(self, data: bytes | bytearray) -> Framing:
        """A head not ended yet: more to come, unless the parser refuses it already."""
        lf = data.find(b"\n", self._searched)
        while lf >= 0:
            if lf == 0 or data[lf - 1] != CR:
                return Framing.WHOLE  # a bare LF: the parser refuses it
            lf = data.find(b"\n", lf + 1)
        if len(data) > MAX_HEAD_BYTES:
            return Framing.HEAD_TOO_LARGE
        # Every LF so far checked; a terminator may straddle this read and the next.
        self._searched = max(0, len(data) - 3)
        return Framing.PARTIAL

    def _chunks(self, data: bytes | bytearray) -> Framing:
        assert self.body_at is not None
        # Framing past an eighth of the limit (thousands of tiny chunks): refused, so that
        # the sizes this loop reads stay few (a client's chunks are kilobytes, not bytes).
        if len(data) - self.body_at > self.max_body + self.max_body // 8 + MAX_CHUNK_LINE:
            return Framing.BODY_TOO_LARGE
        while self._trailers_at is None:
            if (verdict := self._chunk(data)) is not None:
                return verdict
        return self._trailers(data)

    def _chunk(self, data: bytes | bytearray) -> Framing | None:
        """Read the next chunk's size line and pass its data: a verdict, or `None` to go on
        (to the next chunk, or to the trailers after the last)."""
        line_end = data.find(b"\r\n", self._line_searched)
        if line_end < 0:
            unended = len(data) - self._next_chunk
            self._line_searched = max(self._next_chunk, len(data) - 1)
            return Framing.PARTIAL if unended <= MAX_CHUNK_LINE else Framing.WHOLE
        size = _chunk_size(bytes(data[self._next_chunk : line_end]))
        if size is None:
            return Framing.WHOLE  # the parser refuses it
        if self._total + size > self.max_body:
            return Framing.BODY_TOO_LARGE
        if size == 0:  # the last chunk: trailer fields follow, up to an empty line
            self._trailers_at = self._line_searched = line_end + 2
            return None
        following = line_end + 2 + size + 2
        if following > len(data):
            self._line_searched = line_end  # this size line again, once all is in
            return Framing.PARTIAL
        self._total += size
        self._next_chunk = self._line_searched = following
        return None

    def _trailers(self, data: bytes | bytearray) -> Framing:
        """Whole at the empty line that ends the trailer section (straight away, for none)."""
        assert self._trailers_at is not None
        start = self._trailers_at
        if data.startswith(b"\r\n", start):
            return Framing.WHOLE
        if data.find(b"\r\n\r\n", max(start, self._line_searched - 3)) >= 0:
            return Framing.WHOLE
        # As gunicorn's parser counts it: the section after the last chunk's line.
        if len(data) - start > MAX_TRAILERS:
            return Framing.WHOLE
        self._line_searched = len(data)
        return Framing.PARTIAL


def _chunk_size(line: bytes) -> int | None:
    """A chunk-size line's size as gunicorn's parser reads it (hex digits, as many as
    there are; blanks before an extension only), or `None` where it refuses the line."""
    size, *extension = line.split(b";", 1)
    if extension:
        size = size.rstrip(b" \t")
    if not size or not _HEX.issuperset(size):
        return None
    return int(size, 16)


def _headers(head: bytes) -> dict[bytes, bytes]:
    """The head's fields by lower-case name (a repeated one: the values joined, so that
    two Content-Lengths are no number, and the parser refuses them)."""
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        fields[key] = fields[key] + b"," + value if key in fields else value
    return fields
