"""`orchestrator maintenance archive|runs` and `tenants set-tier`, run as a user runs them.

There is no clock flag: jobs are made "old" by a retention of 0 days
(`ORCH_RETENTION_DAYS=free=0,...`), which makes every job finished before the command
eligible.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("orchestrator"))
INSPECTION = '{"analysisMode": "QUICK", "roomIds": ["r1"]}'
FREE, PRO = "cli_free", "cli_pro"


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


@pytest.fixture
def env(tmp_path: Path, db_file: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {
        **base,
        "ORCH_ENV": "development",
        "ORCH_DISPATCH_MODE": "inline",
        "ORCH_DATABASE_URL": f"sqlite:///{db_file}",
        "ORCH_STATE_DIR": str(tmp_path),
    }


def run(env: dict[str, str], *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def send(env: dict[str, str], tenant: str) -> list[str]:
    out = ok(run(env, "send", "ANALYZE_INSPECTION", "--tenant", tenant, "--input", INSPECTION))
    job = json.loads(out)
    assert job["status"] == "succeeded"  # inline dispatch ran it before the answer
    pipeline: list[str] = job["pipeline"]
    return pipeline


def jobs_in(db_file: Path) -> dict[str, tuple[str, str, str | None]]:
    """id -> (tenant, status, archived_at), read straight from the file."""
    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT id, tenant_id, status, archived_at FROM jobs").fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def archive_json(env: dict[str, str], *flags: str, **extra_env: str) -> dict[str, Any]:
    result = run(env, "maintenance", "archive", *flags, "--json", **extra_env)
    out = ok(result)
    # stdout is exactly one JSON document; the progress bar went to stderr.
    assert len(out.splitlines()) == 1, out
    report: dict[str, Any] = json.loads(out)
    assert "archiving" in result.stderr
    assert "archiving" not in out
    return report


@pytest.fixture
def two_tenants(env: dict[str, str], db_file: Path) -> dict[str, list[str]]:
    """Two inspections (6 jobs: analysis, its one room, report) for a free tenant, one (3
    jobs) for a pro tenant, all done."""
    assert ok(run(env, "db", "upgrade")).strip() == "database at head"
    jobs = {FREE: send(env, FREE) + send(env, FREE), PRO: send(env, PRO)}
    assert ok(run(env, "tenants", "set-tier", PRO, "pro")).strip() == f"{PRO}: pro (365 days)"
    state = jobs_in(db_file)
    assert len(state) == 9
    assert {status for _, status, _ in state.values()} == {"succeeded"}
    assert all(archived is None for _, _, archived in state.values())
    return jobs


def test_dry_run_then_archive_then_runs(
    env: dict[str, str], db_file: Path, two_tenants: dict[str, list[str]]
) -> None:
    retention = {"ORCH_RETENTION_DAYS": "free=0,pro=365"}

    dry = archive_json(env, "--dry-run", **retention)
    assert dry["dryRun"] is True
    assert dry["archived"] == 6
    assert dry["perTenant"] == {FREE: 6}
    assert isinstance(dry["maintenanceRunId"], int) and dry["seconds"] >= 0
    assert all(archived is None for _, _, archived in jobs_in(db_file).values())

    real = archive_json(env, **retention)
    assert real["dryRun"] is False
    assert (real["archived"], real["perTenant"]) == (6, {FREE: 6})
    assert real["maintenanceRunId"] > dry["maintenanceRunId"]
    state = jobs_in(db_file)
    archived = {job_id for job_id, (_, _, at) in state.items() if at is not None}
    assert set(two_tenants[FREE]) <= archived  # the pro tenant's jobs are kept
    assert archived == {job_id for job_id, (tenant, _, _) in state.items() if tenant == FREE}

    again = archive_json(env, **retention)
    assert (again["archived"], again["perTenant"]) == (0, {})

    lines = ok(run(env, "maintenance", "runs")).splitlines()
    runs = [json.loads(line) for line in lines]
    assert [r["id"] for r in runs] == [
        again["maintenanceRunId"],
        real["maintenanceRunId"],
        dry["maintenanceRunId"],
    ]
    assert [(r["dryRun"], r["total"], r["perTenant"]) for r in runs] == [
        (False, 0, {}),
        (False, 6, {FREE: 6}),
        (True, 6, {FREE: 6}),
    ]
    assert {(r["kind"], r["status"]) for r in runs} == {("archive", "succeeded")}
    assert all(r["startedAt"] for r in runs)
    limited = ok(run(env, "maintenance", "runs", "--limit", "1")).splitlines()
    assert [json.loads(line)["id"] for line in limited] == [again["maintenanceRunId"]]


def test_the_pro_tier_follows_its_own_retention(
    env: dict[str, str], db_file: Path, two_tenants: dict[str, list[str]]
) -> None:
    report = archive_json(env, ORCH_RETENTION_DAYS="free=365,pro=0")
    assert (report["archived"], report["perTenant"]) == (3, {PRO: 3})
    # Default retention (free=30, pro=365): nothing just finished is due.
    fresh = archive_json(env)
    assert fresh["archived"] == 0


def test_human_output(
    env: dict[str, str], db_file: Path, two_tenants: dict[str, list[str]]
) -> None:
    retention = {"ORCH_RETENTION_DAYS": "free=0,pro=0"}
    dry = ok(run(env, "maintenance", "archive", "--dry-run", **retention)).splitlines()
    assert dry[0].startswith("would archive 9 job(s) in ")
    assert [line.split() for line in dry[1:]] == [[FREE, "6"], [PRO, "3"]]
    real = ok(run(env, "maintenance", "archive", **retention)).splitlines()
    assert real[0].startswith("archived 9 job(s) in ")
    assert all(at is not None for _, _, at in jobs_in(db_file).values())


def test_unknown_tier_is_a_one_line_error(
    env: dict[str, str], db_file: Path, two_tenants: dict[str, list[str]]
) -> None:
    result = run(env, "tenants", "set-tier", PRO, "unknown-tier")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: unknown tier 'unknown-tier'"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    with sqlite3.connect(db_file) as connection:
        tier = connection.execute("SELECT tier FROM tenants WHERE id = ?", (PRO,)).fetchone()
    assert tier == ("pro",)


def test_set_tier_creates_an_unseen_tenant(env: dict[str, str], db_file: Path) -> None:
    ok(run(env, "db", "upgrade"))
    assert ok(run(env, "tenants", "set-tier", "newcomer", "free")).strip() == (
        "newcomer: free (30 days)"
    )
    assert ok(run(env, "tenants", "set-tier", "newcomer", "pro")).strip() == (
        "newcomer: pro (365 days)"
    )
    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT id, tier FROM tenants").fetchall()
    assert rows == [("newcomer", "pro")]


@pytest.mark.parametrize(
    ("extra_env", "message"),
    [
        (
            {"ORCH_RETENTION_DAYS": "free=thirty"},
            "Error: invalid configuration: ORCH_RETENTION_DAYS",
        ),
        (
            {"ORCH_RETENTION_DAYS": "pro=365"},
            "Error: invalid configuration: ORCH_DEFAULT_TIER 'free' has no ORCH_RETENTION_DAYS",
        ),
        ({"ORCH_ARCHIVE_BATCH_SIZE": "0"}, "Error: invalid configuration: ORCH_ARCHIVE_BATCH_SIZE"),
    ],
)
def test_bad_archival_configuration_is_a_one_line_error(
    env: dict[str, str], extra_env: dict[str, str], message: str
) -> None:
    ok(run(env, "db", "upgrade"))
    result = run(env, "maintenance", "archive", "--json", **extra_env)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
