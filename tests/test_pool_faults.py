"""Pool faults: sockets numbered past select()'s limit, a server that is down, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agency_data import BackendUnavailable, DataLayer, PoolTimeout, QueryError, StorageFull
from agency_data.embedded import EmbeddedPostgres
from tests.conftest import FAST_POSTGRES, DatabaseDsn, holding_connections, make_config

# select() cannot watch a descriptor numbered FD_SETSIZE (1024) or higher.
_FD_SETSIZE = 1024


@contextlib.contextmanager
def _descriptors_taken_below(number: int) -> Iterator[None]:
    """Hold every free descriptor below ``number``, so new sockets are numbered above it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = number + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised_hard = hard if hard == resource.RLIM_INFINITY else max(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, raised_hard))
        except (ValueError, OSError):
            pytest.skip(f"cannot raise RLIMIT_NOFILE to {needed} to open that many descriptors")
    held: list[int] = []
    try:
        # The kernel hands out the lowest free number, so this fills every gap below too.
        while not held or held[-1] < number:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connections_numbered_past_1024_are_checked_out(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, postgresql={"pool_max_size": 4, "pool_timeout": 5.0}
    )
    with _descriptors_taken_below(_FD_SETSIZE + 100):
        async with DataLayer(config) as dl:
            assert await dl.fetch_value("SELECT 41 + 1") == 42

            # Every connection the pool has, checked out at once, each running a query.
            pids: list[int] = []
            sockets: list[int] = []
            all_out = asyncio.Barrier(4)

            async def check_out() -> None:
                async with dl.pool.connection() as conn:
                    sockets.append(conn.pgconn.socket)
                    row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
                    assert row is not None
                    pids.append(row["pid"])
                    await all_out.wait()

            await asyncio.gather(*(check_out() for _ in range(4)))
            assert min(sockets) >= _FD_SETSIZE, sockets  # the case this test is about

            # The cheap check still sees a dead connection on such a socket: the server ends
            # every one of them, and no caller gets a connection-lost error for it.
            async with await psycopg.AsyncConnection.connect(
                database.superuser, autocommit=True
            ) as admin:
                for pid in pids:
                    await admin.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])
            values = await asyncio.gather(*(dl.fetch_value("SELECT 1") for _ in range(4)))
            assert values == [1, 1, 1, 1]
            assert await dl.agents.count() == 0


async def test_outage_says_unreachable_not_pool_too_small(
    redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    secret = "s3cret-not-to-be-shown"
    pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    # The embedded server lets us in by peer authentication; the password is never asked
    # for, but it is in the DSN, so it must not reach a message.
    dsn = f"{pg.acquire()}&password={secret}"
    config = make_config(
        dsn,
        redis_url,
        tmp_path,
        postgresql={"pool_timeout": 1.0, "pool_min_size": 2, "pool_max_size": 2},
    )
    try:
        async with DataLayer(config) as dl:
            assert await dl.fetch_value("SELECT 1") == 1
            await asyncio.to_thread(pg.stop)
            try:
                with pytest.raises(BackendUnavailable) as info:
                    await dl.fetch_value("SELECT 1")
                message = str(info.value)
                assert not isinstance(info.value, PoolTimeout), message
                assert "PostgreSQL is unreachable" in message
                assert "pool_max_size" not in message
                # The latest connection attempt's own error (libpq's words, on one line).
                assert "connection" in message
                assert "failed:" in message
                assert "\n" not in message
                for exc in (info.value, info.value.__cause__):
                    assert secret not in str(exc)
                    assert secret not in repr(exc)

                # The health probe says why, too.
                health = await dl.health()
                assert health.status == "down"
                postgres = health.components["postgresql"]
                assert postgres.error is not None
                assert "latest connection attempt failed" in postgres.error
                assert secret not in postgres.error
            finally:
                await asyncio.to_thread(pg.start)

            # Back up: the pool reconnects by itself, and a busy pool reads as busy again.
            for _ in range(100):
                with contextlib.suppress(BackendUnavailable):
                    assert await dl.fetch_value("SELECT 1") == 1
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the pool did not reconnect after the server came back")
            # Connections made before the restart are dead: the pool drops them on a check and
            # makes new ones, backing off between attempts (seconds, past pool_timeout).
            await dl.pool.check()
            for _ in range(300):
                if dl.pool.get_stats().get("pool_available", 0) >= 2:
                    break
                await asyncio.sleep(0.1)
            async with holding_connections(dl, 2):
                with pytest.raises(PoolTimeout, match="pool_max_size"):
                    await dl.fetch_value("SELECT 1")
    finally:
        pg.release()


async def test_connect_refused_at_startup_says_why(redis_url: str, tmp_path: Path) -> None:
    # Nothing listens on this socket directory: the attempt's own error is in the message.
    missing = tmp_path / "no-server-here"
    dsn = f"postgresql://app:hunter2-secret@/agency_data?host={missing}"
    config = make_config(
        dsn,
        redis_url,
        tmp_path,
        postgresql={"pool_timeout": 0.5},
        migration={"auto_migrate": False},
    )
    with pytest.raises(BackendUnavailable) as info:
        async with DataLayer(config):
            pass
    message = str(info.value)
    assert "the latest attempt failed" in message
    assert "No such file or directory" in message
    assert "hunter2-secret" not in message


_RAISE_DISK_FULL = """
DO $$
BEGIN
    INSERT INTO agents (name, type) VALUES ('written-before-the-disk-filled', 't');
    RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
END
$$
"""


async def test_disk_full_is_storage_full(dl: DataLayer) -> None:
    # PostgreSQL itself raises 53100 here, as it does when a write finds the volume full.
    with pytest.raises(StorageFull) as info:
        await dl.execute(_RAISE_DISK_FULL)
    assert isinstance(info.value, QueryError)
    assert info.value.sqlstate == "53100"
    message = str(info.value)
    assert "ran out of disk space" in message
    assert "No space left on device" in message
    assert "wrote nothing" in message
    assert "Free space on the volume" in message
    # The statement wrote nothing, and the connection is fine for the next call.
    assert await dl.agents.count() == 0

    async def write_then_fill_the_disk() -> None:
        async with dl.transaction():
            await dl.execute("INSERT INTO agents (name, type) VALUES ('rolled-back', 't')")
            await dl.execute(_RAISE_DISK_FULL)

    async with dl.transaction():
        await dl.execute("INSERT INTO agents (name, type) VALUES ('kept', 't')")
    with pytest.raises(StorageFull):
        await write_then_fill_the_disk()
    names = [row["name"] for row in await dl.fetch("SELECT name FROM agents")]
    assert names == ["kept"]


async def test_other_resource_errors_are_not_storage_full(dl: DataLayer) -> None:
    with pytest.raises(QueryError) as info:
        await dl.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'out of memory' USING ERRCODE = 'out_of_memory'; END $$"
        )
    assert not isinstance(info.value, StorageFull)
    assert info.value.sqlstate == "53200"


async def test_resetting_after_raw_sql_keeps_prepared_statements(
    dl: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    # Raw SQL marks its connection for a reset; psycopg prepares a query it ran five times.
    # The reset must leave those statements alone, or the connection is lost on reuse.
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        for i in range(30):
            assert await dl.fetch_value("SELECT %s::int + 1", [i]) == i + 1
    assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.text
    stats = dl.pool.get_stats()
    assert stats.get("connections_lost", 0) == 0
    # The reset still clears what the caller's SQL left behind.
    await dl.execute("SET application_name = 'left-behind'")
    assert await dl.fetch_value("SHOW application_name") != "left-behind"
