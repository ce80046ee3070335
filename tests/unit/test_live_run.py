"""A second shell beside `make run`: the run's record in its state folder, and the settings
the CLI and Python take from it while (and only while) the run holds the folder."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import run_record
from orchestrator.cli import main
from orchestrator.settings import Environment, load_settings

PASSWORD = "s3cret-password-xyz"
RUN_ENVIRONMENT = {
    "ORCH_ENV": "development",
    "ORCH_DATABASE_URL": f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:15432/orchestrator",
    "ORCH_REDIS_URL": "redis://127.0.0.1:16379/0",
    "ORCH_JOB_MODULES": "myapp.jobs",
    "PORT": "18080",
    "HOME": "/root",  # not a setting: not recorded
}

pytestmark = pytest.mark.usefixtures("bare_shell")  # a second shell, nothing exported


def test_a_running_run_records_its_settings_for_this_account_only(tmp_path: Path) -> None:
    state = tmp_path / ".orchestrator"
    with run_record.one_run_per_folder(state):
        run_record.write(state, {"web": 42}, RUN_ENVIRONMENT)
        record = json.loads((state / run_record.RUN_FILE).read_text())
        assert stat.S_IMODE((state / run_record.RUN_FILE).stat().st_mode) == 0o600
        assert record["pids"]["web"] == 42
        assert record["settings"] == {k: v for k, v in RUN_ENVIRONMENT.items() if k != "HOME"}
        assert run_record.live_settings(state)["ORCH_REDIS_URL"] == "redis://127.0.0.1:16379/0"
    # The run is over: its record goes, and a copy left behind (a kill -9) is not believed.
    assert not (state / run_record.RUN_FILE).exists()
    (state / run_record.RUN_FILE).write_text(json.dumps({"settings": RUN_ENVIRONMENT}))
    assert run_record.live_settings(state) == {}


def test_a_second_run_of_the_folder_is_refused(tmp_path: Path) -> None:
    with (
        run_record.one_run_per_folder(tmp_path),
        pytest.raises(run_record.FolderInUse, match=rf"pid {os.getpid()}"),
        run_record.one_run_per_folder(tmp_path),
    ):
        pass


def test_the_cli_and_python_take_the_live_runs_settings() -> None:
    state = Path(".orchestrator")
    with run_record.one_run_per_folder(state):
        run_record.write(state, {}, RUN_ENVIRONMENT)
        settings = load_settings()
        assert settings.database_url == RUN_ENVIRONMENT["ORCH_DATABASE_URL"]
        assert settings.redis_url == RUN_ENVIRONMENT["ORCH_REDIS_URL"]
        assert settings.job_modules == ("myapp.jobs",)  # parsed as the environment's
        assert settings.env is Environment.DEVELOPMENT
        assert settings.port == 18080
    assert load_settings().database_url.startswith("sqlite:")  # the run ended


def test_the_environment_wins_over_the_run_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    state = Path(".orchestrator")
    monkeypatch.setenv("ORCH_JOB_MODULES", "other.jobs")
    with run_record.one_run_per_folder(state):
        run_record.write(state, {}, RUN_ENVIRONMENT)
        settings = load_settings()
        assert settings.job_modules == ("other.jobs",)
        assert settings.redis_url == RUN_ENVIRONMENT["ORCH_REDIS_URL"]


@pytest.mark.parametrize("how", ["its broker", "production", "arguments"])
def test_a_process_configured_on_purpose_ignores_the_run(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    state = Path(".orchestrator")
    own = "redis://127.0.0.1:6390/3"
    with run_record.one_run_per_folder(state):
        run_record.write(state, {}, RUN_ENVIRONMENT)
        if how == "its broker":
            monkeypatch.setenv("ORCH_REDIS_URL", own)
            settings = load_settings()
        elif how == "production":
            monkeypatch.setenv("ORCH_ENV", "production")
            monkeypatch.setenv("ORCH_SERVICE_AUTH_SECRET", "a-real-secret-0123456789")
            settings = load_settings()
        else:  # settings built in code, as tests and tools build them
            settings = load_settings(log_level="WARNING")
        assert settings.database_url.startswith("sqlite:")  # not the run's
        assert settings.job_modules == ()
        assert settings.redis_url == (own if how == "its broker" else "redis://127.0.0.1:6379/0")


def test_orchestrator_config_says_where_each_setting_comes_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = Path(".orchestrator")
    monkeypatch.setenv("ORCH_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ORCH_SERVICE_AUTH_SECRET", "a-real-secret-0123456789")
    with run_record.one_run_per_folder(state):
        run_record.write(state, {}, RUN_ENVIRONMENT)
        result = CliRunner().invoke(main, ["config", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["variable"]: row for row in map(json.loads, result.output.splitlines())}
    assert rows["ORCH_DATABASE_URL"]["from"].startswith("make run (")
    assert rows["ORCH_DATABASE_URL"]["value"] == (
        "postgresql+psycopg://postgres:****@127.0.0.1:15432/orchestrator"
    )
    assert rows["ORCH_LOG_LEVEL"] == {
        "variable": "ORCH_LOG_LEVEL",
        "value": "WARNING",
        "from": "environment",
    }
    assert rows["ORCH_SERVICE_AUTH_SECRET"]["value"] == "****"
    assert rows["ORCH_WEB_WORKERS"]["from"] == "default"
    assert PASSWORD not in result.output and "0123456789" not in result.output


def test_a_killed_runs_record_is_gone_as_soon_as_the_next_run_holds_the_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / run_record.RUN_FILE).write_text(json.dumps({"settings": RUN_ENVIRONMENT}))
    with run_record.one_run_per_folder(tmp_path):
        assert run_record.live_settings(tmp_path) == {}  # not the dead run's


def test_a_second_shells_probe_does_not_pass_for_a_run(tmp_path: Path) -> None:
    (tmp_path / run_record.LOCK_FILE).touch()
    with (tmp_path / run_record.LOCK_FILE).open() as probe:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe, caught mid-look
        threading.Timer(0.2, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
        with run_record.one_run_per_folder(tmp_path):
            pass
