"""How the web's event loop tells a whole request from part of one (`api.gunicorn_worker`):
only a whole one, or one its parser will refuse, goes to a thread."""

from __future__ import annotations

import pytest

from api.gunicorn_worker import MAX_HEAD_BYTES, Framer, Framing

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
    tiny = CHUNKED + b"1\r\nx\r\n" * 2000
    assert Framer(max_body=4000).judge(tiny) is Framing.BODY_TOO_LARGE


def test_a_head_that_expects_100_continue_says_so() -> None:
    framer = Framer()
    assert framer.judge(HEAD + b"Content-Length: 4\r\nExpect: 100-Continue\r\n\r\n") is (
        Framing.PARTIAL
    )
    assert framer.expects_continue
    plain = Framer()
    assert plain.judge(HEAD + b"Content-Length: 4\r\n\r\n") is Framing.PARTIAL
    assert not plain.expects_continue
