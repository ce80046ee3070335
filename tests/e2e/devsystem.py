"""`make run` as a subprocess, the way a user runs it, on ports and a state folder of its own.

It runs in a session of its own, so a test can signal `make` alone (as a terminal's SIGTERM
would) or its whole process group (a `kill -9` of everything the user started).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 90.0


@dataclass
class DevSystem:
    state: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    runs: int = field(default=0)

    @classmethod
    def prepare(cls, state: Path, *, sqlite: bool = True, **extra_env: str) -> DevSystem:
        """`make run`'s environment on free ports; on a SQLite file in `state` (which tests
        read directly, also while the system is down), or with `sqlite=False` on the
        embedded PostgreSQL a newcomer gets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(
            PORT=str(free_port()),
            ORCH_FLOWER_PORT=str(free_port()),
            ORCH_EMBEDDED_REDIS_PORT=str(free_port()),
            ORCH_EMBEDDED_POSTGRES_PORT=str(free_port()),
            ORCH_STATE_DIR=str(state),
            **extra_env,
        )
        if sqlite:
            env["ORCH_DATABASE_URL"] = f"sqlite:///{state / 'orchestrator.db'}"
        return cls(state, env, state / "make-run.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ORCH_FLOWER_PORT']}"

    def start(self, *, wait: bool = True) -> DevSystem:
        self.runs += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n==== make run #{self.runs}\n".encode())
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_for(f"{self.base_url}/healthz")
        return self

    def wait_for(self, url: str, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"make run exited early:\n{self.log_tail()}")
            try:
                if requests.get(url, timeout=1).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} not up after {timeout}s:\n{self.log_tail()}")

    def pids(self) -> dict[str, int]:
        """The supervisor's and its programs' pids, as the supervisor recorded them."""
        recorded: dict[str, Any] = json.loads((self.state / "run.json").read_text())
        return dict(recorded["pids"])

    def stop(self, sig: signal.Signals = signal.SIGTERM, *, group: bool = False) -> int | None:
        """Signal `make` (or, with `group`, its whole process group); its exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)

    def headers(self, tenant: str) -> dict[str, str]:
        return {"X-Tenant-ID": tenant}

    def post(self, tenant: str, path: str, body: Any = None) -> requests.Response:
        return requests.post(
            f"{self.base_url}{path}", json=body, headers=self.headers(tenant), timeout=30
        )

    def get(self, tenant: str, path: str) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", headers=self.headers(tenant), timeout=30)

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return "<no log>"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by a parent that is gone too) is as good as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
