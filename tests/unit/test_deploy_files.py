"""The deployment files, checked statically (no Docker engine here): docker-compose.yml,
the Procfile, the Dockerfile and .dockerignore agree with the CLI and the settings.

`tests/e2e/test_compose_commands.py` runs the commands they name as real processes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from orchestrator import processes
from orchestrator.cli import main
from orchestrator.settings import Settings, load_settings
from tests import REAL_SECRET
from tests.compose import COMPOSE_FILE, argv_of, interpolate, load_compose

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

EXPECTED_SERVICES = {"redis", "postgres", "migrate", "web", "worker", "beat", "flower"}
APP_PROCESSES = ("web", "dispatcher", "worker", "reports", "beat", "flower")
PROCFILE_NAMES = {"release", *APP_PROCESSES}
# What each process runs: its own type, but a worker for one queue alone.
EXPECTED_COMMANDS = {
    **{name: ["orchestrator", "run", name] for name in APP_PROCESSES},
    "worker": ["orchestrator", "run", "worker", "--queues", "default,maintenance"],
    "reports": ["orchestrator", "run", "worker", "--queues", "reports"],
}
RESTARTING_POLICIES = {"always", "unless-stopped", "on-failure"}
# What `${VAR:?...}` stands for when the file is used: real-looking values.
INTERPOLATION_VALUES = {
    "ORCH_SERVICE_AUTH_SECRET": REAL_SECRET,
    "ORCH_FLOWER_BASIC_AUTH": "ops:pass",
}


# --- helpers ----------------------------------------------------------------------------


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(
            item.split("=", 1) if "=" in item else (item, "") for item in environment
        )
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value = service.get("depends_on") or {}
    if isinstance(value, list):  # short syntax: service_started
        return {name: {"condition": "service_started"} for name in value}
    return {name: (spec or {"condition": "service_started"}) for name, spec in value.items()}


def project_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image (built from the Dockerfile)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def assert_real_cli_command(argv: list[str]) -> None:
    """`orchestrator db upgrade` or `orchestrator run <process>`, and the CLI agrees."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("orchestrator") == "orchestrator.cli:main"
    assert argv[:1] == ["orchestrator"], argv
    args = argv[1:]
    assert args == ["db", "upgrade"] or (
        len(args) >= 2 and args[0] == "run" and args[1] in processes.PROCESS_NAMES
    ), f"not a known CLI command: {shlex.join(argv)}"
    # The command exists: its help answers...
    result = CliRunner().invoke(main, [*args, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # ...and its arguments parse (help is eager, so it does not check a `run` choice).
    context = main.make_context("orchestrator", [], resilient_parsing=True)
    command: click.Command = main
    remaining = list(args)
    while isinstance(command, click.Group):
        name = remaining.pop(0)
        sub = command.get_command(context, name)
        assert sub is not None, f"no command {name!r} in {shlex.join(argv)}"
        command, context = sub, click.Context(sub, info_name=name, parent=context)
    command.make_context(context.info_name, remaining, parent=context.parent)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder holding it) out of the context."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            "(?:.*/)?"
            if token == "**/"
            else ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]", pattern)
        )
        rules.append((re.compile(regex + r"\Z"), negated))
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule, negated in rules:
        if any(rule.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# --- docker-compose.yml -----------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    tool = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_defines_every_service() -> None:
    services = load_compose()["services"]
    assert set(services) >= EXPECTED_SERVICES, sorted(services)


def test_every_depends_on_names_a_defined_service() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dependency in depends_on(service):
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            assert dependency != name, f"{name} depends on itself"


def test_project_services_run_real_cli_commands() -> None:
    compose = load_compose()
    ours = project_services(compose)
    assert set(ours) == {"migrate", *APP_PROCESSES}, sorted(ours)
    for name, service in ours.items():
        assert "command" in service, f"{name} has no command"
        argv = argv_of(service["command"])
        assert_real_cli_command(argv)
        expected = (
            ["orchestrator", "db", "upgrade"] if name == "migrate" else EXPECTED_COMMANDS[name]
        )
        assert argv == expected, f"{name} runs {shlex.join(argv)}"


def test_compose_environment_names_settings_fields() -> None:
    fields = set(Settings.model_fields)
    for name, service in project_services(load_compose()).items():
        for key in service_environment(service):
            if key == "PORT":
                continue
            if key.startswith("ORCH_"):
                assert key.removeprefix("ORCH_").lower() in fields, f"{name}: unknown {key}"


@pytest.mark.usefixtures("bare_shell")
def test_compose_environment_is_valid_production_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interpolated environment loads, and passes the checks web and Flower make."""
    for name, service in project_services(load_compose()).items():
        with monkeypatch.context() as patch:
            for key, value in service_environment(service).items():
                patch.setenv(key, interpolate(value, INTERPOLATION_VALUES))
            settings = load_settings()
            assert not settings.is_development, name
            assert settings.database_url.startswith("postgresql+psycopg://"), name
            settings.require_production_secrets()
            assert settings.flower_basic_auth, name
            # Inside a container the processes must listen on every interface.
            assert settings.host == "0.0.0.0", name
            assert settings.flower_address == "0.0.0.0", name


def test_every_required_variable_is_a_documented_secret() -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    assert required == set(INTERPOLATION_VALUES), required


def _published(port: str | int | dict[str, Any]) -> tuple[str | None, int]:
    """(host address, container port) of one `ports` entry."""
    if isinstance(port, dict):
        return port.get("host_ip"), int(port["target"])
    parts = str(port).rsplit("/", 1)[0].split(":")
    if len(parts) == 3:
        return parts[0], int(parts[2])
    return None, int(parts[-1])


def test_ports_are_published_on_loopback_only() -> None:
    services = load_compose()["services"]
    published: dict[str, set[int]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, target = _published(port)
            assert host == "127.0.0.1", f"{name} publishes {port!r} beyond this host"
            published.setdefault(name, set()).add(target)
    # The published container ports are the ones the processes listen on.
    defaults = Settings.model_fields
    assert published.get("web") == {defaults["port"].default}
    assert published.get("flower") == {defaults["flower_port"].default}
    assert set(published) <= {"web", "flower"}, sorted(published)


def test_healthchecks_exist() -> None:
    services = load_compose()["services"]
    for name in ("redis", "postgres", "web", "worker", "flower"):
        healthcheck = services[name].get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), name


def test_web_and_flower_healthchecks_probe_their_published_port() -> None:
    services = load_compose()["services"]
    for name, path in (("web", "/healthz"), ("flower", "/healthcheck")):
        (target,) = {_published(port)[1] for port in services[name]["ports"]}
        probe = " ".join(argv_of(services[name]["healthcheck"]["test"]))
        assert f"127.0.0.1:{target}{path}" in probe, probe


def test_migrate_runs_once() -> None:
    migrate = load_compose()["services"]["migrate"]
    assert str(migrate.get("restart", "no")) not in RESTARTING_POLICIES
    policy = (migrate.get("deploy") or {}).get("restart_policy") or {}
    assert policy.get("condition", "none") in {"none", "no"}, policy
    assert depends_on(migrate).get("postgres") == {"condition": "service_healthy"}


def test_processes_wait_for_migrations_and_a_healthy_broker() -> None:
    services = load_compose()["services"]
    for name in APP_PROCESSES:
        dependencies = depends_on(services[name])
        migrate = dependencies.get("migrate", {})
        redis = dependencies.get("redis", {})
        assert migrate.get("condition") == "service_completed_successfully", name
        assert redis.get("condition") == "service_healthy", name
        assert str(services[name].get("restart")) in RESTARTING_POLICIES, name


# --- Procfile ---------------------------------------------------------------------------


def procfile_entries() -> list[tuple[str, str]]:
    entries = []
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):[ \t]*(\S.*)", line)
        assert match, f"Procfile line is not `name: command`: {line!r}"
        entries.append((match[1], match[2]))
    return entries


def test_procfile_names_every_process_once() -> None:
    names = [name for name, _ in procfile_entries()]
    assert sorted(names) == sorted(PROCFILE_NAMES), names


def test_procfile_commands_are_real_cli_commands() -> None:
    for name, command in procfile_entries():
        argv = shlex.split(command)
        assert_real_cli_command(argv)
        expected = (
            ["orchestrator", "db", "upgrade"] if name == "release" else EXPECTED_COMMANDS[name]
        )
        assert argv == expected, f"{name}: {command}"


def test_procfile_and_compose_run_the_same_commands() -> None:
    services = load_compose()["services"]
    procfile = dict(procfile_entries())
    assert shlex.split(procfile["release"]) == argv_of(services["migrate"]["command"])
    for name in APP_PROCESSES:
        assert shlex.split(procfile[name]) == argv_of(services[name]["command"]), name


# --- Dockerfile and .dockerignore -------------------------------------------------------


def test_dockerfile_builds_from_slim_python_311() -> None:
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert froms, "no FROM"
    image = froms[-1].split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_dockerfile_runs_as_a_user_that_is_not_root() -> None:
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER: the container runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, user


def test_dockerfile_default_command_runs_the_web() -> None:
    cmds = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "no CMD"
    argv = json.loads(cmds[-1])  # exec form: signals reach the process, not a shell
    assert argv == ["orchestrator", "run", "web"], argv
    assert_real_cli_command(argv)
    assert not [a for k, a in dockerfile_instructions() if k == "ENTRYPOINT"]


def _copy_sources(arguments: str) -> list[str]:
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    if arguments.lstrip().startswith("["):
        words = json.loads(arguments)
    return words[:-1]


def test_dockerfile_copies_files_that_exist_and_are_in_the_context() -> None:
    copies = [args for keyword, args in dockerfile_instructions() if keyword in {"COPY", "ADD"}]
    assert copies
    for arguments in copies:
        assert "--from" not in arguments, arguments
        for source in _copy_sources(arguments):
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            if source != ".":
                assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore drops it"


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    assert (ROOT / "requirements.lock").is_file()
    needed = ["pyproject.toml", "README.md", "celeryconfig.py", "requirements.lock"]
    needed += [f"{package}/__init__.py" for package in ("orchestrator", "api", "tasks")]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "orchestrator/migrations").rglob("*.py")]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignore_excludes(path), f".dockerignore drops {path}"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".orchestrator/x.db"):
        assert dockerignore_excludes(path), f".dockerignore lets {path} into the image"


def test_dockerfile_installs_the_runtime_lock() -> None:
    instructions = dockerfile_instructions()
    text = DOCKERFILE.read_text()
    assert "requirements-dev.lock" not in text
    copied = {}
    for keyword, arguments in instructions:
        if keyword == "COPY":
            *sources, destination = [w for w in shlex.split(arguments) if not w.startswith("--")]
            for source in sources:
                copied[source] = destination
    assert "requirements.lock" in copied, copied
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    lock_installs = [
        run
        for run in runs
        if re.search(rf"pip install\b.*-r\s+{re.escape(copied['requirements.lock'])}(\s|$)", run)
    ]
    assert lock_installs, runs
    # The project itself adds nothing the lock did not pin.
    project_installs = [run for run in runs if "pip install" in run and run not in lock_installs]
    assert project_installs and all("--no-deps" in run for run in project_installs), runs
    # The lock holds what the processes run.
    locked = {
        re.split(r"[=<>~ \[]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"celery", "gunicorn", "flower", "psycopg", "psycopg-binary", "redis"} <= locked


def dockerfile_environment() -> dict[str, str]:
    environment: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for word in shlex.split(arguments):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {arguments}: use the KEY=value form"
                environment[key] = value
    return environment


def test_dockerfile_environment_names_settings_fields() -> None:
    environment = dockerfile_environment()
    assert environment.get("ORCH_HOST") == "0.0.0.0"
    assert environment.get("ORCH_STATE_DIR", "").startswith("/app")  # the user's home
    for key in environment:
        if key.startswith("ORCH_"):
            assert key.removeprefix("ORCH_").lower() in Settings.model_fields, key


def test_dockerfile_exposes_the_published_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, args in dockerfile_instructions()
        if keyword == "EXPOSE"
        for port in args.split()
    }
    defaults = Settings.model_fields
    assert {defaults["port"].default, defaults["flower_port"].default} <= exposed


def _make_dry_run(target: str, venv: Path) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


def test_make_run_installs_the_runtime_only_and_make_test_adds_the_tools(tmp_path: Path) -> None:
    run = _make_dry_run("run", tmp_path / "venv")
    assert "-r requirements.lock" in run and "requirements-dev.lock" not in run
    test = _make_dry_run("test", tmp_path / "venv")
    assert "-r requirements-dev.lock" in test
    dev_tools = {"pytest", "playwright", "schemathesis", "mypy", "ruff", "hypothesis"}
    runtime = {
        line.split("==")[0].lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    assert not runtime & dev_tools
