"""Where each setting comes from, and the one source besides the environment: the
settings of the `make run` that runs in the state folder (`run_record`).

A process that names neither a database (`ORCH_DATABASE_URL`) nor a broker
(`ORCH_REDIS_URL`) means the system running here: the CLI or a script in a second shell,
beside `make run`. It takes that run's settings for whatever its own environment leaves
unset, so `orchestrator send` reaches the embedded servers and loads the same job modules
without anything exported. A process configured on purpose takes nothing from the run:
one that names either, one that says it is in production (`ORCH_ENV`), and settings built
in code (`load_settings(...)` with arguments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_settings import BaseSettings, EnvSettingsSource

from orchestrator import run_record

if TYPE_CHECKING:
    from orchestrator.settings import Settings

ENVIRONMENT = "environment"
DEFAULT = "default"
# Fields naming the system a process works on: one of these set means "not the run's".
_SYSTEM_FIELDS = ("database_url", "redis_url")
_SECRET_FIELDS = frozenset({"service_auth_secret", "gateway_secret", "flower_basic_auth"})
_URL_FIELDS = frozenset({"database_url", "redis_url"})


def variable(field: str) -> str:
    return "PORT" if field == "port" else f"ORCH_{field.upper()}"


def run_folder() -> Path:
    """The state folder a process would share with a run, as its settings will say."""
    return Path(os.environ.get("ORCH_STATE_DIR", ".orchestrator"))


def configured_on_purpose(init_kwargs: Mapping[str, Any]) -> bool:
    if init_kwargs:
        return True
    if os.environ.get("ORCH_ENV", "development").strip().lower() != "development":
        return True
    return any(variable(f) in os.environ for f in _SYSTEM_FIELDS)


class LiveRunSource(EnvSettingsSource):
    """The live run's recorded `ORCH_*` variables, read as the environment's are (the same
    parsing, aliases and `NoDecode` fields), below the real environment."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: Mapping[str, Any]) -> None:
        self._recorded = live_run_settings(init_kwargs)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._recorded.items()}


def live_run_settings(init_kwargs: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The live run's settings this process takes (none if it is configured on purpose)."""
    init_kwargs = init_kwargs or {}
    if configured_on_purpose(init_kwargs):
        return {}
    return run_record.live_settings(run_folder())


def origins(
    settings: Settings, recorded: Mapping[str, str], run_file: Path
) -> list[tuple[str, str, str]]:
    """(variable, value as shown, where it came from) for every setting; secrets masked,
    passwords cut out of URLs."""
    rows = []
    for field in type(settings).model_fields:
        name = variable(field)
        if name in os.environ or (field == "port" and "ORCH_PORT" in os.environ):
            origin = ENVIRONMENT
        elif name in recorded:
            origin = f"make run ({run_file})"
        else:
            origin = DEFAULT
        value = getattr(settings, field)
        if value is None and field == "auth_mode":  # decided by ORCH_ENV: say what it is
            value = f"{settings.effective_auth_mode} (for ORCH_ENV={settings.env})"
        rows.append((name, shown(field, value), origin))
    return rows


def shown(field: str, value: object) -> str:
    if value is None:
        return ""
    if field in _SECRET_FIELDS:
        return "****"
    if field in _URL_FIELDS and isinstance(value, str):
        return _without_password(value)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:****@{host}"))
