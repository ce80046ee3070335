"""`orchestrator dev`: the whole system on one machine, as `make run` starts it.

An embedded PostgreSQL (unless `ORCH_DATABASE_URL` is set) and an embedded Redis with an
append-only file (unless `ORCH_REDIS_URL` is set), both in the state folder, migrations,
then web, dispatcher, workers, beat and Flower, each under the supervisor: a
crashed process is started again, one Ctrl-C or SIGTERM stops them all, and a `kill -9`
of the whole group leaves nothing behind. One run per state folder at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from orchestrator import migrate, processes, run_record
from orchestrator.dispatch.celery import create_celery_app, restore_unacked
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.errors import OrchestratorError
from orchestrator.registry import BUILTIN_JOB_MODULES
from orchestrator.reloader import SourceWatcher
from orchestrator.settings import Settings, load_settings
from orchestrator.supervisor import Program, Supervisor, SupervisorError

DATABASE = "orchestrator"  # the embedded PostgreSQL's database
CREDENTIALS_FILE = "postgres.password"  # its superuser's password
RELOADED = frozenset({"web", "worker", "beat", "dispatcher"})  # the ones loading job modules


def run_dev() -> int:
    os.environ.setdefault("ORCH_ENV", "development")
    settings = load_settings()
    with run_record.one_run_per_folder(settings.state_dir):
        postgres = None
        if "ORCH_DATABASE_URL" not in os.environ:
            postgres = EmbeddedPostgres(
                settings.state_dir / "postgres",
                settings.embedded_postgres_port,
                durable=True,
                password=superuser_password(settings.state_dir),
            )
            os.environ["ORCH_DATABASE_URL"] = postgres.url(DATABASE)
        redis = None
        if "ORCH_REDIS_URL" not in os.environ:
            redis = EmbeddedRedis(
                settings.embedded_redis_port,
                "127.0.0.1",
                settings.state_dir / "redis",
                persistent=True,
            )
            os.environ["ORCH_REDIS_URL"] = redis.url
        settings = load_settings()
        check_ports_free(settings, redis, postgres)
        programs = []
        if postgres is not None:
            programs.append(postgres_program(postgres, settings))
        else:
            migrate.upgrade(settings.database_url)
        if redis is not None:
            programs.append(redis_program(redis, settings))
        programs += app_programs(settings)
        supervisor = Supervisor(programs)
        watcher = SourceWatcher.for_modules((*BUILTIN_JOB_MODULES, *settings.job_modules))
        supervisor.watch = watcher.changed
        environment = processes.environment(settings)
        supervisor.pids_changed = lambda pids: run_record.write(
            settings.state_dir, pids, environment
        )
        print(where_things_are(settings, watcher.roots), file=sys.stderr, flush=True)
        web = f"http://{settings.host}:{settings.port}"
        threading.Thread(target=say_when_ready, args=(web,), daemon=True).start()
        return supervisor.run()


def where_things_are(settings: Settings, watched: Sequence[Path] = ()) -> str:
    """What a newcomer needs once the run is up: where to look, which header to send,
    a line to try, and that a second shell needs nothing exported."""
    web = f"http://{settings.host}:{settings.port}"
    sample = json.dumps(
        {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "QUICK", "roomIds": ["kitchen"]}}
    )
    return "\n".join(
        [
            "make run: starting; in a few seconds:",
            f"  API        {web}  (try it from the browser: {web}/docs)",
            f"  dashboard  {web}/dashboard",
            f"  Flower     http://{settings.flower_address}:{settings.flower_port}",
            "  tenant     send any id as X-Tenant-ID (development's trusted header), e.g.",
            f"             curl -X POST {web}/v1/jobs -H 'X-Tenant-ID: tnt_123' \\",
            f"               -H 'Content-Type: application/json' -d '{sample}'",
            "  CLI        from another shell in this folder, with nothing exported:",
            "             .venv/bin/orchestrator jobs list --tenant tnt_123",
            "             (`.venv/bin/orchestrator config`: the settings it takes from this run)",
            f"  reload     on a change to {_shown_paths(watched)}",
            "  stop       Ctrl-C",
        ]
    )


def say_when_ready(web: str, *, within: float = 120.0) -> bool:
    """Print one line once the API answers its health check: the moment a newcomer's
    first request works. Silent if it never does (the programs' own lines say why)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{web}/healthz", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    print(f"make run: ready, {web} answers ({web}/healthz)", file=sys.stderr,
                          flush=True)  # fmt: skip
                    return True
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    return False


def _shown_paths(paths: Sequence[Path]) -> str:
    here = Path.cwd()
    shown = [str(p.relative_to(here)) if p.is_relative_to(here) else str(p) for p in paths]
    return ", ".join(shown) or "nothing (no job module found to watch)"


def superuser_password(state_dir: Path) -> str:
    """The embedded PostgreSQL's superuser password, made at the first start and kept
    beside its cluster, readable by this account only (`psql` takes it as PGPASSWORD)."""
    path = state_dir / CREDENTIALS_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def postgres_program(postgres: EmbeddedPostgres, settings: Settings) -> Program:
    """The embedded database, with production's durability. Once it accepts connections its
    database is created if missing and migrated, before anything that uses it starts; a
    failed migration stops the run. Its log goes to a file in its folder (PostgreSQL's own
    collector), as Redis's does: the terminal gets the line that says where."""
    postgres.prepare()

    def on_ready(restarted: bool) -> None:
        try:
            postgres.ensure_database(DATABASE)
            migrate.upgrade(settings.database_url)
        except Exception as exc:
            raise SupervisorError(f"postgres: the database could not be migrated: {exc}") from exc

    return Program(
        "postgres",
        [
            *postgres.command(),
            *("-c", "logging_collector=on", "-c", f"log_directory={postgres.folder}"),
            *("-c", "log_filename=postgresql.log", "-c", "log_rotation_age=0"),
        ],
        ready=postgres.answers_as,
        ready_timeout=120.0,  # a start after a crash replays the WAL first
        on_ready=on_ready,
        # Fast shutdown both ways: sessions are cut, the cluster is left consistent.
        stop_signal=signal.SIGINT,
        death_signal=signal.SIGINT,
        user=postgres.account,
    )


def redis_program(redis: EmbeddedRedis, settings: Settings) -> Program:
    """The embedded broker, with its append-only file: what it held comes back with it.

    At start, before any worker runs, messages that the last run's workers had taken but
    not acknowledged go back to their queues. What the broker lost all the same (a crash
    may cost the file its last second of writes) the dispatcher finds missing and admits
    again within seconds."""
    redis.data_dir.mkdir(parents=True, exist_ok=True)

    def on_ready(restarted: bool) -> None:
        if not restarted and (taken := restore_unacked(create_celery_app(settings))):
            print(f"{taken} message(s) held by the last run's workers are queued again")

    # Its own log file, as when tests start it: the terminal gets only its failures.
    argv = [*redis.command(), "--logfile", str(redis.log_path)]
    return Program("redis", argv, ready=redis.answers_as, on_ready=on_ready)


def app_programs(settings: Settings) -> list[Program]:
    env = processes.environment(settings)
    programs = []
    for name in processes.needed(settings):
        processes.prepare(name, settings)
        # A worker outliving its supervisor finishes nothing it should, and its broker
        # died with the same supervisor: Celery's own shutdown (even a cold one, SIGQUIT)
        # would wait without end to tell the broker it leaves. SIGKILL: its pool follows
        # it, the messages it held are queued again at the next start, and the reaper
        # takes its claims back.
        death = signal.SIGKILL if name == "worker" else signal.SIGTERM
        programs.append(
            Program(
                name,
                processes.command(name, settings),
                env=env,
                death_signal=death,
                # Every process but Flower loads the job modules: a change to one restarts
                # them, and gunicorn starts fresh workers on SIGHUP, serving throughout.
                restarts_on_change=name in RELOADED,
                reload_signal=signal.SIGHUP if name == "web" else None,
            )
        )
    return programs


def check_ports_free(
    settings: Settings, redis: EmbeddedRedis | None, postgres: EmbeddedPostgres | None
) -> None:
    """One line naming the port and the variable that moves it, rather than each
    program's own error (gunicorn's "Connection in use") scrolling past."""
    ports = {"PORT": (settings.host, settings.port)}
    ports["ORCH_FLOWER_PORT"] = (settings.flower_address, settings.flower_port)
    if redis is not None:
        ports["ORCH_EMBEDDED_REDIS_PORT"] = (redis.host, redis.port)
    if postgres is not None:
        ports["ORCH_EMBEDDED_POSTGRES_PORT"] = (postgres.host, postgres.port)
    for variable, (host, port) in ports.items():
        if not _free(host, port):
            raise OrchestratorError(
                f"port {port} on {host} is in use by another program; set {variable} to a free one"
            )


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
