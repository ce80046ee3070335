"""docker-compose.yml's commands, run as real processes (no Docker engine on this machine).

Each service's command runs with the environment its container would get (the Dockerfile's
`ENV`, then the service's `environment`), changed only where a container differs from this
host: the `postgres` and `redis` hosts become the test's real servers on loopback, the
required secrets get real values, processes bind 127.0.0.1 on free ports, and each service
has its own state folder (its own container filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import psutil
import psycopg
import pytest
import requests
from psycopg import sql

from orchestrator.dispatch.celery import create_celery_app
from orchestrator.embedded_postgres import SUPERUSER, EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import load_settings
from tests import REAL_SECRET
from tests.compose import argv_of, interpolate_all, load_compose
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 90
STOP_TIMEOUT = 30
PROCESSES = ("web", "dispatcher", "worker", "reports", "beat", "flower")
SECRETS = {"ORCH_SERVICE_AUTH_SECRET": REAL_SECRET, "ORCH_FLOWER_BASIC_AUTH": "ops:pass"}
# What the host environment must not leak into a "container".
HOST_ONLY = re.compile(r"^(ORCH_.*|PORT|FLOWER_.*|PROMETHEUS_MULTIPROC_DIR|CELERY_.*)$")


def compose_with_secrets() -> dict[str, Any]:
    result: dict[str, Any] = interpolate_all(load_compose(), SECRETS)
    return result


def dockerfile_environment() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    environment: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "ENV":
            for word in shlex.split(arguments):
                key, _, value = word.partition("=")
                environment[key] = value
    return environment


def image_folders(state_dir: Path) -> list[Path]:
    """Folders the Dockerfile creates (`RUN mkdir`) under ORCH_STATE_DIR, mapped into
    `state_dir`: what every container of the image finds on its filesystem."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    image_state = PurePosixPath(dockerfile_environment().get("ORCH_STATE_DIR", "/nonexistent"))
    folders = []
    for line in text.splitlines():
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", arguments):
            words = shlex.split(command)
            if words[:1] == ["mkdir"]:
                for word in words[1:]:
                    path = PurePosixPath(word)
                    if path == image_state or image_state in path.parents:
                        folders.append(state_dir / path.relative_to(image_state))
    return folders


def seconds(duration: str) -> float:
    """A compose duration such as `15s`, `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def container_environment(
    service: dict[str, Any],
    *,
    redis_url: str,
    database_url: str,
    state_dir: Path,
    port: int,
    flower_port: int,
) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not HOST_ONLY.match(k)}
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(dockerfile_environment())
    declared = {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
    environment.update(declared)
    assert "@postgres:5432/" in declared["ORCH_DATABASE_URL"], declared["ORCH_DATABASE_URL"]
    assert declared["ORCH_REDIS_URL"].startswith("redis://redis:6379/"), declared
    environment.update(
        ORCH_DATABASE_URL=database_url,
        ORCH_REDIS_URL=redis_url,
        ORCH_HOST="127.0.0.1",
        ORCH_FLOWER_ADDRESS="127.0.0.1",
        PORT=str(port),
        ORCH_FLOWER_PORT=str(flower_port),
        ORCH_STATE_DIR=str(state_dir),
    )
    for folder in image_folders(state_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return environment


@dataclass
class Deployment:
    compose: dict[str, Any]
    environments: dict[str, dict[str, str]]
    workdir: Path
    redis_url: str
    web_url: str
    flower_url: str
    migrate_runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    started_at: float = 0.0

    def service(self, name: str) -> dict[str, Any]:
        return self.compose["services"][name]  # type: ignore[no-any-return]

    def log_tail(self, name: str | None = None, lines: int = 40) -> str:
        names = [name] if name else list(self.logs)
        return "\n".join(
            f"--- {n} (exit {self.processes[n].poll()}) ---\n"
            + "\n".join(self.logs[n].read_text(errors="replace").splitlines()[-lines:])
            for n in names
        )

    def run_migrate(self) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv_of(self.service("migrate")["command"]),
            cwd=self.workdir,
            env=self.environments["migrate"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.migrate_runs.append(result)
        return result

    def start(self, name: str) -> None:
        self.logs[name] = self.workdir / f"{name}.log"
        with self.logs[name].open("wb") as log:
            self.processes[name] = subprocess.Popen(
                argv_of(self.service(name)["command"]),
                cwd=self.workdir,
                env=self.environments[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like its own container
            )

    def wait_for(self, name: str, url: str, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited early:\n{self.log_tail(name)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} not 200 after {timeout}s:\n{self.log_tail(name)}")


def _session_members(leader: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader:
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _create_owned_database(server: EmbeddedPostgres, user: str, password: str, name: str) -> None:
    """The compose file's database user, owning a fresh empty database (as the image makes)."""
    with psycopg.connect(
        host="127.0.0.1", port=server.port, user=SUPERUSER, dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(user)
            )
        )


@pytest.fixture(scope="module")
def deployment(
    redis_server: EmbeddedRedis,
    postgres_server: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    compose = compose_with_secrets()
    workdir = tmp_path_factory.mktemp("compose")
    shared = compose["services"]["migrate"]["environment"]
    database = re.fullmatch(
        r"(?P<scheme>[^:]+)://(?P<user>[^:@]+):(?P<password>[^@]*)@postgres:5432/(?P<db>\w+)",
        shared["ORCH_DATABASE_URL"],
    )
    assert database, shared["ORCH_DATABASE_URL"]
    dbname = f"compose_{uuid.uuid4().hex[:10]}"
    _create_owned_database(postgres_server, database["user"], database["password"], dbname)
    database_url = (
        f"{database['scheme']}://{database['user']}:{database['password']}"
        f"@127.0.0.1:{postgres_server.port}/{dbname}"
    )
    redis_url = shared["ORCH_REDIS_URL"].replace("redis:6379", f"127.0.0.1:{redis_server.port}")
    port, flower_port = free_port(), free_port()
    environments = {
        name: container_environment(
            compose["services"][name],
            redis_url=redis_url,
            database_url=database_url,
            state_dir=workdir / f"state-{name}",
            port=port,
            flower_port=flower_port,
        )
        for name in ("migrate", *PROCESSES)
    }
    system = Deployment(
        compose,
        environments,
        workdir,
        redis_url,
        web_url=f"http://127.0.0.1:{port}",
        flower_url=f"http://127.0.0.1:{flower_port}",
    )
    try:
        migrated = system.run_migrate()
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        system.started_at = time.monotonic()
        for name in PROCESSES:
            system.start(name)
        system.wait_for("web", f"{system.web_url}/healthz")
        prefix = environments["flower"].get("ORCH_FLOWER_URL_PREFIX", "").strip("/")
        system.flower_url += f"/{prefix}" if prefix else ""
        system.wait_for("flower", f"{system.flower_url}/healthcheck")
        yield system
    finally:
        for process in system.processes.values():
            if process.poll() is None or _session_members(process.pid):
                _kill_group(process)
        postgres_server.drop_database(dbname)


def test_migrate_command_applies_the_schema_and_can_run_again(deployment: Deployment) -> None:
    first = deployment.migrate_runs[0]
    assert first.returncode == 0 and "database at head" in first.stdout, first
    again = deployment.run_migrate()  # `docker compose up` runs it every time
    assert again.returncode == 0, again.stdout + again.stderr


def test_web_is_live_and_ready(deployment: Deployment) -> None:
    assert requests.get(f"{deployment.web_url}/healthz", timeout=5).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        ready = requests.get(f"{deployment.web_url}/readyz", timeout=5)
        if ready.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ready.status_code == 200, f"{ready.text}\n{deployment.log_tail('web')}"
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_flower_answers_its_healthcheck_and_requires_credentials(deployment: Deployment) -> None:
    health = requests.get(f"{deployment.flower_url}/healthcheck", timeout=5)
    assert health.status_code == 200, health.text
    user, password = SECRETS["ORCH_FLOWER_BASIC_AUTH"].split(":", 1)
    assert requests.get(f"{deployment.flower_url}/", timeout=5).status_code == 401
    authorised = requests.get(f"{deployment.flower_url}/", auth=(user, password), timeout=5)
    assert authorised.status_code == 200


def test_worker_answers_a_celery_ping(deployment: Deployment) -> None:
    app = create_celery_app(load_settings(redis_url=deployment.redis_url))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        replies: list[dict[str, Any]] = []
        while not replies and time.monotonic() < deadline:
            assert deployment.processes["worker"].poll() is None, deployment.log_tail("worker")
            replies = app.control.ping(timeout=1) or []
        assert replies, f"no worker answered:\n{deployment.log_tail('worker')}"
        assert any(reply == {"ok": "pong"} for answer in replies for reply in answer.values())
    finally:
        app.close()


def test_beat_keeps_running(deployment: Deployment) -> None:
    time.sleep(max(0.0, deployment.started_at + 3 - time.monotonic()))
    assert deployment.processes["beat"].poll() is None, deployment.log_tail("beat")


def _healthcheck_argv(deployment: Deployment, name: str) -> list[str]:
    """The service's healthcheck test, with its published container port (if any) mapped
    to the port this process listens on here."""
    test = deployment.service(name)["healthcheck"]["test"]
    test = [test] if isinstance(test, str) else list(test)
    kind, *rest = test if test[0] in {"CMD", "CMD-SHELL"} else ["CMD-SHELL", *test]
    environment = deployment.environments[name]
    local_ports = {"web": environment["PORT"], "flower": environment["ORCH_FLOWER_PORT"]}
    for port in deployment.service(name).get("ports", []):
        container_port = str(port).rsplit(":", 1)[-1].split("/")[0]
        local = f"127.0.0.1:{local_ports[name]}"
        rest = [part.replace(f"127.0.0.1:{container_port}", local) for part in rest]
        rest = [part.replace(f"localhost:{container_port}", local) for part in rest]
    return rest if kind == "CMD" else ["/bin/sh", "-c", " ".join(rest)]


@pytest.mark.parametrize("name", ["web", "worker", "flower"])
def test_compose_healthcheck_passes(deployment: Deployment, name: str) -> None:
    """The healthcheck compose runs inside the container, run here against the process."""
    env = dict(deployment.environments[name])
    env["HOSTNAME"] = socket.gethostname()  # what Docker sets: the container's host name
    argv = _healthcheck_argv(deployment, name)
    timeout = seconds(deployment.service(name)["healthcheck"].get("timeout", "30s"))
    if name == "worker":  # compose allows a start period; wait until the worker answers
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not app_ping_once(deployment) and time.monotonic() < deadline:
            time.sleep(0.5)
    result = subprocess.run(
        argv,
        cwd=deployment.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 30,  # a cold interpreter here is slower than the probe's budget
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}\n{result.stderr}"


def app_ping_once(deployment: Deployment) -> bool:
    app = create_celery_app(load_settings(redis_url=deployment.redis_url))
    try:
        return bool(app.control.ping(timeout=1))
    finally:
        app.close()


def test_every_container_can_write_its_metrics(deployment: Deployment) -> None:
    """Each process counts into its own container's multiprocess folder, which must exist
    there: only the web creates it at start, and the web's container is not theirs."""
    time.sleep(max(0.0, deployment.started_at + 3 - time.monotonic()))
    missing = {}
    for name, process in deployment.processes.items():
        folder = psutil.Process(process.pid).environ().get("PROMETHEUS_MULTIPROC_DIR")
        if folder and not Path(folder).is_dir():
            missing[name] = folder
    assert not missing, (
        f"no metrics folder in these containers: {missing}; every counter they touch raises "
        "FileNotFoundError (jobs fail in the worker). The image must create it, e.g. "
        "`RUN mkdir -p /app/state/metrics` after `WORKDIR /app` in the Dockerfile"
    )


def test_a_job_runs_through_the_deployment(deployment: Deployment) -> None:
    """Outside development a caller needs an API key (`docker compose exec web orchestrator
    api-keys create ...`); a bare `X-Tenant-ID` is not trusted."""
    tenant = "tnt_compose"
    body = {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "QUICK", "roomIds": ["r1"]}}
    url = f"{deployment.web_url}/v1/jobs"
    bare = requests.post(url, json=body, headers={"X-Tenant-ID": tenant}, timeout=10)
    assert bare.status_code == 401, bare.text
    issued = subprocess.run(
        ["orchestrator", "api-keys", "create", "--tenant", tenant, "--name", "compose-e2e"],
        cwd=deployment.workdir,
        env=deployment.environments["web"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert issued.returncode == 0, issued.stdout + issued.stderr
    headers = {"X-Tenant-ID": tenant, "Authorization": f"Bearer {issued.stdout.strip()}"}
    created = requests.post(url, json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/{job_id}", headers=headers, timeout=10)
        assert job.status_code == 200, job.text
        steps = job.json()["pipeline"]["steps"]
        if {step["status"] for step in steps} == {"succeeded"}:
            return
        time.sleep(0.2)
    raise AssertionError(f"{json.dumps(job.json())}\n{deployment.log_tail()}")


def test_sigterm_stops_every_process(deployment: Deployment) -> None:
    families = {name: _session_members(p.pid) for name, p in deployment.processes.items()}
    for name, process in deployment.processes.items():
        assert process.poll() is None, deployment.log_tail(name)
        os.killpg(process.pid, signal.SIGTERM)  # what `docker compose stop` sends
    deadline = time.monotonic() + STOP_TIMEOUT
    codes = {}
    for name, process in deployment.processes.items():
        try:
            codes[name] = process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running:\n{deployment.log_tail(name)}") from None
    everyone = [member for family in families.values() for member in family]
    _, alive = psutil.wait_procs(everyone, timeout=max(0.1, deadline - time.monotonic()))
    assert alive == [], f"left running: {alive}\n{deployment.log_tail()}"
    assert codes == dict.fromkeys(PROCESSES, 0), f"{codes}\n{deployment.log_tail()}"


def test_no_process_logged_an_error(deployment: Deployment) -> None:
    for name, log in deployment.logs.items():
        errors = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if '"level": "ERROR"' in line or line.startswith("Traceback")
        ]
        assert not errors, f"{name}:\n" + "\n".join(line[:300] for line in errors[:5])
