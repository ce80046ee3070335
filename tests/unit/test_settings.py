"""Settings from the environment: defaults, parsing, one-line errors, production secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from docs import settings_table
from orchestrator.registry import DEFAULT_QUEUE
from orchestrator.settings import (
    ConfigurationError,
    DispatchMode,
    Environment,
    Settings,
    load_settings,
)
from tests import REAL_SECRET

CONFIGURATION_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

pytestmark = pytest.mark.usefixtures("bare_shell")  # settings from nothing but each test's


def _one_line_error_naming(variable: str) -> Any:
    return pytest.raises(ConfigurationError, match=rf"^[^\n]*\b{variable}\b[^\n]*$")


def test_defaults_run_on_one_machine() -> None:
    settings = load_settings()
    assert settings.env is Environment.PRODUCTION
    assert settings.database_url.startswith("sqlite:///")
    assert settings.dispatch_mode is DispatchMode.CELERY
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.job_modules == ()
    # The worker consumes the queue job types go to unless they name another.
    assert DEFAULT_QUEUE in settings.worker_queues
    assert settings.worker_concurrency >= 1
    assert settings.service_auth_secret is None
    assert settings.log_level == "INFO"
    assert settings.log_format == "json"
    assert not settings.is_development


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_ENV", "development")
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql+psycopg://u:p@db/orch")
    monkeypatch.setenv("ORCH_DISPATCH_MODE", "inline")
    monkeypatch.setenv("ORCH_WORKER_CONCURRENCY", "8")
    monkeypatch.setenv("ORCH_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.is_development
    assert settings.database_url == "postgresql+psycopg://u:p@db/orch"
    assert settings.dispatch_mode is DispatchMode.INLINE
    assert settings.worker_concurrency == 8
    assert settings.log_level == "DEBUG"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_WORKER_CONCURRENCY", "8")
    assert load_settings(worker_concurrency=3).worker_concurrency == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("myapp.jobs", ("myapp.jobs",)),
        ("myapp.jobs,other.jobs", ("myapp.jobs", "other.jobs")),
        (" myapp.jobs , other.jobs ,", ("myapp.jobs", "other.jobs")),
        ("", ()),
    ],
)
def test_job_modules_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("ORCH_JOB_MODULES", raw)
    assert load_settings().job_modules == expected


def test_job_modules_override_is_comma_separated_too() -> None:
    assert load_settings(job_modules="a.b, c.d").job_modules == ("a.b", "c.d")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("default", ("default",)),
        ("high,default,low", ("high", "default", "low")),
        ("high , low", ("high", "low")),
    ],
)
def test_worker_queues_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("ORCH_WORKER_QUEUES", raw)
    assert load_settings().worker_queues == expected


@pytest.mark.parametrize("raw", ["", " , "])
def test_worker_queues_may_not_be_empty(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("ORCH_WORKER_QUEUES", raw)
    with _one_line_error_naming("ORCH_WORKER_QUEUES"):
        load_settings()


def test_port_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    assert load_settings().port == 9123


def test_orch_port_also_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_PORT", "9124")
    assert load_settings().port == 9124


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ORCH_WORKER_CONCURRENCY", "0"),
        ("ORCH_WORKER_CONCURRENCY", "lots"),
        ("ORCH_WORKER_CONCURRENCY", "1000"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("PORT", "http"),
        ("ORCH_ENV", "staging"),
        ("ORCH_DISPATCH_MODE", "carrier-pigeon"),
        ("ORCH_DATABASE_URL", "mysql://db/orch"),
        ("ORCH_LOG_LEVEL", "loud"),
        ("ORCH_LOG_FORMAT", "xml"),
        ("ORCH_VISIBILITY_TIMEOUT", "0"),
        ("ORCH_WEB_WORKERS", "0"),
        ("ORCH_FLOWER_PORT", "-1"),
    ],
)
def test_invalid_values_raise_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with _one_line_error_naming(variable):
        load_settings()


def test_only_the_first_of_several_errors_is_reported_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_WORKER_CONCURRENCY", "0")
    monkeypatch.setenv("ORCH_LOG_LEVEL", "loud")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_tier_numbers_are_tier_equals_number_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_TIER_WEIGHTS", "free=1, pro=3,enterprise=10")
    monkeypatch.setenv("ORCH_TIER_MAX_RUNNING", "free=4")
    settings = load_settings()
    assert settings.tier_weights == {"free": 1, "pro": 3, "enterprise": 10}
    assert settings.tier_max_running == {"free": 4}
    for bad in ("free", "free=x", "pro=0"):
        monkeypatch.setenv("ORCH_TIER_WEIGHTS", bad)
        with _one_line_error_naming("ORCH_TIER_WEIGHTS"):
            load_settings()


def test_heartbeat_must_be_shorter_than_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LEASE_SECONDS", "5")
    monkeypatch.setenv("ORCH_HEARTBEAT_SECONDS", "5")
    with _one_line_error_naming("ORCH_HEARTBEAT_SECONDS") as info:
        load_settings()
    assert "ORCH_LEASE_SECONDS" in str(info.value)


def test_development_gets_the_dev_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_ENV", "development")
    settings = load_settings()
    assert settings.service_auth_secret == "dev-secret"
    settings.require_production_secrets()


def test_development_keeps_a_secret_it_is_given() -> None:
    settings = load_settings(env="development", service_auth_secret="x" * 32)
    assert settings.service_auth_secret == "x" * 32


@pytest.mark.parametrize(
    "secret",
    [None, "", "dev-secret", "short", "x" * 15, "x" * 40, " " * 40, "ab" * 20, REAL_SECRET + " x"],
)
def test_production_refuses_a_missing_or_weak_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    if secret is not None:
        monkeypatch.setenv("ORCH_SERVICE_AUTH_SECRET", secret)
    settings = load_settings()
    assert settings.env is Environment.PRODUCTION
    with _one_line_error_naming("ORCH_SERVICE_AUTH_SECRET"):
        settings.require_production_secrets()


def test_production_accepts_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SERVICE_AUTH_SECRET", REAL_SECRET)
    settings = load_settings()
    settings.require_production_secrets()
    assert settings.service_auth_secret == REAL_SECRET


@pytest.mark.parametrize("gateway", ["x", "dev-secret", "g" * 15, "g" * 40, "\t" * 20])
def test_production_refuses_a_weak_gateway_secret(gateway: str) -> None:
    settings = load_settings(
        service_auth_secret=REAL_SECRET, auth_mode="trusted-headers", gateway_secret=gateway
    )
    with _one_line_error_naming("ORCH_GATEWAY_SECRET"):
        settings.require_production_secrets()


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://orchestrator.example.com/internal/worker/run", True),
        ("https://orchestrator.example.com/internal/worker/run", False),
        ("http://127.0.0.1:8080/internal/worker/run", False),  # never leaves the machine
    ],
)
def test_production_pushes_the_secret_only_over_https(url: str, refused: bool) -> None:
    settings = load_settings(service_auth_secret=REAL_SECRET, worker_url=url)
    if refused:
        with _one_line_error_naming("ORCH_WORKER_URL"):
            settings.require_production_secrets()
    else:
        settings.require_production_secrets()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/orch.db", Path("data/orch.db")),
        ("sqlite:////abs/orch.db", Path("/abs/orch.db")),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u@h/db", None),
    ],
)
def test_sqlite_path(url: str, expected: Path | None) -> None:
    assert load_settings(database_url=url).sqlite_path() == expected


def _variable(field: str) -> str:
    return "PORT" if field == "port" else f"ORCH_{field.upper()}"


def test_configuration_table_lists_exactly_the_settings() -> None:
    """One docs/configuration.md row per variable: `| `ORCH_NAME` | default | meaning |`."""
    page = CONFIGURATION_PAGE.read_text()
    rows = re.findall(r"^\| `((?:ORCH_[A-Z0-9_]+)|PORT)`", page, re.MULTILINE)
    expected = {_variable(name) for name in Settings.model_fields}
    assert sorted(set(rows)) == sorted(expected)
    assert len(rows) == len(set(rows)), "a variable is listed twice"


def test_the_committed_configuration_table_is_the_generated_one() -> None:
    """The table is generated from the settings' fields; a stale one fails here."""
    page = CONFIGURATION_PAGE.read_text()
    assert settings_table.rendered(page) == page, (
        "docs/configuration.md is stale: run `python -m docs.settings_table --write`"
    )
