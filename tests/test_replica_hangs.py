"""A standby that hangs (stopped): the reads in flight on it and a read-only transaction on it
are cut once a check finds it silent, even when every connection of its pool is out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agency_data import DataLayer
from tests.conftest import ServerSet, reachable_dir
from tests.test_replicas import Pair, started_pair

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, servers: ServerSet) -> Iterator[Pair]:
    yield from started_pair(reachable_dir(tmp_path_factory), servers.redis_url)


async def test_reads_in_flight_on_a_hung_standby_whose_pool_is_full_are_cut(
    pair: Pair, redis_url: str
) -> None:
    config = pair.config(
        redis_url, max_replica_lag=60, pool_min_size=1, pool_max_size=1,
        replica_check_interval=0.5,
    )  # fmt: skip
    async with DataLayer(config) as layer:
        await asyncio.to_thread(pair.caught_up)
        assert layer._replicas is not None
        replica = layer._replicas.replicas[0]
        assert replica.state.up
        # One routed read holds the replica's only connection when the standby hangs.
        read = asyncio.create_task(layer.fetch_value("SELECT 1 FROM pg_sleep(0.5)", replica=True))
        for _ in range(100):
            if replica.lent:
                break
            await asyncio.sleep(0.01)
        assert replica.lent, "the read did not go to the standby"
        with pair.hung():
            # Checks run every 0.5 s with a 2 s bound: a hung standby is found within ~5 s,
            # its reads cut and served by the primary.
            done, _ = await asyncio.wait({read}, timeout=10)
            up = replica.state.up
        result = await asyncio.wait_for(read, 30)
        assert result == 1
        assert done, f"the read still hung after 10 s (replica up={up})"


async def test_a_readonly_transaction_on_a_hung_standby_is_cut(pair: Pair, redis_url: str) -> None:
    config = pair.config(redis_url, max_replica_lag=60, replica_check_interval=0.5)
    async with DataLayer(config) as layer:
        await asyncio.to_thread(pair.caught_up)
        assert layer._replicas is not None
        replica = layer._replicas.replicas[0]
        async with layer.transaction(readonly=True) as tx:
            row = await (await tx.conn.execute("SELECT pg_is_in_recovery() AS r")).fetchone()
            assert row is not None
            assert row["r"] is True
            with pair.hung():
                statement = asyncio.create_task(tx.conn.execute("SELECT 1"))
                done, _ = await asyncio.wait({statement}, timeout=10)
                up = replica.state.up
            if not done:
                await asyncio.gather(statement, return_exceptions=True)
        assert not up, "the checks did not find the standby hung"
        assert done, "the transaction's statement still hung after 10 s"
