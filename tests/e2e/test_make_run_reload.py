"""`make run` picks up a changed job module by itself: the worker, beat and dispatcher
restart and the web reloads, with a line that says so."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.devsystem import DevSystem

MODULE = textwrap.dedent(
    """
    from pydantic import BaseModel
    from orchestrator import JobContext, define_job

    class Empty(BaseModel):
        pass

    @define_job("{name}", input=Empty, time_limit=30)
    def echo(ctx: JobContext, data: Empty) -> dict:
        return {{"version": {version}}}
    """
)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[DevSystem, Path]]:
    code = tmp_path / "code" / "reloadjobs"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "jobs.py").write_text(MODULE.format(name="RELOAD_V1", version=1))
    (tmp_path / "state").mkdir()
    dev = DevSystem.prepare(
        tmp_path / "state", ORCH_JOB_MODULES="reloadjobs.jobs", PYTHONPATH=str(code.parent)
    )
    try:
        yield dev.start(), code / "jobs.py"
    finally:
        dev.stop()


def _result(dev: DevSystem, job_type: str, timeout: float = 60) -> dict[str, object]:
    created = dev.post("tnt_reload", "/v1/jobs", {"type": job_type})
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dev.get("tnt_reload", f"/v1/jobs/{created.json()['id']}").json()
        if job["status"] == "succeeded":
            result: dict[str, object] = job["result"]
            return result
        time.sleep(0.2)
    raise AssertionError(f"{job_type} did not run:\n{dev.log_tail()}")


def test_a_changed_job_module_is_served_and_run_without_a_restart_by_hand(
    system: tuple[DevSystem, Path],
) -> None:
    dev, module = system
    assert _result(dev, "RELOAD_V1") == {"version": 1}
    module.write_text(MODULE.format(name="RELOAD_V2", version=2))
    deadline = time.monotonic() + 60
    while "changed: restarting" not in dev.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no reload:\n{dev.log_tail()}"
        time.sleep(0.2)
    # The web knows the new type once its fresh workers serve (it answers throughout).
    while (
        response := dev.post("tnt_reload", "/v1/jobs", {"type": "RELOAD_V2"})
    ).status_code != 201:
        assert response.status_code == 422 and time.monotonic() < deadline, response.text
        time.sleep(0.2)
    assert _result(dev, "RELOAD_V2") == {"version": 2}
    log = dev.log_path.read_text(errors="replace")
    assert "reloadjobs/jobs.py changed: restarting worker, beat, dispatcher; reloading web" in log
