"""Failure behaviour: pool exhaustion, statement timeouts, a PostgreSQL restart mid-run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agency_data import AgencyDataError, BackendUnavailable, DataLayer, PoolTimeout, QueryTimeout
from agency_data.embedded import EmbeddedPostgres
from tests.conftest import FAST_POSTGRES, holding_connections, make_config


async def test_pool_exhaustion_fails_after_the_wait(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, postgresql={"pool_max_size": 2, "pool_timeout": 0.3}
    )
    async with DataLayer(config) as dl:
        async with holding_connections(dl, 2):
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match="pool_max_size") as info:
                await dl.agents.count()
            assert 0.25 < time.monotonic() - started < 3
            assert isinstance(info.value, BackendUnavailable)
        assert await dl.agents.count() == 0  # the pool is fine again


async def test_configured_statement_timeout(database: str, redis_url: str, tmp_path: Path) -> None:
    config = make_config(database, redis_url, tmp_path, postgresql={"statement_timeout": 0.1})
    async with DataLayer(config) as dl:
        with pytest.raises(QueryTimeout):
            await dl.execute("SELECT pg_sleep(1)")
        assert await dl.fetch_value("SELECT 41 + 1") == 42


async def test_restart_costs_only_the_in_flight_calls(
    redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    dsn = pg.acquire()
    config = make_config(
        dsn, redis_url, tmp_path, postgresql={"pool_timeout": 1.0, "pool_max_size": 4}
    )
    created: list[str] = []
    failures: list[AgencyDataError] = []
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            name = f"w{i}-{n}"
            n += 1
            try:
                await dl.agents.create(name=name, type="t")
                created.append(name)
            except AgencyDataError as exc:  # only our errors: never a raw driver one
                failures.append(exc)
                await asyncio.sleep(0.05)

    try:
        async with DataLayer(config) as dl:
            writers = [asyncio.create_task(writer(i)) for i in range(4)]
            # A call that is certainly in flight when the server goes down.
            in_flight = asyncio.create_task(dl.execute("SELECT pg_sleep(10)"))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pg.stop)
            with pytest.raises(BackendUnavailable):
                await in_flight
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pg.start)
            before = len(created)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*writers)

            # Short writes either slipped through or waited for the pool; any that failed
            # failed as "unavailable", never with a raw driver error.
            assert all(isinstance(f, BackendUnavailable) for f in failures), failures
            assert len(created) > before, "the pool recovered by itself"
            stored = {row["name"] for row in await dl.fetch("SELECT name FROM agents")}
            assert set(created) <= stored, "every acknowledged write survived"
            assert (await dl.health()).status == "ok"
    finally:
        pg.release()
