"""A real PgBouncer in transaction mode in front of a PostgreSQL server, for tests and the bench.

The binary is Debian's ``pgbouncer`` package (``.ci/run`` installs it). PgBouncer listens on a
loopback port the OS hands out and checks passwords (SCRAM) made up for each run, or the ones
given; it logs in to PostgreSQL as the same roles, over the server's Unix socket (peer
authentication, as the embedded server allows) or, for a server reached by TCP, with the
passwords given. Its folder and files are private (0700 / 0600) and removed at ``stop()``.

PgBouncer refuses to run as root. Under root it runs as the owner of the server's socket (the
embedded server's system user), and for as long as it runs PostgreSQL's ident map lets that
operating-system user log in as the roles given: the user the server itself runs as, which
owns the data directory anyway.

The bench imports this module too: it is test tooling, and the library leaves running
PgBouncer to its users (it only needs ``postgresql.pgbouncer = true``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

__all__ = ["PgBouncer", "TlsFiles", "find_pgbouncer", "raise_open_files"]

_PLACES = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer")
_ADMIN = "pgbouncer_admin"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key, the CA that signs clients' and the
    server's, and a client certificate and key for the connections the tests make."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path

    def client_settings(self) -> dict[str, str]:
        """libpq settings that connect with the server's name checked and the client's
        certificate shown."""
        return {
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca),
            "sslcert": str(self.client_cert),
            "sslkey": str(self.client_key),
        }


def find_pgbouncer() -> str | None:
    """The pgbouncer binary: on PATH, or where Debian puts it (/usr/sbin, off users' PATH)."""
    found = shutil.which("pgbouncer")
    if found is not None:
        return found
    for place in _PLACES:
        if os.access(place, os.X_OK):
            return place
    return None


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by PgBouncer) towards ``wanted``.

    Each client connection is a socket, in this process and in PgBouncer. Returns the soft
    limit now in force, which is lower than ``wanted`` when the hard limit is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = top
    return int(soft)


class PgBouncer:
    """One PgBouncer process, transaction pooling, in front of the server ``superuser_dsn`` names.

    ``roles`` may log in through it (with ``passwords`` when given, else made-up ones, which
    :meth:`dsn` carries). Every database of the server is reachable under its own name.
    """

    def __init__(
        self,
        superuser_dsn: str,
        roles: Sequence[str],
        *,
        passwords: Mapping[str, str] | None = None,
        max_client_conn: int = 1200,
        default_pool_size: int = 20,
        tls: TlsFiles | None = None,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise FileNotFoundError(
                "pgbouncer is not installed (not on PATH, nor in /usr/sbin); install Debian's "
                "package: apt-get install pgbouncer"
            )
        self.binary = binary
        self._superuser_dsn = superuser_dsn
        self.passwords = {
            role: (passwords or {}).get(role) or secrets.token_urlsafe(18) for role in roles
        }
        self._admin_password = secrets.token_urlsafe(18)
        self.max_client_conn = max_client_conn
        self.default_pool_size = default_pool_size
        # Clients must then speak TLS and show a certificate the CA signed.
        self.tls = tls
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        self._ident_file: Path | None = None
        self._ident_mark: str | None = None

    # -- the process ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start PgBouncer and wait until it lets a role in and reaches PostgreSQL through it."""
        server = conninfo_to_dict(self._superuser_dsn)
        host = str(server.get("host") or "/var/run/postgresql")
        port = str(server.get("port") or 5432)
        unix = host.startswith("/")
        account = self._account(host, port) if os.geteuid() == 0 else None
        # Each client takes a socket in PgBouncer, and each server connection another.
        raise_open_files(self.max_client_conn + 4 * self.default_pool_size + 100)
        self._directory = Path(tempfile.mkdtemp(prefix="agency-data-pgbouncer-"))
        try:
            if unix and account is not None:
                self._let_in(account.pw_name)
            self.port = _free_port()
            self._write_files(host, port, account)
            log = (self._directory / "pgbouncer.log").open("wb")
            try:
                self._process = subprocess.Popen(
                    [self.binary, str(self._directory / "pgbouncer.ini")],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    user=account.pw_uid if account is not None else None,
                    group=account.pw_gid if account is not None else None,
                    extra_groups=[] if account is not None else None,
                )
            finally:
                log.close()
            self._wait_ready(server.get("dbname") or "postgres", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop PgBouncer, take back the ident map's lines, and remove its folder."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._ident_mark is not None:
            self._take_back()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- using it ------------------------------------------------------------------------------

    def dsn(self, database: str, user: str, **extra: str) -> str:
        """The DSN of ``database`` through PgBouncer, as ``user`` (one of the roles)."""
        return make_conninfo(
            "",
            # With TLS: the name the certificate carries, at the address PgBouncer listens on.
            host="localhost" if self.tls is not None else "127.0.0.1",
            hostaddr="127.0.0.1",
            port=self.port,
            dbname=database,
            user=user,
            password=self.passwords[user],
            **({**self.tls.client_settings(), **extra} if self.tls is not None else extra),
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        """The rows of ``SHOW <what>`` (POOLS, CLIENTS, SERVERS...) from PgBouncer's console."""
        if not what.isalpha():
            raise ValueError(f"not a SHOW command of PgBouncer's console: {what!r}")
        dsn = make_conninfo(
            "",
            host="localhost" if self.tls is not None else "127.0.0.1",
            hostaddr="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=_ADMIN,
            password=self._admin_password,
            **(self.tls.client_settings() if self.tls is not None else {}),
        )
        # The console speaks the simple query protocol only, outside transactions.
        with (
            psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn,
            conn.cursor(row_factory=dict_row) as cursor,
        ):
            cursor.execute(f"SHOW {what}".encode())
            return cursor.fetchall()

    def log_tail(self, lines: int = 40) -> str:
        """The end of PgBouncer's log, for error messages."""
        if self._directory is None:
            return ""
        try:
            text = (self._directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- setting it up -------------------------------------------------------------------------

    def _account(self, host: str, port: str) -> pwd.struct_passwd:
        # Who PgBouncer runs as under root: the owner of the server's socket (who may reach
        # it), or nobody for a server reached by TCP.
        if host.startswith("/"):
            owner = Path(host, f".s.PGSQL.{port}").stat().st_uid
            if owner != 0:
                return pwd.getpwuid(owner)
        return pwd.getpwnam("nobody")

    def _write_files(self, host: str, port: str, account: pwd.struct_passwd | None) -> None:
        assert self._directory is not None
        users = {**self.passwords, _ADMIN: self._admin_password}
        if host.startswith("/"):
            # PgBouncer logs in to the server by peer, so it needs no password, only SCRAM
            # secrets to check its clients with: given a plain password, it would derive the
            # secret afresh at each login (PBKDF2, in its one thread), a thousand times over.
            users = {user: _scram_secret(password) for user, password in users.items()}
        userlist = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self._directory / "userlist.txt"),
            "admin_users": _ADMIN,
            "pool_mode": "transaction",
            "max_client_conn": str(self.max_client_conn),
            "default_pool_size": str(self.default_pool_size),
            # A thousand clients connecting at once would overflow the default queue (128).
            "listen_backlog": "4096",
            # The ident map's reload may land a moment after the first login: retry soon.
            "server_login_retry": "1",
            "log_connections": "0",
            "log_disconnections": "0",
        }
        if self.tls is not None:
            for name, source in (
                ("server.crt", self.tls.cert),
                ("server.key", self.tls.key),
                ("ca.crt", self.tls.ca),
            ):
                copied = self._directory / name
                shutil.copyfile(source, copied)
                copied.chmod(0o600)
            settings.update(
                client_tls_sslmode="verify-full",
                client_tls_cert_file=str(self._directory / "server.crt"),
                client_tls_key_file=str(self._directory / "server.key"),
                client_tls_ca_file=str(self._directory / "ca.crt"),
            )
        ini = f"[databases]\n* = host={host} port={port}\n\n[pgbouncer]\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        for name, text in (("userlist.txt", userlist), ("pgbouncer.ini", ini)):
            path = self._directory / name
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(text)
        if account is not None:
            for path in (self._directory, *self._directory.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _wait_ready(self, database: str, timeout: float) -> None:
        role = next(iter(self.passwords))
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn(database, role), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer did not let {role} through to PostgreSQL within "
                        f"{timeout:.0f} s ({exc}):\n{self.log_tail()}"
                    ) from exc
                time.sleep(0.1)

    # -- the ident map, under root -------------------------------------------------------------

    def _let_in(self, os_user: str) -> None:
        """Let ``os_user`` log in over the socket as each role, by lines in the ident map."""
        with psycopg.connect(self._superuser_dsn, autocommit=True) as conn:
            ident = conn.execute("SELECT current_setting('ident_file')").fetchone()
            maps = conn.execute(
                "SELECT DISTINCT substr(o, 5) FROM pg_hba_file_rules, unnest(options) AS o "
                "WHERE type = 'local' AND auth_method = 'peer' AND o LIKE 'map=%'"
            ).fetchall()
            if ident is None or not maps:
                raise RuntimeError(
                    "the server's Unix socket takes no peer authentication with an ident map, "
                    "so PgBouncer (which cannot run as root) cannot log in through it"
                )
            self._ident_file = Path(ident[0])
            self._ident_mark = f"pgbouncer-{secrets.token_hex(6)}"
            lines = "".join(
                f"{name} {os_user} {role}  # {self._ident_mark}\n"
                for (name,) in maps
                for role in self.passwords
            )
            with self._ident_file.open("a") as f:
                f.write(lines)
            conn.execute("SELECT pg_reload_conf()")

    def _take_back(self) -> None:
        mark, self._ident_mark = self._ident_mark, None
        if self._ident_file is None:
            return
        try:
            text = self._ident_file.read_text()
            kept = "".join(line for line in text.splitlines(True) if f"# {mark}" not in line)
            # Rewritten in place: the file keeps its owner and mode.
            with self._ident_file.open("r+") as f:
                f.write(kept)
                f.truncate()
            with psycopg.connect(self._superuser_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
        except (OSError, psycopg.Error):
            # The server is gone (or restarted, which rewrote the file): nothing to take back.
            pass


def _scram_secret(password: str, iterations: int = 4096) -> str:
    """``password``'s SCRAM-SHA-256 secret, as PostgreSQL stores it (RFC 5802 / 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
