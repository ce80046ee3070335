"""`make run` says when it is ready: one line once the API answers its health check."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from orchestrator.dev import say_when_ready


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_ready_line_comes_once_the_health_check_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    web = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert say_when_ready(web, within=10)
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == f"make run: ready, {web} answers ({web}/healthz)\n"


def test_nothing_is_said_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    assert not say_when_ready(f"http://127.0.0.1:{port}", within=1)
    assert capsys.readouterr().err == ""
