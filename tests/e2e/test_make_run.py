"""`make run` as a user runs it, with its embedded defaults (PostgreSQL and Redis from
their wheels): the system comes up, runs a pipeline and the documentation's examples, stops
on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.docblocks import SESSION_RUNNER, Block, all_blocks, python_sessions
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 90


@dataclass
class DevSystem:
    process: subprocess.Popen[bytes]
    base_url: str
    flower_url: str
    log_path: Path
    state: Path
    started: float

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_for(url: str, system: DevSystem, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if system.process.poll() is not None:
            raise AssertionError(f"make run exited early:\n{system.log_tail()}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not up after {timeout}s:\n{system.log_tail()}")


@pytest.fixture(scope="module")
def dev_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    state = tmp_path_factory.mktemp("make-run")
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        PORT=str(port),
        ORCH_FLOWER_PORT=str(flower_port),
        ORCH_EMBEDDED_REDIS_PORT=str(free_port()),
        ORCH_EMBEDDED_POSTGRES_PORT=str(free_port()),  # make run's default database
        ORCH_STATE_DIR=str(state),
    )
    log_path = state / "make-run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    system = DevSystem(
        process,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{flower_port}",
        log_path,
        state,
        time.monotonic(),
    )
    try:
        _wait_for(f"{system.base_url}/healthz", system)
        _wait_for(f"{system.flower_url}/healthcheck", system)
        yield system
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_make_run_serves_the_pipeline(dev_system: DevSystem) -> None:
    headers = {"X-Tenant-ID": "tnt_123", "X-User-ID": "user_abc"}
    body = {
        "type": "ANALYZE_INSPECTION",
        "inspectionId": "insp_999",
        "input": {"analysisMode": "DEEP", "roomIds": ["room_1"]},
    }
    created = requests.post(
        f"{dev_system.base_url}/v1/jobs", json=body, headers=headers, timeout=10
    )
    assert created.status_code == 201, created.text
    report_id = created.json()["pipeline"]["steps"][1]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = requests.get(
            f"{dev_system.base_url}/v1/jobs/{report_id}", headers=headers, timeout=10
        ).json()
        if report["status"] == "succeeded":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"report step not done:\n{dev_system.log_tail()}")
    assert report["result"]["inspectionId"] == "insp_999"


def _shell(system: DevSystem) -> dict[str, str]:
    """The shell a reader types the examples in: a second shell in the project folder,
    with the virtualenv on PATH, and curl failing on an error answer (the examples do not
    say --fail, but an example that gets a 4xx is broken)."""
    curl_home = system.state / "curl"
    curl_home.mkdir(exist_ok=True)
    (curl_home / ".curlrc").write_text("fail-with-body\n")
    env = _second_shell(system.state)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return {**env, "CURL_HOME": str(curl_home)}


def _run_bash(system: DevSystem, block: Block) -> str:
    port = system.base_url.rsplit(":", 1)[1]
    script = "set -euo pipefail\n" + block.code.replace("localhost:8080", f"localhost:{port}")
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=_shell(system),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{block.where}\n{block.code}\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_docs_shell_examples_work_as_written(dev_system: DevSystem) -> None:
    """Every ```bash block of the README and of docs/, run by bash in order, page by page;
    only the port is this test's own."""
    blocks = [block for block in all_blocks() if block.lang == "bash" and block.runs]
    readme = [block for block in blocks if block.path.name == "README.md"]
    assert len(readme) >= 3 and all("curl" in block.code for block in readme)
    assert {block.path.name for block in blocks} >= {"api.md", "operating.md", "tutorial.md"}
    outputs = []
    for block in blocks:
        outputs.append(_run_bash(dev_system, block))
        if "JOB_ID=" in block.code:
            _wait_for_pipeline(dev_system, json.loads(outputs[-1].splitlines()[0])["id"])

    def output_of(needle: str) -> Any:
        return json.loads(outputs[next(i for i, b in enumerate(blocks) if needle in b.code)])

    created = json.loads(outputs[0])
    assert created["status"] == "queued" and created["type"] == "ANALYZE_INSPECTION"
    listed = output_of("/v1/jobs?status=")
    assert listed["jobs"] and {j["status"] for j in listed["jobs"]} == {"succeeded"}
    stats = output_of("/v1/stats")
    assert stats["tenantId"] == "acme" and stats["window"]["seconds"] == 3600
    assert output_of('"priority": 9')["priority"] == 9


# Placeholders of the client examples, and what stands for them against `make run`: its
# URL (only the port is this test's own), and, as it takes trusted headers, the tenant
# the example's own comment names in place of an API key.
CLIENT_PLACEHOLDERS = {
    "https://jobs.example.com": "{base_url}",
    "http://127.0.0.1:8080": "{base_url}",
    "http://localhost:8080": "{base_url}",
    'api_key="ork_..."': 'tenant="tnt_123"',
}


def test_the_docs_client_examples_work_as_written(dev_system: DevSystem) -> None:
    """Every ```python block that uses the HTTP client, page by page in one interpreter,
    against the running system."""
    sessions = python_sessions(client=True)
    assert any(page.name == "client.md" for page in sessions)
    for blocks in sessions.values():
        examples = []
        for block in blocks:
            code = block.code
            for placeholder, value in CLIENT_PLACEHOLDERS.items():
                code = code.replace(placeholder, value.format(base_url=dev_system.base_url))
            examples.append((block.where, code))
        ran = subprocess.run(
            [sys.executable, "-c", SESSION_RUNNER], input=json.dumps(examples), cwd=ROOT,
            env=_shell(dev_system), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr


def _wait_for_pipeline(
    system: DevSystem, job_id: str, headers: dict[str, str] | None = None
) -> None:
    headers = headers or {"X-Tenant-ID": "tnt_123"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = requests.get(
            f"{system.base_url}/v1/jobs/{job_id}", headers=headers, timeout=10
        ).json()
        if {s["status"] for s in job["pipeline"]["steps"]} == {"succeeded"}:
            return
        time.sleep(0.2)
    raise AssertionError(f"pipeline {job_id} did not succeed:\n{system.log_tail()}")


def test_one_grep_shows_a_jobs_whole_life(dev_system: DevSystem) -> None:
    """Every line the web and the worker write about a job carries its id and context."""
    headers = {"X-Tenant-ID": "tnt_logs", "X-User-ID": "user_abc"}
    body = {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "QUICK", "roomIds": ["a"]}}
    job_id = requests.post(
        f"{dev_system.base_url}/v1/jobs", json=body, headers=headers, timeout=10
    ).json()["id"]
    _wait_for_pipeline(dev_system, job_id, headers)
    time.sleep(0.5)  # let the last lines reach the log
    lines = [line for line in dev_system.log_path.read_text().splitlines() if job_id in line]
    records = []
    for line in lines:
        process, _, payload = line.partition(" | ")
        if payload.startswith("{"):
            records.append((process.split()[-1], json.loads(payload)))
    ours = [(process, r) for process, r in records if r.get("job_id") == job_id]
    actions = [(process, r["action"]) for process, r in ours]
    assert ("web", "created") in actions
    assert ("worker", "started") in actions and ("worker", "succeeded") in actions
    assert ("worker", "handler_log") in actions
    for _, record in ours:
        assert record["tenant_id"] == "tnt_logs"
        assert record["job_type"] == "ANALYZE_INSPECTION"
        assert "attempt" in record
    # Celery's own lines name the task by the job's delivery id, so they match the grep too.
    assert any("received" in line and "worker" in line for line in lines)


def _second_shell(state: Path) -> dict[str, str]:
    """Another shell in the project folder: nothing exported but, as the test's run keeps
    its state outside the project, where that is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k != "PORT"}
    return {**env, "ORCH_STATE_DIR": str(state)}


def test_the_cli_in_a_second_shell_works_on_the_running_system(dev_system: DevSystem) -> None:
    cli = str(ROOT / ".venv" / "bin" / "orchestrator")
    env = _second_shell(dev_system.state)
    sent = subprocess.run(
        [cli, "send", "ANALYZE_INSPECTION", "--tenant", "tnt_cli", "--input",
         '{"analysisMode": "QUICK", "roomIds": ["kitchen"]}'],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    report_id = json.loads(sent.stdout)["pipeline"][-1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = requests.get(
            f"{dev_system.base_url}/v1/jobs/{report_id}", headers={"X-Tenant-ID": "tnt_cli"},
            timeout=10,
        ).json()  # fmt: skip
        if report["status"] == "succeeded":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the CLI's job did not run: {report}\n{dev_system.log_tail()}")
    shown = subprocess.run(
        [cli, "config", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    rows = {row["variable"]: row for row in map(json.loads, shown.splitlines())}
    assert rows["ORCH_DATABASE_URL"]["from"].startswith("make run")
    assert ":****@" in rows["ORCH_DATABASE_URL"]["value"]
    assert (dev_system.state / "postgres.password").read_text().strip() not in shown


def test_housekeeping_stays_out_of_the_log_and_of_flower(dev_system: DevSystem) -> None:
    # Beat has sent the lease reaper (every 5 s) at least once by now.
    time.sleep(max(0.0, dev_system.started + 12 - time.monotonic()))
    log = dev_system.log_path.read_text(errors="replace")
    assert "beat: Starting" in log
    # Celery's lines about a task name it with its id: `orchestrator.reap_leases[<id>]`.
    assert "reap_leases[" not in log and "Sending due task" not in log
    tasks = requests.get(f"{dev_system.flower_url}/api/tasks", timeout=10).json()
    names = {task["name"] for task in tasks.values()}
    assert not names & {"orchestrator.reap_leases", "orchestrator.cron_catch_up"}, names


def test_make_run_says_where_everything_is(dev_system: DevSystem) -> None:
    banner = dev_system.log_path.read_text(errors="replace")
    for shown in ("/dashboard", "/docs", dev_system.flower_url, "X-Tenant-ID", "curl -X POST",
                  "orchestrator config", "Ctrl-C", "make run: ready, http://"):  # fmt: skip
        assert shown in banner, shown
    # The line to try works as printed (a newcomer's first command).
    lines = banner.splitlines()
    first = next(i for i, line in enumerate(lines) if "curl -X POST" in line)
    command = "\n".join(line.strip() for line in lines[first : first + 2])
    tried = subprocess.run(["bash", "-c", command + " --fail-with-body -s"], capture_output=True,
                           text=True, timeout=30, check=False)  # fmt: skip
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert json.loads(tried.stdout)["status"] in ("queued", "running", "succeeded")


def test_sigterm_to_make_stops_every_process(dev_system: DevSystem) -> None:
    family = psutil.Process(dev_system.process.pid).children(recursive=True)
    names = {" ".join(p.cmdline()) for p in family}
    assert any("redis-server" in n for n in names), names
    assert any(p.name() == "postgres" for p in family), names
    assert any("gunicorn" in n for n in names), names
    assert any("worker" in n for n in names), names
    assert any("beat" in n for n in names), names
    assert any("flower" in n for n in names), names

    dev_system.process.send_signal(signal.SIGTERM)
    assert dev_system.process.wait(30) is not None
    _, alive = psutil.wait_procs(family, timeout=20)
    assert alive == [], f"left running: {[p.pid for p in alive]}\n{dev_system.log_tail()}"
