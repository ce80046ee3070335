"""`orchestrator dev`: the whole system on one machine, as `make run` starts it.

An embedded Redis with an append-only file in the state folder (unless `ORCH_REDIS_URL`
is set), migrations, then web, worker, beat and Flower, each under the supervisor: a
crashed process is started again, one Ctrl-C or SIGTERM stops them all, and a `kill -9`
of the whole group leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from orchestrator import migrate, processes
from orchestrator.dispatch.celery import create_celery_app, forget_broker_epoch, restore_unacked
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings, load_settings
from orchestrator.supervisor import Program, Supervisor

RUN_FILE = "run.json"  # the supervisor's pid and its programs', for the next start to read


def run_dev() -> int:
    os.environ.setdefault("ORCH_ENV", "development")
    settings = load_settings()
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
    check_ports_free(settings, redis)
    migrate.upgrade(settings.database_url)
    programs = [redis_program(redis, settings)] if redis is not None else []
    programs += app_programs(settings)
    supervisor = Supervisor(programs)
    supervisor.pidfile_hook = lambda pids: _write_run_file(settings.state_dir, pids)
    print(
        f"web  http://{settings.host}:{settings.port}   "
        f"flower  http://{settings.flower_address}:{settings.flower_port}",
        file=sys.stderr,
    )
    return supervisor.run()


def redis_program(redis: EmbeddedRedis, settings: Settings) -> Program:
    """The embedded broker, with its append-only file: what it held comes back with it.

    At start, before any worker runs, messages that the last run's workers had taken but
    not acknowledged go back to their queues. After a crash (or a start that follows one)
    its last second of writes may be gone: its epoch is forgotten, so beat's next sweep
    sends again every job it held (a duplicate is skipped by the claim; a lost one would
    wait for a timer)."""
    redis.data_dir.mkdir(parents=True, exist_ok=True)
    clean_before = redis.stopped_cleanly()

    def on_ready(restarted: bool) -> None:
        if restarted or not clean_before:
            forget_broker_epoch(redis.url)
        if not restarted and (taken := restore_unacked(create_celery_app(settings))):
            print(
                f"{taken} message(s) the last run's workers held are queued again", file=sys.stderr
            )

    # Its own log file, as when tests start it: the terminal gets only its failures.
    argv = [*redis.command(), "--logfile", str(redis.log_path)]
    return Program("redis", argv, ready=redis.answers_as, on_ready=on_ready)


def app_programs(settings: Settings) -> list[Program]:
    env = processes.environment(settings)
    programs = []
    for name in processes.PROCESS_NAMES:
        processes.prepare(name, settings)
        programs.append(Program(name, processes.command(name, settings), env=env))
    return programs


def check_ports_free(settings: Settings, redis: EmbeddedRedis | None) -> None:
    """One line naming the port and what holds it, rather than each program's own error
    (gunicorn's "Connection in use", Redis's "Address already in use") scrolling past."""
    ports = {"PORT": (settings.host, settings.port)}
    ports["ORCH_FLOWER_PORT"] = (settings.flower_address, settings.flower_port)
    if redis is not None:
        ports["ORCH_EMBEDDED_REDIS_PORT"] = (redis.host, redis.port)
    for variable, (host, port) in ports.items():
        if _free(host, port):
            continue
        earlier = _earlier_run(settings.state_dir)
        if earlier is not None:
            raise OrchestratorError(
                f"port {port} is still held by an earlier run from this folder ({earlier}); "
                "stop it first"
            )
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


def _earlier_run(state_dir: Path) -> str | None:
    """The processes of an earlier run of this folder still alive, as `name pid, ...`."""
    try:
        recorded = json.loads((state_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    pids = recorded.get("pids", {})
    alive = [f"{name} {pid}" for name, pid in pids.items() if isinstance(pid, int) and _alive(pid)]
    if not alive:
        return None
    supervisor = pids.get("supervisor")
    hint = f"; `kill {supervisor}` stops it" if supervisor and _alive(supervisor) else ""
    return f"pids: {', '.join(alive)}{hint}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_run_file(state_dir: Path, pids: dict[str, int]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {"pids": {"supervisor": os.getpid(), **pids}}
    (state_dir / RUN_FILE).write_text(json.dumps(record))
