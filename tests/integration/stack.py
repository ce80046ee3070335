"""A running system for integration tests: real web server, real Celery worker processes.

The web app serves on a loopback port from a thread of the test process; the worker is the
same `celery worker` command the Procfile runs, as a subprocess with its own environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from werkzeug.serving import BaseWSGIServer, make_server

from api import create_app
from orchestrator import processes
from orchestrator.dispatcher import LEASE_NAME
from orchestrator.leader import current_holder
from orchestrator.models import utcnow
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


# Short leases and frequent reaps, so recovery tests take seconds, not minutes.
FAST_TIMING = {
    "lease_seconds": 3.0,
    "heartbeat_seconds": 0.5,
    "reap_interval": 1.0,
}


def stack_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "database_url": database_url,
        "redis_url": redis_url,
        "job_modules": "tests.jobtypes",
        "log_format": "text",
        "worker_concurrency": 2,
        "worker_queues": "default,reports,maintenance",
        **FAST_TIMING,
        **overrides,
    }
    return load_settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as `ORCH_*` variables, for the subprocesses (plus Flower's own
    variables, as the launcher sets them)."""
    flower = {k: v for k, v in processes.environment(settings).items() if k.startswith("FLOWER_")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")} | flower
    for name, value in settings.model_dump(exclude={"port"}).items():
        if value is None:
            continue
        if isinstance(value, dict):
            text = ",".join(f"{key}={item}" for key, item in value.items())
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[f"ORCH_{name.upper()}"] = text
    return env


@dataclass
class Worker:
    """A process the Procfile names (`worker` by default) as a subprocess in its own
    process group, so teardown reaps its children too."""

    settings: Settings
    log_path: Path
    kind: str = "worker"
    prefix: list[str] = field(default_factory=list)  # e.g. `ip netns exec NS`
    nodename: str = field(default_factory=lambda: f"w{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        argv = processes.command(self.kind, self.settings)
        if self.kind == "worker":
            argv.append(f"--hostname={self.nodename}")
        return [*self.prefix, *argv]

    def start(self, runtime: Runtime, timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.kind == "worker":
            self._wait_ready(runtime, timeout)
        elif self.kind == "dispatcher":
            self._wait_leading(runtime, timeout)

    def _wait_ready(self, runtime: Runtime, timeout: float) -> None:
        app = runtime.dispatcher.app  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_tail()}")
            # A connection of its own: a test that restarted Redis leaves pooled ones stale.
            with app.connection_for_write() as connection:
                if app.control.ping(
                    destination=[self.nodename], timeout=0.5, connection=connection
                ):
                    return
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def _wait_leading(self, runtime: Runtime, timeout: float) -> None:
        """Until a dispatcher holds the lease (this one, or one already there)."""
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dispatcher exited early:\n{self.log_tail()}")
            if current_holder(runtime.database, LEASE_NAME, utcnow()) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"no dispatcher leads after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: a worker host that vanished."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def children(self) -> list[int]:
        """Pids of the prefork pool's child processes (the ones running handlers)."""
        assert self.process is not None
        return [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    settings: Settings
    runtime: Runtime
    worker: Worker
    beat: Worker
    dispatcher: Worker
    server: BaseWSGIServer | None = None
    base_url: str = ""
    http: requests.Session = field(default_factory=requests.Session)

    def start(self) -> Stack:
        app = create_app(runtime=self.runtime)
        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.worker.start(self.runtime)
        self.beat.start(self.runtime)
        self.dispatcher.start(self.runtime)
        return self

    def stop(self) -> None:
        self.dispatcher.stop()
        self.beat.stop()
        self.worker.stop()
        if self.server is not None:
            self.server.shutdown()
        self.runtime.database.dispose()

    @classmethod
    def build(cls, settings: Settings, folder: Path) -> Stack:
        beat_settings = settings.model_copy(update={"state_dir": folder})
        return cls(
            settings,
            Runtime.build(settings),
            Worker(settings, folder / "worker.log"),
            Worker(beat_settings, folder / "beat.log", kind="beat"),
            Worker(settings, folder / "dispatcher.log", kind="dispatcher"),
        )

    def post(self, tenant: str, path: str, body: Any = None, **headers: str) -> requests.Response:
        return self.http.post(
            f"{self.base_url}{path}",
            json=body,
            headers={"X-Tenant-ID": tenant, **headers},
            timeout=30,
        )

    def create(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(
            f"{self.base_url}/v1/jobs", json=body, headers={"X-Tenant-ID": tenant}, timeout=10
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def get(self, tenant: str, path: str) -> requests.Response:
        return self.http.get(f"{self.base_url}{path}", headers={"X-Tenant-ID": tenant}, timeout=10)

    def wait_for(
        self, tenant: str, job_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 30
    ) -> dict[str, Any]:
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.get(tenant, f"/v1/jobs/{job_id}").json()
            if job.get("status") in wanted:
                return job
            time.sleep(0.05)
        raise AssertionError(
            f"job {job_id} still {job.get('status')} after {timeout}s\n{self.diagnostics()}"
        )

    def diagnostics(self) -> str:
        return f"{self.worker.log_tail()}\n--- dispatcher:\n{self.dispatcher.log_tail(20)}"

    def events(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.get(tenant, f"/v1/jobs/{job_id}/events").json()[
            "events"
        ]
        return events


@dataclass
class PushStack(Stack):
    """The web process alone, as on Cloud Run: jobs come back to it over HTTP (Cloud Tasks
    or the http dispatcher) or run inline. A thread stands in for Cloud Scheduler, calling
    the admin housekeeping endpoints as a deployment would."""

    port: int = 0
    extra_logs: list[Path] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stack:
        app = create_app(runtime=self.runtime)
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._housekeeping, daemon=True).start()
        return self

    def _housekeeping(self) -> None:
        secret = {"X-Service-Auth": self.settings.service_auth_secret or ""}
        while not self._stop.wait(0.3):  # the dispatcher's round, and the reaper
            for path in ("/admin/maintenance/sweep", "/admin/maintenance/reap"):
                with contextlib.suppress(requests.RequestException):  # the server is stopping
                    requests.post(f"{self.base_url}{path}", headers=secret, timeout=30)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
        self.runtime.database.dispose()

    def diagnostics(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-4000:] for path in self.extra_logs if path.exists()
        )
