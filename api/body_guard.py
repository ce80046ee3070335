"""A request body the server cannot read is the client's fault: a 400 problem, not a 500.

Gunicorn decodes `Transfer-Encoding: chunked` while the app reads the body, so a bad chunk
size (`zz\\r\\n`), a missing chunk terminator or a connection lost mid-body surfaces as an
exception of gunicorn's (or an `OSError`) inside whatever view reads it. This middleware
wraps the WSGI input stream so that any such failure becomes a `BadRequest`, which the
app's error handler renders as problem+json like every other 400.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.exceptions import BadRequest, HTTPException

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class UnreadableBody(BadRequest):
    description = "The request body could not be read (broken chunked framing or a short body)."


class _GuardedInput:
    """`wsgi.input`, with read failures turned into `UnreadableBody`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guard(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except HTTPException:
            raise
        except Exception as exc:  # gunicorn's ParseException family, OSError, ValueError
            raise UnreadableBody() from exc

    def read(self, *args: Any) -> bytes:
        data: bytes = self._guard(self._stream.read, *args)
        return data

    def readline(self, *args: Any) -> bytes:
        line: bytes = self._guard(self._stream.readline, *args)
        return line

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._guard(self._stream.readlines, *args)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def guard_request_bodies(app: WsgiApp) -> WsgiApp:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if "wsgi.input" in environ:
            environ["wsgi.input"] = _GuardedInput(environ["wsgi.input"])
        return app(environ, start_response)

    return guarded
