"""A real Cloud Tasks emulator (gRPC API, HTTP pushes) on loopback, for tests.

It runs from its own virtual environment (`make emulator`; its pins clash with the current
client's), found through `ORCH_TEST_EMULATOR_PYTHON` or `.venv-emulator`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from google.api_core import exceptions
from google.cloud import tasks_v2

from orchestrator.dispatch.cloud_tasks import make_client
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "projects/orchestrator-test/locations/local/queues/jobs"


def emulator_python() -> Path:
    configured = os.environ.get("ORCH_TEST_EMULATOR_PYTHON")
    path = Path(configured) if configured else ROOT / ".venv-emulator" / "bin" / "python"
    if not path.exists():
        raise RuntimeError(f"no Cloud Tasks emulator at {path}: run `make emulator` first")
    return path


class CloudTasksEmulator:
    def __init__(self, log_path: Path, queue: str = QUEUE) -> None:
        self.port = free_port()
        self.queue = queue
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        command = [
            str(emulator_python()),
            str(ROOT / "tests" / "emulator_loopback.py"),
            "start",
            "--port",
            str(self.port),
            "--default-queue",
            self.queue,
            "--max-retries",
            "100",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = make_client(self.endpoint)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"emulator exited:\n{self.log_tail()}")
            try:
                client.get_queue(name=self.queue, timeout=1)
                return self
            except (exceptions.GoogleAPICallError, exceptions.RetryError):
                time.sleep(0.1)
        raise RuntimeError(f"emulator not ready after {timeout}s:\n{self.log_tail()}")

    def tasks(self) -> list[tasks_v2.Task]:
        return list(make_client(self.endpoint).list_tasks(parent=self.queue))

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
