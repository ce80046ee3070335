"""The `orchestrator` command as a user runs it, against a fresh SQLite file."""

from __future__ import annotations

import json
import os
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
    swept = run(env, "maintenance", "sweep")
    assert swept.returncode == 0 and swept.stdout.strip() == "sent 0 job(s)"
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
