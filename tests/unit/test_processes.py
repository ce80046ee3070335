"""Process command lines and start-up checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator import processes
from orchestrator.settings import ConfigurationError, load_settings
from tests import REAL_SECRET


def test_commands_come_from_the_settings() -> None:
    settings = load_settings(
        env="development",
        port=9001,
        web_workers=3,
        worker_concurrency=4,
        worker_queues="a,b",
        flower_port=5600,
    )
    assert "--bind=127.0.0.1:9001" in processes.command("web", settings)
    assert "--workers=3" in processes.command("web", settings)
    worker = processes.command("worker", settings)
    assert "--concurrency=4" in worker and "--queues=a,b" in worker
    assert "--port=5600" in processes.command("flower", settings)
    with pytest.raises(ValueError, match="unknown process"):
        processes.command("scheduler", settings)


def test_production_flower_needs_basic_auth() -> None:
    settings = load_settings(env="production", service_auth_secret=REAL_SECRET)
    with pytest.raises(ConfigurationError, match="ORCH_FLOWER_BASIC_AUTH"):
        processes.prepare("flower", settings)
    processes.prepare("flower", settings.model_copy(update={"flower_basic_auth": "u:p"}))


def test_production_web_needs_a_secret() -> None:
    with pytest.raises(ConfigurationError, match="ORCH_SERVICE_AUTH_SECRET"):
        processes.prepare("web", load_settings(env="production"))


def test_flower_credentials_stay_out_of_the_command_line() -> None:
    settings = load_settings(env="production", flower_basic_auth="ops:hunter2hunter2")
    assert "hunter2" not in " ".join(processes.command("flower", settings))
    assert processes.environment(settings)["FLOWER_BASIC_AUTH"] == "ops:hunter2hunter2"


def test_the_webs_start_keeps_the_counters_of_processes_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    settings = load_settings(env="development", state_dir=tmp_path)
    processes.prepare("web", settings)  # an empty folder: counting starts now
    since = (folder / "started").read_text()
    running = folder / f"counter_{os.getpid()}.db"
    gone = folder / f"counter_{_ended_pid()}.db"
    running.write_bytes(b"x")
    gone.write_bytes(b"x")

    processes.prepare("web", settings)
    assert running.exists() and not gone.exists()
    assert (folder / "started").read_text() == since  # still counting since then

    running.unlink()
    processes.prepare("web", settings)
    assert (folder / "started").read_text() != since  # nobody left: counting afresh


def _ended_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
