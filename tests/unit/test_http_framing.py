"""How the web's event loop tells a whole request from part of one (`api.http_framing`):
only a whole one, or one its parser will refuse, goes to a thread."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from api.http_framing import MAX_HEAD_BYTES, MAX_TRAILERS, Framer, Framing

HEAD = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", Framing.PARTIAL),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", Framing.PARTIAL),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Framing.WHOLE),
        (HEAD + b"Content-Length: 4\r\n\r\n{}", Framing.PARTIAL),
        (HEAD + b"Content-Length: 4\r\n\r\n{  }", Framing.WHOLE),
        (HEAD + b"content-length: 4\r\n\r\n{  }GET / HTTP/1.1\r\n", Framing.WHOLE),
        (HEAD + b"Content-Length: 1048577\r\n\r\n", Framing.BODY_TOO_LARGE),
        # Framing the parser refuses goes to it whole: it answers 400.
        (HEAD + b"Content-Length: -1\r\n\r\n", Framing.WHOLE),
        (HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n", Framing.WHOLE),
        (CHUNKED + b"zz\r\n", Framing.WHOLE),
        (CHUNKED + b"0x3\r\nabc\r\n", Framing.WHOLE),
        (CHUNKED, Framing.PARTIAL),
        (CHUNKED + b"3\r\nab", Framing.PARTIAL),
        (CHUNKED + b"3;name=v\r\nabc\r\n", Framing.PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n0\r\n", Framing.PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n0\r\n\r\n", Framing.WHOLE),
        (CHUNKED + b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n", Framing.PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n", Framing.WHOLE),
        (CHUNKED + b"100000\r\n", Framing.PARTIAL),
        (CHUNKED + b"100001\r\n", Framing.BODY_TOO_LARGE),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, Framing.HEAD_TOO_LARGE),
    ],
)
def test_framing(data: bytes, expected: Framing) -> None:
    assert Framer().judge(data) is expected


@pytest.mark.parametrize(
    "data",
    [
        CHUNKED + b"3\r\nabc\r\n5;x=y\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    ],
)
def test_a_request_read_a_byte_at_a_time_is_whole_at_its_last_byte(data: bytes) -> None:
    """The event loop judges the bytes so far at each read: partial until the last."""
    framer = Framer()
    verdicts = [framer.judge(data[:end]) for end in range(1, len(data) + 1)]
    assert set(verdicts[:-1]) == {Framing.PARTIAL} and verdicts[-1] is Framing.WHOLE


def test_chunks_over_the_limit_are_refused_as_they_add_up() -> None:
    framer = Framer(max_body=10)
    assert framer.judge(CHUNKED + b"6\r\nabcdef\r\n") is Framing.PARTIAL
    assert framer.judge(CHUNKED + b"6\r\nabcdef\r\n5\r\n") is Framing.BODY_TOO_LARGE
    # A body within the limit in chunks of one byte: its framing is five times its size.
    tiny = CHUNKED + b"1\r\nx\r\n" * 3000
    assert Framer(max_body=4000).judge(tiny) is Framing.BODY_TOO_LARGE


def test_a_trailer_section_is_whole_where_gunicorns_parser_stops_waiting() -> None:
    """The parser counts the section after the last chunk's line, and refuses it past its
    limit: one byte short of that, it waits (and so must the framer); past it, whole."""
    last = CHUNKED + b"0\r\n"
    assert Framer().judge(last + b"X: " + b"a" * (MAX_TRAILERS - 3)) is Framing.PARTIAL
    assert _parser_on(last + b"X: " + b"a" * (MAX_TRAILERS - 3)) == "wants more"
    assert Framer().judge(last + b"X: " + b"a" * (MAX_TRAILERS - 2)) is Framing.WHOLE
    assert _parser_on(last + b"X: " + b"a" * (MAX_TRAILERS - 2)) != "wants more"


def test_a_content_length_of_leading_zeros_is_read_as_its_number() -> None:
    """Python reads no decimal of over 4,300 digits, zeros included."""
    data = HEAD + b"Content-Length: " + b"0" * 5000 + b"5\r\n\r\n"
    framer = Framer()
    assert framer.judge(data) is Framing.PARTIAL
    assert framer.judge(data + b"hello") is Framing.WHOLE


def test_http_1_0_gets_no_100_continue() -> None:
    framer = Framer()
    head = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    assert framer.judge(head) is Framing.PARTIAL and not framer.expects_continue


def test_a_head_that_expects_100_continue_says_so() -> None:
    framer = Framer()
    assert framer.judge(HEAD + b"Content-Length: 4\r\nExpect: 100-Continue\r\n\r\n") is (
        Framing.PARTIAL
    )
    assert framer.expects_continue
    plain = Framer()
    assert plain.judge(HEAD + b"Content-Length: 4\r\n\r\n") is Framing.PARTIAL
    assert not plain.expects_continue


# -- agreement with gunicorn's parser -----------------------------------------------------


class _WantsMore(Exception):
    """gunicorn's parser asked for a byte past the ones it was given."""


class _Given:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        if not self.data:
            raise _WantsMore
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def _parser_on(data: bytes) -> str:
    """What gunicorn's parser makes of exactly these bytes: `whole` (a request, its body
    read), `refused`, or `wants more`."""
    parser = RequestParser(Config(), _Given(data), ("127.0.0.1", 1))
    try:
        next(parser).body.read()
    except _WantsMore:
        return "wants more"
    except Exception:
        return "refused"
    return "whole"


LINE = b"POST / HTTP/1.1\r\nHost: x\r\n"
SEEDS = [
    LINE + b"Content-Length: 5\r\n\r\nhello",
    LINE + b"Content-Length: 005\r\n\r\nhello",
    LINE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    LINE + b"Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\n",
    LINE + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    LINE + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 20 + b"5\r\nhello\r\n0\r\n\r\n",
    LINE + b"Transfer-Encoding: chunked\r\n\r\n5;" + b"a" * 1100 + b"\r\nhello\r\n0\r\n\r\n",
    LINE + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
]
PIECES = [b"0", b"5", b"\r\n", b";", b" ", b"\t", b"a", b",", b"chunked", b"\r", b"\n", b"F"]


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """A seed request, mutated in a few places past its request line."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(len(LINE), len(data) - 1))
        piece = draw(st.sampled_from(PIECES))
        match draw(st.sampled_from(["insert", "delete", "replace"])):
            case "insert":
                data[at:at] = piece
            case "delete":
                del data[at : at + draw(st.integers(1, 3))]
            case _:
                data[at : at + 1] = piece
    return bytes(data)


@given(_requests())
@settings(max_examples=150, deadline=None)
def test_the_framer_and_gunicorns_parser_agree_on_where_a_request_ends(data: bytes) -> None:
    """Every prefix the framer calls whole, the parser takes whole or refuses: it never
    waits for more (a thread would wait with it: a slow client's way back in). And every
    prefix the parser takes whole, the framer does not keep waiting on (the client would
    wait for a 408)."""
    framer = Framer()
    for end in range(1, len(data) + 1):
        verdict = framer.judge(data[:end])
        parsed = _parser_on(data[:end])
        if verdict is Framing.WHOLE:
            assert parsed != "wants more", data[:end]
            return
        if verdict is not Framing.PARTIAL:
            return
        assert parsed != "whole", data[:end]
