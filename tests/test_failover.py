"""Failover on real servers: kill -9 the primary, promote its synchronous standby, write again
through a multi-host DSN, then rejoin the old primary as a standby with pg_rewind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded import EmbeddedPostgres
from agency_data.errors import AgencyDataError
from tests.conftest import ServerSet, reachable_dir
from tests.test_cli import agency_data
from tests.test_isolation import postmaster_pid
from tests.test_prewarm import superuser_dsn
from tests.test_replicas import scalar, stop_servers

pytestmark = pytest.mark.timeout(300)


def multi_host(primary: Path, standby: Path, user: str) -> str:
    hosts = ",".join(str(EmbeddedPostgres(f).pg_socket_dir) for f in (primary, standby))
    return make_conninfo(
        "", host=hosts, dbname="agency_data", user=user, target_session_attrs="read-write"
    )


async def test_a_promoted_synchronous_standby_has_every_acknowledged_write(
    tmp_path_factory: pytest.TempPathFactory, servers: ServerSet, tmp_path: Path
) -> None:
    root = reachable_dir(tmp_path_factory)
    primary_dir, standby_dir = root / "a", root / "b"
    embedded = {"data_dir": primary_dir, "stop_on_close": False}
    async with DataLayer(
        DataLayerConfig(
            embedded=embedded,
            redis={"url": servers.redis_url},
            migration={"backup_before_migration": False},
        )
    ):
        pass  # roles and schema, which the standby copies
    env = {"AGENCY_DATA_EMBEDDED__DATA_DIR": str(primary_dir)}
    made = agency_data(
        "replica", "create", "--from", str(primary_dir), "--data-dir", str(standby_dir),
        tmp_path=tmp_path, **env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "streaming through slot agency_replica_" in made.stdout
    # The standby copied the sealed primary; its own server starts now and stays up.
    standby = EmbeddedPostgres(standby_dir)
    standby.acquire()
    primary = EmbeddedPostgres(primary_dir)
    primary.acquire()
    try:
        with psycopg.connect(superuser_dsn(primary_dir), autocommit=True) as conn:
            # Synchronous: a commit is acknowledged once the standby has flushed it.
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
        for _ in range(100):
            if scalar(superuser_dsn(primary_dir), "SELECT count(*) FROM pg_stat_replication "
                      "WHERE sync_state = 'sync'") == 1:  # fmt: skip
                break
            await asyncio.sleep(0.05)
        config = DataLayerConfig(
            postgresql={
                "dsn": multi_host(primary_dir, standby_dir, "agency_app"),
                "admin_dsn": multi_host(primary_dir, standby_dir, "agency_owner"),
                "pool_min_size": 1,
                "pool_max_size": 4,
                "pool_timeout": 2.0,
            },
            redis={"url": servers.redis_url},
            migration={"auto_migrate": False},
        )
        acked: list[UUID] = []
        acked_at: list[float] = []
        failed = 0
        async with DataLayer(config) as dl:
            agents = dl.tenant("acme").agents

            async def writer() -> None:
                nonlocal failed
                while len(acked) < 200:
                    try:
                        agent = await agents.create(f"a{len(acked)}", "worker")
                    except AgencyDataError:
                        failed += 1
                        await asyncio.sleep(0.05)
                        continue
                    acked.append(agent.id)
                    acked_at.append(time.monotonic())
                    if len(acked) == 100:
                        halfway.set()

            halfway = asyncio.Event()
            writing = asyncio.create_task(writer())
            await asyncio.wait_for(halfway.wait(), 60)
            os.kill(postmaster_pid(primary_dir), signal.SIGKILL)
            killed_at = time.monotonic()
            promoted = await asyncio.to_thread(
                agency_data, "replica", "promote", "--data-dir", str(standby_dir),
                tmp_path=tmp_path, **env,
            )  # fmt: skip
            assert promoted.returncode == 0, promoted.stderr
            promoted_at = time.monotonic()
            await asyncio.wait_for(writing, 120)
        # Writes acknowledged once the promotion is done are the new primary's (the old
        # primary's backends, which may finish a commit or two after the kill, are long gone).
        back_at = min(t for t in acked_at if t > promoted_at)
        print(
            f"writes succeeded again {back_at - killed_at:.2f} s after the kill; "
            f"{failed} failed meanwhile"
        )
        on_new = scalar(
            superuser_dsn(standby_dir),
            "SELECT array_agg(id) FROM agents WHERE tenant_id = 'acme'",
        )
        assert isinstance(on_new, list)
        assert set(acked) <= set(on_new), "an acknowledged write is missing on the new primary"
        # The old primary rejoins as a standby of the new one (pg_rewind), then catches up.
        primary.release(stop_if_last=False)
        rejoined = agency_data(
            "replica", "rejoin", "--data-dir", str(primary_dir), "--primary", str(standby_dir),
            tmp_path=tmp_path, **env,
        )  # fmt: skip
        assert rejoined.returncode == 0, rejoined.stderr
        primary.acquire()
        assert scalar(superuser_dsn(primary_dir), "SELECT pg_is_in_recovery()") is True
        for _ in range(200):
            count = scalar(
                superuser_dsn(primary_dir), "SELECT count(*) FROM agents WHERE tenant_id = 'acme'"
            )
            if count == len(on_new):
                break
            await asyncio.sleep(0.05)
        assert count == len(on_new)
    finally:
        for server in (primary, standby):
            server.release(stop_if_last=False)
        stop_servers(primary_dir, standby_dir)
