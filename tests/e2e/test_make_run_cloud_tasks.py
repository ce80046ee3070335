"""`make run` switched to Cloud Tasks by configuration alone: the web process creates tasks
on a real emulator, which pushes them back to `/internal/worker/run`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.cloudtasks import CloudTasksEmulator
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_in_cloud_tasks_mode_runs_the_pipeline(tmp_path: Path) -> None:
    port = free_port()
    with CloudTasksEmulator(tmp_path / "emulator.log") as emulator:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(
            PORT=str(port),
            ORCH_FLOWER_PORT=str(free_port()),
            ORCH_EMBEDDED_REDIS_PORT=str(free_port()),
            ORCH_STATE_DIR=str(tmp_path),
            ORCH_DATABASE_URL=f"sqlite:///{tmp_path / 'o.db'}",
            ORCH_DISPATCH_MODE="cloud-tasks",
            ORCH_CLOUD_TASKS_QUEUE=emulator.queue,
            ORCH_CLOUD_TASKS_ENDPOINT=emulator.endpoint,
            ORCH_WORKER_URL=f"http://127.0.0.1:{port}/internal/worker/run",
        )
        log_path = tmp_path / "make-run.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["make", "--no-print-directory", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            report = _run_pipeline(f"http://127.0.0.1:{port}", process, log_path)
            stats = requests.get(
                f"http://127.0.0.1:{port}/internal/stats",
                timeout=5,
                headers={"X-Service-Auth": "dev-secret"},
            ).json()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        pushed = emulator.log_tail(400)
    assert report["status"] == "succeeded", report
    assert stats["dispatches"]["cloud-tasks"]["succeeded"] >= 1
    assert "Requesting POST" in pushed and "/internal/worker/run" in pushed


def _run_pipeline(base: str, process: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    headers = {"X-Tenant-ID": "tnt_123"}
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"make run did not come up:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.3)
    body = {
        "type": "ANALYZE_INSPECTION",
        "inspectionId": "insp_999",
        "input": {"analysisMode": "DEEP", "roomIds": ["room_1"]},
    }
    created = requests.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=10).json()
    report_id = created["pipeline"]["steps"][1]["id"]
    while time.monotonic() < deadline:
        report: dict[str, object] = requests.get(
            f"{base}/v1/jobs/{report_id}", headers=headers, timeout=10
        ).json()
        if report["status"] in ("succeeded", "failed", "cancelled"):
            return report
        time.sleep(0.2)
    pytest.fail(f"pipeline did not finish:\n{log.read_text()[-3000:]}")
