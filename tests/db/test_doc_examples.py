"""The Python examples of the README and docs/ run as written, against a fresh database
with inline dispatch (so a pipeline runs inside `send_job`), on SQLite and PostgreSQL.

The blocks of one page run in order in one interpreter, as a reader would paste them;
those that use the HTTP client run against `make run` in tests/e2e/test_make_run.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docblocks import EXAMPLES_MODULE, ROOT, SESSION_RUNNER, Block, python_sessions

SESSIONS = python_sessions(client=False)


def test_the_readme_and_the_job_types_page_have_examples_here() -> None:
    assert {"README.md", "job-types.md", "workflows.md"} <= {p.name for p in SESSIONS}


@pytest.mark.parametrize("page", sorted(SESSIONS), ids=lambda page: page.name)
def test_a_pages_python_examples_run(page: Path, database_url: str, tmp_path: Path) -> None:
    blocks: list[Block] = SESSIONS[page]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k != "PORT"}
    env.update(
        PYTHONPATH=str(ROOT),
        ORCH_ENV="development",
        ORCH_DATABASE_URL=database_url,
        ORCH_DISPATCH_MODE="inline",
        ORCH_JOB_MODULES=EXAMPLES_MODULE,
        ORCH_STATE_DIR=str(tmp_path / "state"),
    )
    ran = subprocess.run(
        [sys.executable, "-c", SESSION_RUNNER],
        input=json.dumps([(block.where, block.code) for block in blocks]),
        cwd=tmp_path,  # no `make run` here to lend its settings
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
