"""Graceful shutdown: SIGTERM lets a worker finish the job it is running (warm shutdown)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.integration.stack import Stack, Worker


def test_sigterm_lets_the_running_job_finish(stack: Stack, tenant: str, tmp_path: Path) -> None:
    # A worker of its own on a queue of its own, so the stack's worker cannot take the job.
    settings = stack.settings.model_copy(update={"worker_queues": ("partition",)})
    worker = Worker(settings, tmp_path / "worker.log")
    worker.start(stack.runtime)
    effect = tmp_path / "effect"
    created = stack.create(
        tenant,
        {"type": "TEST_PARTITION", "input": {"effectFile": str(effect), "firstRunSeconds": 2}},
    )
    stack.wait_for(tenant, created["id"], {"running"})
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGTERM)  # as a container runtime would: main process
    try:
        job = stack.wait_for(tenant, created["id"], timeout=30)
        exit_code = worker.process.wait(30)
    finally:
        worker.stop()
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert exit_code == 0
    assert "Warm shutdown" in worker.log_tail(200)
    time.sleep(0.2)
    assert effect.read_text().count("attempt=") == 1
