"""The command line of each process type, built from the settings in one place.

The Procfile runs `orchestrator run NAME`, and `orchestrator dev` (what `make run` starts)
runs the same commands, so what a developer runs is what production runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from orchestrator.dispatch.stats import reset_multiprocess_dir
from orchestrator.metrics import MULTIPROC_ENV
from orchestrator.settings import ConfigurationError, DispatchMode, Settings

CELERY_APP = "tasks.worker"
WSGI_APP = "api:create_production_app()"
WEB_WORKER_CLASS = "api.gunicorn_worker.WholeRequestWorker"
PROCESS_NAMES = ("web", "worker", "beat", "flower", "dispatcher")


def _executable(name: str) -> str:
    """Prefer the tool installed beside this interpreter (the virtual environment's)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def command(name: str, settings: Settings) -> list[str]:
    builders = {
        "web": web,
        "worker": worker,
        "beat": beat,
        "flower": flower,
        "dispatcher": dispatcher,
    }
    try:
        return builders[name](settings)
    except KeyError:
        raise ValueError(f"unknown process {name!r}; one of {', '.join(builders)}") from None


def web(settings: Settings) -> list[str]:
    return [
        _executable("gunicorn"),
        f"--bind={settings.host}:{settings.port}",
        f"--workers={settings.web_workers}",
        # gthread, with each request read whole before a thread takes it (slow clients).
        f"--worker-class={WEB_WORKER_CLASS}",
        f"--threads={settings.web_threads}",
        f"--timeout={settings.web_timeout}",
        f"--graceful-timeout={settings.web_timeout}",
        "--access-logfile=-",
        # gunicorn's control socket defaults to one per account in the home folder,
        # shared by every run of that account; nothing here uses it.
        "--no-control-socket",
        WSGI_APP,
    ]


def worker(settings: Settings) -> list[str]:
    return [
        _executable("celery"),
        "-A",
        CELERY_APP,
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={settings.worker_concurrency}",
        f"--queues={','.join(settings.worker_queues)}",
        # A node name per set of queues, so two workers of one host answer apart.
        f"--hostname={settings.worker_queues[0]}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def beat(settings: Settings) -> list[str]:
    return [
        _executable("celery"),
        "-A",
        CELERY_APP,
        "beat",
        f"--loglevel={settings.log_level}",
        # In memory: what fired is in the database's ledger, shared by every beat.
        "--scheduler=orchestrator.beat:Scheduler",
    ]


def flower(settings: Settings) -> list[str]:
    argv = [
        _executable("celery"),
        "-A",
        CELERY_APP,
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
    ]
    if settings.flower_url_prefix:
        argv.append(f"--url_prefix={settings.flower_url_prefix.strip('/')}")
    return argv


def dispatcher(settings: Settings) -> list[str]:
    """The process that fills Celery's broker window from the database (one leads; any
    more are standbys). Push modes fill in the web process and need none."""
    return [sys.executable, "-m", "orchestrator.dispatcher"]


def needed(settings: Settings) -> tuple[str, ...]:
    """The process types this deployment runs (`make run` starts these)."""
    if settings.dispatch_mode is DispatchMode.CELERY:
        return PROCESS_NAMES
    return tuple(name for name in PROCESS_NAMES if name != "dispatcher")


def prepare(name: str, settings: Settings) -> None:
    """Refuse to start a process that would run insecurely; create the folders it needs."""
    if name == "web":
        settings.require_production_secrets()
        # The web process answers for the counters, so its start is where they start.
        reset_multiprocess_dir(metrics_dir(settings))
    # Every process writes its counters there, whichever container or host it runs in.
    metrics_dir(settings).mkdir(parents=True, exist_ok=True)
    if name == "flower" and not settings.is_development and not settings.flower_basic_auth:
        raise ConfigurationError(
            "ORCH_FLOWER_BASIC_AUTH is required outside development (Flower can revoke tasks)"
        )
    if name == "dispatcher" and settings.dispatch_mode is not DispatchMode.CELERY:
        raise ConfigurationError(
            "the dispatcher process is for ORCH_DISPATCH_MODE=celery (push modes fill the "
            "window in the web process)"
        )


def metrics_dir(settings: Settings) -> Path:
    """Where the processes on this host keep their shared counters (prometheus multiprocess)."""
    configured = os.environ.get(MULTIPROC_ENV)
    return Path(configured) if configured else settings.state_dir / "metrics"


def environment(settings: Settings) -> dict[str, str]:
    """The children's environment: shared counters, and Flower's credentials kept out of
    `ps` output."""
    env = dict(os.environ)
    env[MULTIPROC_ENV] = str(metrics_dir(settings).resolve())
    if settings.flower_basic_auth:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    elif settings.is_development:
        env.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    return env
