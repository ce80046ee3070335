"""The `orchestrator` command as a user runs it, against a fresh SQLite file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("orchestrator"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {
        **base,
        "ORCH_ENV": "development",
        "ORCH_DISPATCH_MODE": "inline",
        "ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "ORCH_STATE_DIR": str(tmp_path),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_upgrade_send_and_sweep(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    sent = run(
        env,
        "send",
        "ANALYZE_INSPECTION",
        "--tenant",
        "tnt_cli",
        "--subject",
        "insp_1",
        "--input",
        '{"analysisMode": "QUICK", "roomIds": ["r1"]}',
    )
    assert sent.returncode == 0, sent.stderr
    job = json.loads(sent.stdout)
    assert job["id"].startswith("job_") and len(job["pipeline"]) == 2
    assert job["status"] == "succeeded"  # inline dispatch ran it before the answer
    swept = run(env, "maintenance", "sweep")
    assert swept.returncode == 0 and swept.stdout.strip() == "sent 0 job(s); 0 were missing"
    assert run(env, "maintenance", "reap").stdout.strip() == "reaped 0 job(s)"


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (("send", "NOPE", "--tenant", "t"), {}, "Error: unknown job type 'NOPE'"),
        (
            ("send", "ANALYZE_INSPECTION", "--tenant", "t", "--input", "{"),
            {},
            "Error: --input is not JSON",
        ),
        (
            ("db", "upgrade"),
            {"ORCH_WORKER_CONCURRENCY": "lots"},
            "Error: invalid configuration: ORCH_WORKER_CONCURRENCY",
        ),
        (("run", "web"), {"ORCH_ENV": "production"}, "Error: ORCH_SERVICE_AUTH_SECRET"),
        (("db", "upgrade", "--revision", "bogus"), {}, "Error: migrations: "),
        (("send", "TEST_FLAKY", "--tenant", "bad tenant/.."), {}, "Error: tenant: must match"),
        (("api-keys", "create", "--tenant", "bad tenant"), {}, "Error: tenant 'bad tenant' must"),
        (("tenants", "set-tier", "a b", "pro"), {}, "Error: tenant 'a b' must match"),
    ],
)
def test_errors_are_one_line(
    env: dict[str, str], args: tuple[str, ...], extra_env: dict[str, str], message: str
) -> None:
    run(env, "db", "upgrade")
    result = run({**env, **extra_env}, *args)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_jobs_commands_list_show_cancel_and_retry(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "db", "upgrade")
    gate = tmp_path / "gate"
    env = {**env, "ORCH_JOB_MODULES": "tests.jobtypes"}
    failed = [
        json.loads(
            run(
                env,
                "send",
                "TEST_GATED",
                "--tenant",
                "t1",
                "--input",
                json.dumps({"gateFile": str(gate)}),
            ).stdout
        )["id"]
        for _ in range(2)
    ]
    listed = run(env, "jobs", "list", "--tenant", "t1", "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "TYPE", "STATUS"]
    assert sorted(row.split()[0] for row in rows) == sorted(failed)
    as_json = run(env, "jobs", "list", "--tenant", "t1", "--json").stdout.splitlines()
    assert {json.loads(line)["id"] for line in as_json} >= set(failed)

    shown = run(env, "jobs", "show", failed[0], "--tenant", "t1")
    assert "PermanentError" in shown.stdout and "pipeline:" in shown.stdout
    assert (
        json.loads(run(env, "jobs", "show", failed[0], "--tenant", "t1", "--json").stdout)["status"]
        == "failed"
    )
    assert run(env, "jobs", "show", failed[0], "--tenant", "t2").stderr.startswith(
        "Error: job "
    )  # another tenant's job is not found

    gate.touch()
    one = run(env, "jobs", "retry", failed[0], "--tenant", "t1")
    assert one.stdout.strip() == f"{failed[0]}: succeeded"
    bulk = run(env, "jobs", "retry", "--failed", "--tenant", "t1")
    assert bulk.stdout.strip() == "retried 1 job(s)" and "retrying" in bulk.stderr
    delayed = json.loads(run(env, "send", "TEST_FLAKY", "--tenant", "t1").stdout)["pipeline"][1]
    cancelled = run(env, "jobs", "cancel", delayed, "--tenant", "t1")
    assert cancelled.returncode == 1 and "already succeeded" in cancelled.stderr


def test_a_database_without_tables_is_a_one_line_error(env: dict[str, str]) -> None:
    result = run(env, "jobs", "list", "--tenant", "t1")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: database error: no such table: jobs")


def test_make_run_with_its_redis_port_taken_is_a_one_line_error(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run({**env, "ORCH_EMBEDDED_REDIS_PORT": str(port)}, "dev")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: port {port} on 127.0.0.1 is in use by another program; "
        "set ORCH_EMBEDDED_REDIS_PORT to a free one\n"
    ), result.stderr
