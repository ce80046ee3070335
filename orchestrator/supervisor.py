"""A process supervisor for `orchestrator dev`: start the programs in order, prefix their
output, restart one that crashes, and stop them all, in reverse order, on Ctrl-C or SIGTERM.

Each program runs in a process group of its own, so that a signal sent to one of them (an
operator killing the worker's group, say) spares the others, and the supervisor alone
decides what happens next: a crashed program is started again after a growing pause, and
only a program that keeps crashing stops the whole system. Each program is also told by
the kernel to stop when the supervisor dies (`PR_SET_PDEATHSIG`), so a `kill -9` of the
supervisor, or of its process group, leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

# How long a program must stay up for its earlier crashes to be forgiven.
STABLE_SECONDS = 60.0
# This many crashes of one program, each within STABLE_SECONDS of its start, stop everything.
MAX_CRASHES = 5
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
STOP_TIMEOUT = 30.0
WATCH_EVERY = 1.0
_POLL = 0.1
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up now: nothing but the call may happen between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    function: Callable[..., int] = libc.prctl
    return function


_PRCTL = _prctl()


@dataclass
class Program:
    """One supervised program.

    `ready(pid)` (if given) is polled after a start until it answers true: the programs
    after it start only then. `on_ready(restarted)` runs once it is ready, `restarted` true
    when it came back after a crash; a `SupervisorError` from it stops everything (a
    database that cannot be migrated). `death_signal` is what the kernel sends it when the
    supervisor dies (a Celery worker takes SIGKILL: it must not go on running jobs next
    to the run that replaces it, and Celery's own shutdown would wait for the broker that
    died with the supervisor); `stop_signal` what a stop sends (PostgreSQL's fast shutdown
    is SIGINT). `user` runs it as another OS account. When watched source files change
    (`Supervisor.watch`), a program with a `reload_signal` gets it (gunicorn reloads its
    workers on SIGHUP), and one that `restarts_on_change` is stopped and started again.
    """

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    ready: Callable[[int], bool] | None = None
    ready_timeout: float = 30.0
    on_ready: Callable[[bool], None] | None = None
    death_signal: signal.Signals = signal.SIGTERM
    stop_signal: signal.Signals = signal.SIGTERM
    user: str | None = None
    reload_signal: signal.Signals | None = None
    restarts_on_change: bool = False
    changed_at: float | None = None  # when a source change last restarted or signalled it
    awaits_change: bool = False  # it failed after a change: started again at the next one
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


class SupervisorError(Exception):
    """A program could not start, or kept crashing; the message names it."""


class Supervisor:
    def __init__(self, programs: Sequence[Program], output: IO[str] | None = None) -> None:
        self.programs = list(programs)
        self.output = output or sys.stdout
        self.width = max((len(p.name) for p in self.programs), default=6)
        self._print_lock = threading.Lock()
        self._stop = threading.Event()
        self._signal: int | None = None
        self.pids_changed: Callable[[dict[str, int]], None] | None = None
        # Returns the source files changed since it was last asked (`reloader`).
        self.watch: Callable[[], Sequence[str]] | None = None
        self._watched_at = 0.0

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until asked to stop; 0 after a clean stop, 1 after a
        program kept crashing (or could not start)."""
        # Python takes signals on its main thread only; elsewhere `stop()` is the way.
        on_main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS if on_main}
        failure = None
        try:
            failure = self._start_all() or self._supervise()
        finally:
            if self._signal is not None:
                self.say(f"{signal.Signals(self._signal).name}: stopping")
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure:
            self.say(f"{failure}; stopped everything")
            return 1
        return 0

    def _start_all(self) -> str | None:
        for program in self.programs:
            if self._stop.is_set():
                return None
            try:
                self._start(program)
            except SupervisorError as exc:
                return None if self._stop.is_set() else str(exc)
        return None

    def _supervise(self) -> str | None:
        while not self._stop.wait(_POLL):
            now = time.monotonic()
            if self.watch is not None and now - self._watched_at >= WATCH_EVERY:
                self._watched_at = now
                if changed := self.watch():
                    self._reload(changed)
            for program in self.programs:
                if program.restart_at is not None:
                    if now >= program.restart_at:
                        self._restart(program)
                elif (
                    _exited(program)
                    and not program.awaits_change
                    and (failure := self._crashed(program, now))
                ):
                    return failure
        return None

    def _reload(self, changed: Sequence[str]) -> None:
        """Restart what loads the changed code, then signal the ones that reload
        themselves (the web last: it takes the new job types once the workers run them).
        A program that failed after an earlier change starts again now."""
        signalled = [p for p in self.programs if p.reload_signal is not None]
        restarted = [p for p in self.programs if p.restarts_on_change and p not in signalled]
        what = [f"restarting {', '.join(p.name for p in restarted)}"] if restarted else []
        what += [f"reloading {', '.join(p.name for p in signalled)}"] if signalled else []
        more = len(changed) - 3
        shown = ", ".join(changed[:3]) + (f" and {more} more" if more > 0 else "")
        self.say(f"{shown} changed: {'; '.join(what) or 'nothing to reload'}")
        now = time.monotonic()
        for program in restarted + signalled:
            program.changed_at, program.crashes, program.restart_at = now, 0, None
        for program in restarted:
            self._stop_one(program)
            program.awaits_change = False
            self._restart(program)
        for program in signalled:
            process, reload_signal = program.process, program.reload_signal
            if program.awaits_change or process is None or process.poll() is not None:
                program.awaits_change = False
                self._restart(program)
            elif reload_signal is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(reload_signal)

    def _crashed(self, program: Program, now: float) -> str | None:
        assert program.process is not None
        code = program.process.returncode
        if program.changed_at is not None and now - program.changed_at < STABLE_SECONDS:
            # A change broke it (a typo in a job module): restarting it would fail the same
            # way until the code is fixed, and counting it would stop the whole run.
            self.say(f"{program.name} {_how(code)} after the change; it starts at the next one")
            program.awaits_change = True
            return None
        program.crashes = 1 if now - program.started_at >= STABLE_SECONDS else program.crashes + 1
        if program.crashes >= MAX_CRASHES:
            return f"{program.name} crashed {program.crashes} times in a row ({_how(code)})"
        pause = min(FIRST_BACKOFF * 2 ** (program.crashes - 1), MAX_BACKOFF)
        self.say(f"{program.name} {_how(code)}; restarting it in {pause:g} s")
        program.restart_at = now + pause
        return None

    def _restart(self, program: Program) -> None:
        program.restart_at = None
        try:
            self._start(program, restarted=True)
        except SupervisorError as exc:  # counted as another crash on the next look
            self.say(str(exc))
            return
        self.say(f"{program.name} restarted (pid {_pid(program)})")

    def _start(self, program: Program, *, restarted: bool = False) -> None:
        try:
            program.process = subprocess.Popen(
                list(program.argv),
                env=program.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,
                **as_account(program.user),
                preexec_fn=dies_with(os.getpid(), program.death_signal),  # noqa: PLW1509
            )
        except OSError as exc:
            raise SupervisorError(f"{program.name} could not start: {exc}") from exc
        program.started_at = time.monotonic()
        threading.Thread(
            target=self._relay, args=(program.name, program.process), daemon=True
        ).start()
        self._pids_changed()
        if program.ready is not None:
            self._wait_ready(program)
        if program.on_ready is not None:
            try:
                program.on_ready(restarted)
            except SupervisorError:
                raise
            except Exception as exc:  # its own work failed; the program itself is up
                self.say(f"{program.name}: after its start: {type(exc).__name__}: {exc}")

    def _wait_ready(self, program: Program) -> None:
        assert program.process is not None and program.ready is not None
        deadline = time.monotonic() + program.ready_timeout
        while not program.ready(program.process.pid):
            if (code := program.process.poll()) is not None:
                raise SupervisorError(f"{program.name} {_how(code)} while starting")
            if self._stop.is_set():
                raise SupervisorError(f"{program.name} was stopped while starting")
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{program.name} was not ready after {program.ready_timeout:g} s"
                )
            time.sleep(0.05)

    # -- stopping --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only flags here: a handler that printed could land while the main thread holds
        # the print lock, and wait for itself for ever.
        if self._signal is None:
            self._signal = signum
        self._stop.set()

    def stop(self) -> None:
        """Ask `run` to stop everything (from another thread)."""
        self._stop.set()

    def _stop_all(self) -> None:
        """The programs in reverse order of start: the broker outlives its clients."""
        for program in reversed(self.programs):
            self._stop_one(program)

    def _stop_one(self, program: Program) -> None:
        process = program.process
        if process is None or process.poll() is not None:
            return
        # The program's own process: gunicorn's master and Celery's main process stop
        # their children themselves (a warm shutdown lets running jobs finish).
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(program.stop_signal)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.say(f"{program.name} did not stop in {STOP_TIMEOUT:g} s; killing it")
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(5)
        # What the program left running in its group (a worker's pool) goes with it.
        _signal_group(process.pid, signal.SIGKILL)

    # -- output ----------------------------------------------------------------------------

    def say(self, message: str) -> None:
        self._print("dev", message)

    def _relay(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                self._print(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def _print(self, name: str, line: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with self._print_lock:
            print(f"{stamp} {name.ljust(self.width)} | {line}", file=self.output, flush=True)

    def _pids_changed(self) -> None:
        if self.pids_changed is not None:
            self.pids_changed({p.name: p.process.pid for p in self.programs if p.process})


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def dies_with(parent: int, death_signal: signal.Signals) -> Callable[[], None]:
    """What runs in a child between fork and exec: the kernel sends it `death_signal`
    when the supervisor dies, however it dies. A supervisor that died before the request
    took effect is noticed by the parent pid. Only plain system calls here, as the
    supervisor has threads (no lookups, no Python locks)."""
    prctl = _PRCTL

    def setup() -> None:
        if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(death_signal)) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def as_account(name: str | None) -> dict[str, Any]:
    """Popen's arguments that run a child as the OS account `name` (nothing for `None`):
    its user, its group and no other group, so that a folder closed to root's group is
    closed to it too, and one open to others is open."""
    if name is None:
        return {}
    account = pwd.getpwnam(name)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _exited(program: Program) -> bool:
    return program.process is not None and program.process.poll() is not None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, sig)


def _pid(program: Program) -> int:
    return program.process.pid if program.process is not None else 0


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
