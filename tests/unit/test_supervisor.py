"""The supervisor `make run` runs under, with small shell programs in place of the real
ones: restarts with a growing pause, a stop after repeated crashes, the stop order, and
signals (which need a process of its own, as Python takes them on its main thread only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from orchestrator import supervisor
from orchestrator.supervisor import Program, Supervisor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF", 0.05)
    monkeypatch.setattr(supervisor, "_POLL", 0.01)


def sh(name: str, script: str) -> Program:
    return Program(name, ["sh", "-c", script])


def test_a_program_that_keeps_crashing_stops_everything_and_is_named(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    out = tmp_path / "out"
    with out.open("w") as output:
        runner = Supervisor(
            [sh("steady", "sleep 30"), sh("flaky", f"echo x >> {starts}; exit 3")], output
        )
        assert runner.run() == 1
    lines = out.read_text().splitlines()
    assert len(starts.read_text().splitlines()) == supervisor.MAX_CRASHES
    pauses = [line for line in lines if "restarting it in" in line]
    assert [line.rsplit(" in ", 1)[1] for line in pauses] == ["0.05 s", "0.1 s", "0.2 s", "0.4 s"]
    assert "flaky crashed 5 times in a row (exited with code 3); stopped everything" in lines[-1]


def test_a_program_that_ran_a_while_is_forgiven_its_earlier_crashes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "STABLE_SECONDS", 0.3)
    starts = tmp_path / "starts"
    # Each run lasts longer than the stable time: every crash is the first in a row.
    flaky = sh("flaky", f"echo x >> {starts}; sleep 0.4; exit 1")
    with open(os.devnull, "w") as output:
        runner = Supervisor([flaky], output)
        runner_thread = threading.Thread(target=runner.run)
        runner_thread.start()
        time.sleep(3)
        runner.stop()
        runner_thread.join(10)
    assert len(starts.read_text().splitlines()) >= 6  # more than MAX_CRASHES, never stopped


HARNESS = textwrap.dedent(
    """
    import json, sys
    from orchestrator import supervisor
    from orchestrator.supervisor import Program, Supervisor
    specs = json.loads(sys.argv[1])
    programs = [Program(name, ["sh", "-c", script]) for name, script in specs]
    sys.exit(Supervisor(programs).run())
    """
)


def _supervised(tmp_path: Path, specs: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    with (tmp_path / "log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", HARNESS, json.dumps(specs)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _children(process: subprocess.Popen[bytes], count: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while len(found := psutil.Process(process.pid).children(recursive=True)) < count:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def test_sigterm_stops_the_programs_last_started_first_and_exits_0(tmp_path: Path) -> None:
    order = tmp_path / "order"
    specs = [
        (name, f"trap 'echo {name} >> {order}; exit 0' TERM; while true; do sleep 0.05; done")
        for name in ("broker", "web", "worker")
    ]
    process = _supervised(tmp_path, specs)
    _children(process, 3)
    time.sleep(0.3)  # the traps are set
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert order.read_text().split() == ["worker", "web", "broker"]


def test_programs_die_with_a_supervisor_killed_with_sigkill(tmp_path: Path) -> None:
    process = _supervised(tmp_path, [("a", "exec sleep 60"), ("b", "exec sleep 60")])
    family = _children(process, 2)
    process.kill()  # the supervisor alone, not its programs' groups
    process.wait(10)
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []


def test_a_source_change_restarts_some_programs_and_signals_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(supervisor, "WATCH_EVERY", 0.05)
    starts, hups, out = tmp_path / "starts", tmp_path / "hups", tmp_path / "out"
    worker = Program("worker", ["sh", "-c", f"echo x >> {starts}; exec sleep 30"])
    worker.restarts_on_change = True
    web = Program("web", ["sh", "-c", f"trap 'echo h >> {hups}' HUP; while :; do sleep 0.05; done"])
    web.reload_signal = signal.SIGHUP
    flower = sh("flower", "exec sleep 30")
    changes = [["jobs/a.py", "jobs/b.py"]]
    with out.open("w") as output:
        runner = Supervisor([worker, web, flower], output)
        runner.watch = lambda: changes.pop() if changes else []
        runner_thread = threading.Thread(target=runner.run)
        runner_thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (hups.exists() and _lines(starts) == 2):
            time.sleep(0.05)
        flower_pid = flower.process.pid if flower.process else None
        runner.stop()
        runner_thread.join(10)
    assert _lines(starts) == 2  # started, then once more for the change
    assert _lines(hups) == 1
    log = out.read_text()
    assert "jobs/a.py, jobs/b.py changed: restarting worker; reloading web" in log
    assert "flower restarted" not in log and flower_pid is not None


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_change_that_breaks_a_program_waits_for_the_next_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo in a job module must not take the whole run down: the program that fails
    after a change waits for the next change instead of counting as crashes."""
    monkeypatch.setattr(supervisor, "WATCH_EVERY", 0.05)
    broken, starts, out = tmp_path / "broken", tmp_path / "starts", tmp_path / "out"
    script = f"echo x >> {starts}; if [ -e {broken} ]; then exit 1; fi; exec sleep 30"
    worker = Program("worker", ["sh", "-c", script], restarts_on_change=True)
    changes: list[list[str]] = []
    with out.open("w") as output:
        runner = Supervisor([worker, sh("steady", "exec sleep 30")], output)
        runner.watch = lambda: changes.pop() if changes else []
        runner_thread = threading.Thread(target=runner.run)
        runner_thread.start()
        _until(lambda: _lines(starts) == 1)
        broken.touch()
        changes.append(["jobs.py"])  # the typo
        _until(lambda: "after the change" in out.read_text())
        time.sleep(supervisor.FIRST_BACKOFF * 2**supervisor.MAX_CRASHES)  # a crash loop's time
        assert _lines(starts) == 2 and runner_thread.is_alive()
        broken.unlink()
        changes.append(["jobs.py"])  # the fix
        _until(lambda: _lines(starts) == 3)
        time.sleep(0.3)
        assert worker.process is not None and worker.process.poll() is None  # it runs again
        runner.stop()
        runner_thread.join(10)
    assert (
        "worker exited with code 1 after the change; it starts at the next one" in out.read_text()
    )


def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)
