"""Disposable real servers for integration tests.

Database tests run against SQLite and a real PostgreSQL, since the two differ where it
matters (locking, JSON, time zones). Missing PostgreSQL binaries are an error, never a
skip: a green run must mean the PostgreSQL paths were exercised.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
# initdb refuses to run as root, so when we are root the cluster is owned by,
# and every server command runs as, this OS account.
SERVER_OS_USER = "postgres"
DEFAULT_TIMEOUT = 30.0
_LOG_TAIL_LINES = 30


class PostgresServerError(RuntimeError):
    """A throwaway PostgreSQL cluster could not be created, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process may grab it
    first; the window is tiny and acceptable for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin`` (numeric, so 15 > 9.6)."""
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))


def postgres_binaries_dir() -> Path:
    """Locate the directory holding ``initdb`` and ``pg_ctl``.

    Debian-style installs keep them off ``PATH`` under
    ``/usr/lib/postgresql/<version>/bin``; prefer the newest of those, then
    fall back to whatever ``pg_ctl`` is on ``PATH``.
    """
    candidates = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
        if (path.parent / "initdb").is_file()
    ]
    if candidates:
        return max(candidates, key=_version_key)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and (Path(pg_ctl).parent / "initdb").is_file():
        return Path(pg_ctl).parent
    raise PostgresServerError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
        "or on PATH; the test-suite requires PostgreSQL (e.g. `apt-get install postgresql`)"
    )


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_server_user(command: list[str]) -> list[str]:
    """Wrap ``command`` so it runs as the cluster owner when we are root."""
    if not _running_as_root():
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresServerError("running as root but `runuser` is not available")
    return [runuser, "-u", SERVER_OS_USER, "--", *command]


def _prepare_base_dir(base_dir: Path) -> None:
    """Make ``base_dir`` usable by the server's OS user.

    The postgres account must be able to traverse the directory and write the
    log and socket into it, hence mode 0o755 and, as root, a chown.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    base_dir.chmod(0o755)
    if _running_as_root():
        try:
            account = pwd.getpwnam(SERVER_OS_USER)
        except KeyError as exc:
            raise PostgresServerError(
                f"running as root, but there is no {SERVER_OS_USER!r} OS user to own the cluster"
            ) from exc
        os.chown(base_dir, account.pw_uid, account.pw_gid)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "<no output>"


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1, trust auth. Tests run it with fsync off
    (nothing they do needs a crash to keep its data, and it is faster); benchmarks run it
    `durable`, with PostgreSQL's own durability defaults (fsync, synchronous_commit and
    full_page_writes on), as production does.

    Layout under ``base_dir``: ``data/`` (the cluster), ``log`` (server log)
    and the Unix socket. Connect as superuser ``postgres`` without a password.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int,
        bin_dir: Path,
        *,
        owns_base_dir: bool,
        durable: bool = False,
    ) -> None:
        self.base_dir = base_dir
        self.port = port
        self.bin_dir = bin_dir
        self.durable = durable
        self._owns_base_dir = owns_base_dir
        self._running = False

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        durable: bool = False,
    ) -> Self:
        """Create (if needed) and start a cluster; return once it accepts connections.

        Without ``base_dir`` a temporary directory is used and removed by
        :meth:`stop`. An existing cluster in ``base_dir/data`` is reused.
        """
        bin_dir = postgres_binaries_dir()
        owns_base_dir = base_dir is None
        directory = Path(tempfile.mkdtemp(prefix="pg-test-")) if base_dir is None else base_dir
        chosen_port = free_port() if port is None else port
        server = cls(directory, chosen_port, bin_dir, owns_base_dir=owns_base_dir, durable=durable)
        try:
            _prepare_base_dir(directory)
            server._initdb(timeout)
            server._pg_ctl_start(timeout)
        except BaseException:
            server._cleanup_base_dir()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "log"

    @property
    def running(self) -> bool:
        return self._running

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for database ``dbname``."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE name [TEMPLATE template]``.

        Cloning a migrated template is much faster than re-running migrations
        per test; PostgreSQL refuses it while anything is connected to the template.
        """
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self._execute_admin(statement)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting any leftover sessions (FORCE)."""
        self._execute_admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Stop the server (fast shutdown, immediate as fallback). Idempotent.

        A temporary ``base_dir`` created by :meth:`start` is removed.
        """
        if self._running:
            self._pg_ctl_stop(timeout)
        self._cleanup_base_dir()

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
        state = "running" if self._running else "stopped"
        return f"PostgresServer(port={self.port}, base_dir={str(self.base_dir)!r}, {state})"

    def _execute_admin(self, statement: sql.Composed) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction block.
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(statement)

    def _initdb(self, timeout: float) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        self._run(
            "initdb",
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",  # deterministic collation regardless of the host's locale
                "--no-sync",
                "--no-instructions",
            ],
            timeout,
        )  # fmt: skip

    def _pg_ctl_start(self, timeout: float) -> None:
        # pg_ctl hands -o to a shell, so the socket directory must be quoted.
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.base_dir))} -c listen_addresses=127.0.0.1"
        )
        if not self.durable:
            options += " -c fsync=off"
        command = [*self._pg_ctl("start", timeout), "-l", str(self.log_path), "-o", options]
        try:
            self._run("pg_ctl start", command, timeout)
        except PostgresServerError:
            # A postmaster that came up too late for `-w` would otherwise leak.
            self._pg_ctl_stop_quietly()
            raise
        self._running = True

    def _pg_ctl_stop(self, timeout: float) -> None:
        try:
            self._run("pg_ctl stop", [*self._pg_ctl("stop", timeout), "-m", "fast"], timeout)
        except PostgresServerError:
            self._run("pg_ctl stop", [*self._pg_ctl("stop", timeout), "-m", "immediate"], timeout)
        self._running = False

    def _pg_ctl_stop_quietly(self) -> None:
        subprocess.run(
            _as_server_user([*self._pg_ctl("stop", 10), "-m", "immediate"]),
            cwd=self.base_dir,
            capture_output=True,
            timeout=DEFAULT_TIMEOUT,
            check=False,
        )

    def _pg_ctl(self, action: str, timeout: float) -> list[str]:
        # `-w -t` bounds pg_ctl's own wait; subprocess' timeout is the backstop.
        pg_ctl = str(self.bin_dir / "pg_ctl")
        return [pg_ctl, action, "-D", str(self.data_dir), "-w", "-t", str(max(1, int(timeout)))]

    def _run(self, what: str, command: list[str], timeout: float) -> None:
        """Run a server command as the cluster owner, raising with its output and log tail."""
        try:
            result = subprocess.run(
                _as_server_user(command),
                cwd=self.base_dir,  # the postgres user may not be able to read our cwd
                capture_output=True,
                text=True,
                timeout=timeout + 5,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._failure(what, f"did not finish within {timeout + 5:g}s", "") from exc
        if result.returncode != 0:
            output = f"{result.stdout}\n{result.stderr}"
            raise self._failure(what, f"exited with code {result.returncode}", output)

    def _failure(self, what: str, problem: str, output: str) -> PostgresServerError:
        return PostgresServerError(
            f"{what} (port {self.port}, {self.base_dir}) {problem}\n"
            f"--- command output ---\n{_tail(output)}\n"
            f"--- last lines of {self.log_path} ---\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return _tail(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            return f"<could not read {self.log_path}: {exc}>"

    def _cleanup_base_dir(self) -> None:
        if self._owns_base_dir and not self._running:
            shutil.rmtree(self.base_dir, ignore_errors=True)
