"""Configuration: every `ORCH_*` environment variable, read once into one typed object.

docs/configuration.md's table is generated from these fields (`python -m docs.settings_table
--write`), and `tests/unit/test_settings.py` fails when the committed table is stale.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orchestrator.settings_sources import LiveRunSource

DEV_SERVICE_SECRET = "dev-secret"  # noqa: S105 - the documented development default
MIN_SECRET_LENGTH = 16
# A random secret of 16 characters or more has many different characters (of 16 random
# hex digits, fewer than 5 different ones: about 4 in 10 million); one with few ("aaaa...",
# "abab...") was typed, not generated.
MIN_SECRET_DISTINCT = 5


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class AuthMode(StrEnum):
    API_KEY = "api-key"
    TRUSTED_HEADERS = "trusted-headers"


class DispatchMode(StrEnum):
    CELERY = "celery"
    CLOUD_TASKS = "cloud-tasks"
    HTTP = "http"
    INLINE = "inline"


class PublishMode(StrEnum):
    CELERY = "celery"
    DIRECT = "direct"


class ConfigurationError(Exception):
    """Invalid configuration; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore", frozen=True)

    env: Environment = Field(
        Environment.PRODUCTION,
        description="`development` (what `make run` sets: dev secret allowed) or `production`.",
    )
    database_url: str = Field(
        "sqlite:///.orchestrator/orchestrator.db",
        description="SQLAlchemy URL; `postgresql+psycopg://...` in production. Unset under "
        "`make run`: an embedded PostgreSQL is started in the state folder.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker. Unset under `make run`: an embedded Redis is started.",
    )
    embedded_redis_port: int = Field(
        6379, ge=1, le=65535, description="Port of the embedded Redis that `make run` starts."
    )
    embedded_postgres_port: int = Field(
        5432,
        ge=1,
        le=65535,
        description="Port of the embedded PostgreSQL that `make run` starts (on 127.0.0.1).",
    )
    host: str = Field("127.0.0.1", description="Address the web API binds to.")
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "ORCH_PORT"),
        description="Port of the web API (`PORT` is honoured, as on Cloud Run and Heroku).",
    )
    # More processes with fewer threads: Python threads share one interpreter lock, so
    # requests that parse and validate JSON scale with processes (bench/RESULTS.md).
    web_workers: int = Field(4, ge=1, le=64, description="gunicorn worker processes.")
    web_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads per gunicorn worker: requests run at once (a request reaches "
        "one only once it has arrived whole, so slow clients hold none).",
    )
    web_timeout: int = Field(
        30, ge=1, description="Seconds gunicorn lets a request run (and finish on shutdown)."
    )
    web_read_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a whole request, from when the connection "
        "is accepted or its last answer was sent; slower ones get a 408 (one that sent "
        "nothing is closed) without ever holding one of the web's threads.",
    )
    state_dir: Path = Field(
        Path(".orchestrator"),
        description="Folder for local state: the embedded Redis's and PostgreSQL's files, "
        "shared metrics.",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="If set, each Celery worker serves its own /metrics on this port (for "
        "workers on hosts or containers other than the web's).",
    )
    flower_address: str = Field("127.0.0.1", description="Address Flower binds to.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Port of Flower.")
    flower_url_prefix: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_\-/]+$",
        description="Serve Flower under this path (e.g. `flower` for /flower/), behind a proxy.",
    )
    flower_basic_auth: str | None = Field(
        None, description="`user:password` pairs (comma-separated) Flower requires; none in dev."
    )
    dispatch_mode: DispatchMode = Field(
        DispatchMode.CELERY,
        description="How jobs reach workers: `celery`, `cloud-tasks`, `http` or `inline`.",
    )
    cloud_tasks_queue: str | None = Field(
        None,
        pattern=r"^projects/[^/]+/locations/[^/]+/queues/[^/]+$",
        description="Full queue path `projects/P/locations/L/queues/Q` (cloud-tasks mode).",
    )
    cloud_tasks_endpoint: str | None = Field(
        None,
        description="`host:port` of a Cloud Tasks emulator: plain-text gRPC, anonymous "
        "credentials. Unset: the real API with Application Default Credentials.",
    )
    worker_url: str | None = Field(
        None,
        pattern=r"^https?://.+/internal/worker/run$",
        description="Where pushed jobs go: this service's URL ending in `/internal/worker/run` "
        "(cloud-tasks and http modes).",
    )
    oidc_service_account: str | None = Field(
        None,
        description="Service account whose OIDC token Cloud Tasks attaches to each push; "
        "the worker endpoint accepts only tokens for it. Unset: the service secret is sent.",
    )
    oidc_audience: str | None = Field(
        None,
        description="Audience of those OIDC tokens (default: ORCH_WORKER_URL).",
    )
    job_modules: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Extra modules defining job types, comma-separated import paths."
    )
    auth_mode: AuthMode | None = Field(
        None,
        description="How callers prove their tenant: `api-key` (`Authorization: Bearer`) or "
        "`trusted-headers` (`X-Tenant-ID` set by a gateway). Default: `trusted-headers` in "
        "development, `api-key` otherwise.",
    )
    gateway_secret: str | None = Field(
        None,
        description="With trusted headers: the secret the gateway sends in "
        "`X-Gateway-Secret`; required for trusted headers outside development.",
    )
    tenant_max_running: int = Field(
        0,
        ge=0,
        description="Jobs one tenant may have running or sent to the workers at once "
        "(0: no limit); decided when the dispatcher admits its jobs.",
    )
    tier_max_running: Annotated[dict[str, int], NoDecode] = Field(
        {},
        description="Jobs the tenants of a tier may have running or sent at once, all "
        "together: `free=8` (a tier not named: no limit).",
    )
    tier_weights: Annotated[dict[str, int], NoDecode] = Field(
        {"free": 1, "pro": 3},
        description="Each tier's share of the workers when tenants contend: `free=1,pro=3` "
        "gives a pro tenant three jobs for a free tenant's one (a tier not named: 1).",
    )
    tenant_create_rate: float = Field(
        0.0,
        ge=0,
        description="Jobs one tenant may create per second, counted in Redis across web "
        "processes (0: no limit). Over it: 429 with Retry-After.",
    )
    tenant_create_burst: int = Field(
        100, ge=1, description="How many creations a tenant may make at once above the rate."
    )
    max_input_bytes: int = Field(
        65536, ge=1024, description="Largest job input, as JSON, in bytes."
    )
    max_input_depth: int = Field(20, ge=2, description="Deepest nesting in a job input.")
    max_string_length: int = Field(
        10000, ge=16, description="Longest string anywhere in a job input."
    )
    max_list_items: int = Field(
        1000, ge=1, description="Most items in any list (or keys in any object) of an input."
    )
    service_auth_secret: str | None = Field(
        None,
        description="Secret for internal/admin callers (`X-Service-Auth`); "
        "`dev-secret` in development, required in production.",
    )
    worker_concurrency: int = Field(2, ge=1, le=256, description="Celery worker processes.")
    worker_queues: Annotated[tuple[str, ...], NoDecode] = Field(
        ("default", "reports", "maintenance"),
        description="Queues the worker consumes, comma-separated (`maintenance` carries beat's "
        "housekeeping; `reports` the stock GENERATE_REPORT). `orchestrator run worker "
        "--queues ...` overrides it for one worker.",
    )
    visibility_timeout: int = Field(
        7200,
        ge=1,
        description="Seconds Redis waits before redelivering an unacknowledged task; "
        "must exceed every job type's time limit.",
    )
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a running job's lease lasts without a heartbeat; an expired "
        "lease means its worker is gone and the reaper takes the job back.",
    )
    heartbeat_seconds: float = Field(
        1.0, gt=0, description="How often a worker renews its leases and checks for cancels."
    )
    reap_interval: float = Field(5.0, gt=0, description="Seconds between lease reaper runs.")
    dispatch_window: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Messages the broker holds per queue, waiting for a worker (0: sized by "
        "the dispatcher: four per worker process consuming the queue, as Celery reports "
        "it, and more while short jobs drain the window faster than a fill takes).",
    )
    publish: PublishMode = Field(
        PublishMode.CELERY,
        description="How the dispatcher writes Celery messages: `celery` (Celery's own "
        "producer: its signals, routing and tracing apply) or `direct` (built here and "
        "pushed in one round trip, faster; see bench/RESULTS.md).",
    )
    schedule_ahead_seconds: float = Field(
        60.0,
        ge=0,
        description="In push modes (cloud-tasks, http), jobs due this soon are sent with their "
        "time (Cloud Tasks' scheduleTime), so a tick a minute runs them on time.",
    )
    retention_days: Annotated[dict[str, int], NoDecode] = Field(
        {"free": 30, "pro": 365},
        description="Days finished jobs are kept before archival, per tenant tier: "
        "`free=30,pro=365`.",
    )
    default_tier: str = Field("free", description="The tier of a tenant that has none set.")
    archive_schedule: str = Field(
        "0 1 * * *", description="Cron schedule (UTC) of the nightly archival."
    )
    archive_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Jobs archived per transaction."
    )
    cron_catchup_seconds: float = Field(
        86400.0,
        ge=0,
        description="A cron occurrence missed while beat was down fires once when beat "
        "returns, if it is at most this old.",
    )
    system_tenant: str = Field(
        "system", description="Tenant that owns system jobs (archival, cron jobs not per tenant)."
    )
    log_level: str = Field("INFO", description="Log level of every process.")
    log_format: str = Field("json", description="`json` lines or `text`.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the settings of the `make run` running in
        the state folder (`settings_sources`), then the defaults."""
        assert isinstance(init_settings, InitSettingsSource)
        live = LiveRunSource(settings_cls, init_settings.init_kwargs)
        return (init_settings, env_settings, live, dotenv_settings, file_secret_settings)

    @field_validator("job_modules", "worker_queues", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("retention_days", "tier_max_running", "tier_weights", mode="before")
    @classmethod
    def _parse_tier_numbers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        tiers: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            tier, sep, number = part.partition("=")
            if not sep or not number.strip().isdigit():
                raise ValueError(f"expected tier=number pairs, got {part!r}")
            tiers[tier.strip()] = int(number)
        return tiers

    @field_validator("tier_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, int]) -> dict[str, int]:
        if any(weight < 1 for weight in value.values()):
            raise ValueError("weights are whole numbers from 1")
        return value

    @model_validator(mode="after")
    def _push_targets(self) -> Settings:
        mode = self.dispatch_mode
        if mode is DispatchMode.CLOUD_TASKS and not self.cloud_tasks_queue:
            raise ValueError(
                "ORCH_CLOUD_TASKS_QUEUE is required with ORCH_DISPATCH_MODE=cloud-tasks"
            )
        if mode in (DispatchMode.CLOUD_TASKS, DispatchMode.HTTP) and not self.worker_url:
            raise ValueError(f"ORCH_WORKER_URL is required with ORCH_DISPATCH_MODE={mode}")
        return self

    @property
    def expected_oidc_audience(self) -> str | None:
        return self.oidc_audience or self.worker_url

    @model_validator(mode="after")
    def _default_tier_known(self) -> Settings:
        if self.default_tier not in self.retention_days:
            raise ValueError(
                f"ORCH_DEFAULT_TIER {self.default_tier!r} has no ORCH_RETENTION_DAYS entry"
            )
        return self

    @field_validator("archive_schedule")
    @classmethod
    def _cron_expression(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression")
        return value

    @field_validator("worker_queues")
    @classmethod
    def _some_queue(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one queue")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError("must be `json` or `text`")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @model_validator(mode="after")
    def _secret_for_environment(self) -> Settings:
        if self.service_auth_secret is None and self.env is Environment.DEVELOPMENT:
            object.__setattr__(self, "service_auth_secret", DEV_SERVICE_SECRET)
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("ORCH_HEARTBEAT_SECONDS must be shorter than ORCH_LEASE_SECONDS")
        return self

    @property
    def effective_auth_mode(self) -> AuthMode:
        if self.auth_mode is not None:
            return self.auth_mode
        return AuthMode.TRUSTED_HEADERS if self.is_development else AuthMode.API_KEY

    @property
    def is_development(self) -> bool:
        return self.env is Environment.DEVELOPMENT

    def sqlite_path(self) -> Path | None:
        """The database file when the URL names one, so callers can create its folder."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix) or ":memory:" in self.database_url:
            return None
        return Path(self.database_url.removeprefix(prefix))

    def require_production_secrets(self) -> None:
        """Refuse to serve outside development without a real service secret."""
        if self.is_development:
            return
        secret = self.service_auth_secret
        if not secret:
            raise ConfigurationError(
                "ORCH_SERVICE_AUTH_SECRET is required outside development (ORCH_ENV=production)"
            )
        _require_real("ORCH_SERVICE_AUTH_SECRET", secret)
        if self.effective_auth_mode is AuthMode.TRUSTED_HEADERS:
            if not self.gateway_secret:
                raise ConfigurationError(
                    "ORCH_AUTH_MODE=trusted-headers needs ORCH_GATEWAY_SECRET outside "
                    "development (anyone could claim any tenant); or use ORCH_AUTH_MODE=api-key"
                )
            _require_real("ORCH_GATEWAY_SECRET", self.gateway_secret)
        if self.worker_url is not None and not _private_url(self.worker_url):
            raise ConfigurationError(
                "ORCH_WORKER_URL must be https:// outside development (or on this machine): "
                "pushes carry the service secret"
            )


def _private_url(url: str) -> bool:
    """Encrypted, or never leaving the machine."""
    parsed = urlsplit(url)
    return parsed.scheme == "https" or parsed.hostname in {"127.0.0.1", "localhost", "::1"}


def _require_real(name: str, secret: str) -> None:
    if (
        secret == DEV_SERVICE_SECRET
        or len(secret) < MIN_SECRET_LENGTH
        or len(set(secret)) < MIN_SECRET_DISTINCT
        or any(char.isspace() for char in secret)
    ):
        raise ConfigurationError(
            f"{name} must be a real secret outside development: at least {MIN_SECRET_LENGTH} "
            f"characters, {MIN_SECRET_DISTINCT} of them different, no spaces (make one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


def load_settings(**overrides: object) -> Settings:
    """Read the environment; invalid values raise one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a rule across fields: its message names the variables
        return f"invalid configuration: {message}"
    field = str(first["loc"][0])
    variable = "PORT" if field.lower() == "port" else f"ORCH_{field.upper()}"
    return f"invalid configuration: {variable}: {message}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
