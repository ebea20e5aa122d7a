"""The embedded servers: start, persist across restarts, shared by processes, recover from crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded._server import process_alive
from tests.conftest import FAST_POSTGRES

# A child process that opens a DataLayer on a data directory, reports on itself as JSON, and
# then closes, waits, or dies without cleaning up.
CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from agency_data import DataLayer

    data_dir, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]

    async def main():
        dl = DataLayer(
            embedded={"data_dir": data_dir, "postgres_settings": {"fsync": "off"}},
            migration={"backup_before_migration": False},
        )
        await dl.connect()
        await dl.execute("INSERT INTO agents (name, type) VALUES (%s, 'child')", [name])
        await dl.redis.set("child:" + name, "here")
        pid = int(open(os.path.join(data_dir, "postgres", "postmaster.pid")).readline())
        print(json.dumps({"postmaster": pid}), flush=True)
        if mode == "crash":
            os._exit(0)  # no cleanup, like a process killed mid-run
        if mode == "hold":
            time.sleep(1.5)
        await dl.aclose()

    asyncio.run(main())
    """
)


def config(data_dir: Path, **embedded: object) -> DataLayerConfig:
    return DataLayerConfig(
        embedded={"data_dir": data_dir, "postgres_settings": FAST_POSTGRES, **embedded},
        migration={"backup_before_migration": False},
    )


def spawn(tmp_path: Path, data_dir: Path, mode: str, name: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(script), str(data_dir), mode, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def report(child: subprocess.Popen[str]) -> dict[str, int]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


def postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return False
    return psutil.pid_exists(int(pid_file.read_text().splitlines()[0]))


def wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while process_alive(pid, "") and time.monotonic() < deadline:
        time.sleep(0.01)


async def names(dl: DataLayer) -> set[str]:
    rows = await dl.fetch("SELECT name FROM agents")
    return {row["name"] for row in rows}


async def test_data_persists_across_restarts(tmp_path: Path, data_dir: Path) -> None:
    async with DataLayer(config(data_dir)) as dl:
        await dl.execute("INSERT INTO agents (name, type) VALUES ('keeper', 'memory')")
        await dl.redis.set("kept", "yes")
        assert (await dl.health()).status == "ok"
    assert not postmaster_running(data_dir), "the last user out stops the server"

    async with DataLayer(config(data_dir)) as dl:
        assert await names(dl) == {"keeper"}
        assert await dl.redis.get("kept") == b"yes"
        report_ = await dl.migrate()
        assert report_.applied == []  # the schema was kept too


async def test_two_processes_share_one_server(tmp_path: Path, data_dir: Path) -> None:
    # Two children race to initialise and start the same fresh data directory.
    children = [spawn(tmp_path, data_dir, "hold", f"child-{i}") for i in range(2)]
    pids = {report(child)["postmaster"] for child in children}
    assert len(pids) == 1, "both processes must use the same server"
    assert not postmaster_running(data_dir), "the last of them stops it"

    async with DataLayer(config(data_dir)) as dl:
        # A third process attaches to our server and leaves without stopping it.
        child_pid = report(spawn(tmp_path, data_dir, "close", "late"))["postmaster"]
        assert postmaster_running(data_dir)
        own_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
        assert child_pid == own_pid
        assert await names(dl) == {"child-0", "child-1", "late"}
        assert await dl.redis.get("child:late") == b"here"
        assert (await dl.health()).status == "ok"


async def test_recovers_from_a_crashed_run(tmp_path: Path, data_dir: Path) -> None:
    info = report(spawn(tmp_path, data_dir, "crash", "before-crash"))
    # The servers outlive the dead process; kill them too, as a power cut would.
    valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    for pid in (info["postmaster"], valkey_pid):
        os.kill(pid, signal.SIGKILL)
    for pid in (info["postmaster"], valkey_pid):
        wait_until_dead(pid)
    assert (data_dir / "postgres" / "postmaster.pid").exists(), "a stale pid file is left behind"

    async with DataLayer(config(data_dir)) as dl:
        assert await names(dl) == {"before-crash"}  # committed before the crash: still there
        assert await dl.redis.get("child:before-crash") == b"here"  # AOF replayed
    assert not postmaster_running(data_dir), "the dead process's lease no longer holds it open"


async def test_servers_can_outlive_the_layer(tmp_path: Path, data_dir: Path) -> None:
    async with DataLayer(config(data_dir, stop_on_close=False)):
        pass
    assert postmaster_running(data_dir)
    async with DataLayer(config(data_dir)) as dl:
        assert (await dl.health()).status == "ok"
    assert not postmaster_running(data_dir)


@pytest.mark.parametrize("section", ["postgresql", "redis"])
async def test_configured_servers_are_used_instead(
    section: str, database: str, redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    values: dict[str, object] = {
        "embedded": {"data_dir": data_dir, "postgres_settings": FAST_POSTGRES},
        "migration": {"backup_before_migration": False},
    }
    values[section] = {"dsn": database} if section == "postgresql" else {"url": redis_url}
    async with DataLayer(DataLayerConfig(**values)) as dl:  # type: ignore[arg-type]
        assert (await dl.health()).status == "ok"
        assert (data_dir / "postgres").exists() == (section == "redis")
        assert (data_dir / "valkey").exists() == (section == "postgresql")
