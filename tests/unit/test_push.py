"""What a plain HTTP push carries, read by a real HTTP server on loopback."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from orchestrator.dispatch import Delivery
from orchestrator.dispatch.http import HttpDispatcher
from orchestrator.dispatch.push import SERVICE_AUTH_HEADER, PushTarget
from orchestrator.dispatch.stats import DispatchStats

SECRET = "push-secret-" + "x" * 20


@pytest.fixture
def received() -> Iterator[tuple[str, queue.Queue[dict[str, str]]]]:
    """A worker URL, and the headers of each request it gets."""
    heard: queue.Queue[dict[str, str]] = queue.Queue()

    class Worker(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            heard.put(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/internal/worker/run", heard
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("account", [None, "scheduler@project.iam.gserviceaccount.com"])
def test_an_http_push_always_carries_the_service_secret(
    received: tuple[str, queue.Queue[dict[str, str]]], account: str | None
) -> None:
    """It has no OIDC token to carry instead, whatever account Cloud Scheduler's calls use."""
    url, heard = received
    target = PushTarget(url=url, secret=SECRET, oidc_service_account=account)
    HttpDispatcher(target, DispatchStats(), timeout=5).send([Delivery("job_1", "T", "default", 1)])
    headers = heard.get(timeout=5)
    assert headers[SERVICE_AUTH_HEADER] == SECRET
