"""Concurrent Redis commands share round trips (auto-pipelining), on a server and on a Cluster;
each caller still gets its own reply or its own error, and a lone caller goes alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from agency_data import DataLayer, LockNotAcquired
from agency_data.redis.pipelining import AutoPipeline
from tests.batching_support import check_gathered, spy
from tests.conftest import make_config


@pytest.fixture
async def layer(
    database: str, redis_section: dict[str, Any], tmp_path: Path
) -> AsyncIterator[DataLayer]:
    # L1 off: every cache read goes to Redis.
    config = make_config(database, "", tmp_path, redis=redis_section, cache={"l1": False})
    async with DataLayer(config) as dl:
        yield dl


def pipeline(dl: DataLayer) -> AutoPipeline:
    backend = dl._cache_backend
    assert backend is not None
    return backend.pipeline


async def test_concurrent_cache_gets_share_one_mget(layer: DataLayer) -> None:
    await layer.cache.set_many({f"k{i}": {"n": i} for i in range(100)}, ttl=60)
    seen = spy(pipeline(layer)._gets)
    keys = [f"k{i}" for i in range(100)] + ["absent", "k7"]
    got = await asyncio.gather(*(layer.cache.get(k, "none") for k in keys))
    assert got == [{"n": i} for i in range(100)] + ["none", {"n": 7}]
    # The first went alone at once; the rest, made while it ran, shared one MGET.
    check_gathered(seen, 102)


async def test_a_lone_get_goes_alone(layer: DataLayer) -> None:
    await layer.cache.set("solo", 1, ttl=60)
    seen = spy(pipeline(layer)._gets)
    for _ in range(3):
        assert await layer.cache.get("solo") == 1
    assert seen == {"one": [1, 1, 1], "many": []}


async def test_concurrent_sets_and_deletes_share_a_pipeline(layer: DataLayer) -> None:
    seen = spy(pipeline(layer)._commands)
    await asyncio.gather(*(layer.cache.set(f"w{i}", i, ttl=60) for i in range(50)))
    check_gathered(seen, 50)
    assert await layer.cache.get_many([f"w{i}" for i in range(50)]) == {
        f"w{i}": i for i in range(50)
    }
    await asyncio.gather(*(layer.cache.delete(f"w{i}") for i in range(0, 50, 2)))
    left = await layer.cache.get_many([f"w{i}" for i in range(50)])
    assert left == {f"w{i}": i for i in range(1, 50, 2)}


async def test_each_caller_gets_its_own_error(layer: DataLayer) -> None:
    shared = pipeline(layer)
    await layer.redis.set("{p}text", "not a number")
    await layer.redis.set("{p}count", "1")
    # Held in flight so that the rest gather into one pipeline.
    first = asyncio.create_task(shared.execute("GET", "{p}count"))
    await asyncio.sleep(0)
    results = await asyncio.gather(
        shared.execute("INCR", "{p}count"),
        shared.execute("INCR", "{p}text"),
        shared.execute("INCR", "{p}count"),
        return_exceptions=True,
    )
    assert await first == b"1"
    assert results[0] == 2
    assert results[2] == 3
    assert isinstance(results[1], ResponseError), results


async def test_concurrent_lock_scripts_share_round_trips(layer: DataLayer) -> None:
    scripts = layer.scripts
    assert scripts._pipeline is not None
    seen = spy(scripts._pipeline._commands)
    locks = [layer.lock(f"l{i}", ttl=10) for i in range(20)]
    tokens = await asyncio.gather(*(lock.acquire() for lock in locks))
    assert all(isinstance(t, int) and t > 0 for t in tokens)
    assert sum(seen["one"]) + sum(seen["many"]) == 20
    assert len(seen["many"]) >= 1
    # Another holder is refused each of them, one caller at a time or gathered.
    rivals = [layer.lock(f"l{i}", ttl=10) for i in range(20)]
    refused = await asyncio.gather(*(r.acquire() for r in rivals), return_exceptions=True)
    assert all(isinstance(r, LockNotAcquired) for r in refused), refused
    await asyncio.gather(*(lock.release() for lock in locks))
    assert not any(await asyncio.gather(*(lock.locked() for lock in locks)))


async def test_scripts_flushed_from_the_server_are_loaded_again(layer: DataLayer) -> None:
    lock = layer.lock("warm", ttl=10)
    await lock.acquire()
    await lock.release()
    await layer.redis.script_flush()
    locks = [layer.lock(f"after-flush-{i}", ttl=10) for i in range(10)]
    tokens = await asyncio.gather(*(lock.acquire() for lock in locks))
    assert len(tokens) == 10
    await asyncio.gather(*(lock.release() for lock in locks))


async def test_concurrent_session_reads_share_one_mget(layer: DataLayer) -> None:
    made = [await layer.sessions.create("agent-1", {"i": i}, ttl=60) for i in range(30)]
    seen = spy(pipeline(layer)._gets)
    got = await asyncio.gather(*(layer.sessions.get(s.id) for s in made))
    assert [s.data for s in got] == [{"i": i} for i in range(30)]
    check_gathered(seen, 30)


async def test_a_cancelled_caller_leaves_the_others_their_replies(layer: DataLayer) -> None:
    await layer.cache.set_many({f"c{i}": i for i in range(10)}, ttl=60)
    busy = asyncio.create_task(layer.cache.get("c0"))
    await asyncio.sleep(0)
    cut = asyncio.create_task(asyncio.wait_for(layer.cache.get("c1"), timeout=0))
    rest = [asyncio.create_task(layer.cache.get(f"c{i}")) for i in range(2, 10)]
    with contextlib.suppress(TimeoutError):
        await cut
    assert [await r for r in rest] == list(range(2, 10))
    assert await busy == 0


async def test_a_lost_connection_fails_every_caller_of_the_round_trip(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, cache={"l1": False})
    async with DataLayer(config) as dl:
        shared = pipeline(dl)
        await dl.cache.set("x", 1, ttl=60)
        broken = ConnectionError("the connection went away")

        async def lost(_: list[Any]) -> Any:
            raise broken

        shared._gets._many = lost
        first = asyncio.create_task(dl.cache.get("x"))
        await asyncio.sleep(0)
        # The cache degrades: the gathered callers see misses, not errors.
        assert await asyncio.gather(*(dl.cache.get("x", "miss") for _ in range(5))) == ["miss"] * 5
        assert await first == 1
        assert dl.cache.stats().degraded_reads == 5
