"""The real API server the client tests call (HTTP on loopback, in a thread), and a
stand-in for a misbehaving gateway in front of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import api
from orchestrator import apikeys, migrate
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from tests import REAL_SECRET
from tests.servers import free_port

GATEWAY_SECRET = "gw7-Hq2_Zt9Lm4Xc8VbN-3kRpS6yDf1E"


@dataclass(frozen=True)
class Served:
    url: str
    runtime: Runtime

    def api_key(self, tenant: str) -> str:
        return apikeys.create_key(self.runtime.database, tenant, "sdk").key


@contextmanager
def serving(folder: Path, **settings: object) -> Iterator[Served]:
    """The API in production settings (api keys unless `settings` say otherwise), with
    inline dispatch: a job runs within the request that sends it."""
    database_url = f"sqlite:///{folder / 'client.db'}"
    migrate.upgrade(database_url)
    runtime = Runtime.build(
        load_settings(
            env="production",
            database_url=database_url,
            dispatch_mode="inline",
            job_modules="tests.jobtypes",
            service_auth_secret=REAL_SECRET,
            **settings,
        )
    )
    with _threaded(api.create_app(runtime=runtime)) as url:
        yield Served(url, runtime)


@Request.application
def _gateway_error(request: Request) -> Response:
    """A gateway's own answer, not the API's: an HTML 502; after a second under `/slow`."""
    if request.path.startswith("/slow/"):
        time.sleep(1)
    return Response("<html><body>Bad gateway</body></html>", 502, content_type="text/html")


@contextmanager
def gateway_stand_in() -> Iterator[str]:
    with _threaded(_gateway_error) as url:
        yield url


@contextmanager
def _threaded(app: object) -> Iterator[str]:
    httpd = make_server("127.0.0.1", free_port(), app, threaded=True)  # type: ignore[arg-type]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
