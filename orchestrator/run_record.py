"""What a running `make run` keeps in its state folder for the processes around it.

- `run.lock`: held (flock) by the supervisor for the whole run, one run per folder; it
  names the supervisor's pid.
- `run.json`: its programs' pids, and the settings they were started with (`ORCH_*` and
  `PORT`: the embedded servers' URLs, job modules, ...). The CLI and `orchestrator` in
  Python, started from another shell in the same folder, take those settings for what
  their own environment leaves unset (`settings_sources.LiveRunSource`), so they work on
  the same system with nothing exported. Readable by this account only (the database URL
  holds a password); written aside and renamed, so a reader never sees half of it.

A record is believed only while its run holds the lock: one left behind by a run that was
killed describes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import OrchestratorError

LOCK_FILE = "run.lock"
RUN_FILE = "run.json"
PROBE_GRACE = 1.0  # seconds a start waits for the lock before saying another run has it


class FolderInUse(OrchestratorError):
    """Another run holds the state folder; the message names its pid."""


@contextmanager
def one_run_per_folder(state_dir: Path) -> Iterator[None]:
    """An exclusive lock on the state folder for the whole run: two runs of one folder
    would share its database and its broker's file. The kernel drops the lock with the
    process, however it ends."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a+") as lock:
        _take(lock, state_dir)
        # A record left by a run that was killed would be believed from now on: it goes
        # before anything else, the new run's own comes once its programs start.
        (state_dir / RUN_FILE).unlink(missing_ok=True)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            (state_dir / RUN_FILE).unlink(missing_ok=True)


def _take(lock: IO[str], state_dir: Path) -> None:
    """The exclusive lock, waiting a moment: a second shell's probe (`_held`) holds it
    shared for an instant, and must not pass for a run."""
    deadline = time.monotonic() + PROBE_GRACE
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise FolderInUse(_already_running(lock, state_dir)) from None
            time.sleep(0.05)


def _already_running(lock: IO[str], state_dir: Path) -> str:
    lock.seek(0)
    pid = lock.read().strip()
    hint = f" (pid {pid}; `kill {pid}` stops it)" if pid.isdigit() else ""
    return f"another run from {state_dir} is still running{hint}"


def write(state_dir: Path, pids: Mapping[str, int], environment: Mapping[str, str]) -> None:
    """Record the run's pids and the settings in `environment` (its `ORCH_*` and `PORT`)."""
    settings = {k: v for k, v in environment.items() if k.startswith("ORCH_") or k == "PORT"}
    record = {"pids": {"supervisor": os.getpid(), **pids}, "settings": settings}
    draft = state_dir / f".{RUN_FILE}.{os.getpid()}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(record, out)
    os.replace(draft, state_dir / RUN_FILE)


def live_settings(state_dir: Path) -> dict[str, str]:
    """The settings of the run that holds `state_dir` now; none if no run does."""
    record = _live_record(state_dir)
    settings = record.get("settings") if record else None
    if not isinstance(settings, dict):
        return {}
    return {str(k): str(v) for k, v in settings.items()}


def _live_record(state_dir: Path) -> dict[str, Any] | None:
    if not _held(state_dir / LOCK_FILE):
        return None
    try:
        record = json.loads((state_dir / RUN_FILE).read_text())
    except (OSError, ValueError):  # not written yet, or not ours to read
        return None
    return record if isinstance(record, dict) else None


def _held(lock_path: Path) -> bool:
    """Whether a run holds the lock: a shared lock cannot be had beside its exclusive one.
    (When none holds it, ours is let go at once.)"""
    try:
        with lock_path.open("r") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:  # no lock file: no run ever started here
        return False
