"""Redis stopped mid-run: the cache degrades, PostgreSQL writes go on, everything recovers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agency_data import BackendUnavailable, DataLayer, Message
from agency_data.embedded import EmbeddedValkey
from tests.conftest import make_config


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "own-valkey")
    server.acquire()
    yield server
    server.release()


@pytest.fixture
async def layer(database: str, valkey: EmbeddedValkey, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(
        database, valkey.url, tmp_path, cache={"record_ttl": 60, "retry_after": 0.2, "l1_ttl": 30}
    )
    async with DataLayer(config) as dl:
        yield dl


async def test_cache_degrades_and_recovers(layer: DataLayer, valkey: EmbeddedValkey) -> None:
    await layer.cache.set("in-l1", "kept")
    agent = await layer.agents.create(name="a", type="t")
    await layer.agents.get(agent.id)  # cached

    valkey.stop()
    # L1 is set aside as soon as the invalidation listener notices: it would miss changes.
    assert await _until(lambda: not layer.cache.stats().l1_serving, 2.0)
    assert await layer.cache.get("in-l1") is None  # a miss, not an error
    assert await layer.cache.get("never-cached") is None
    await layer.cache.set("dropped", 1)  # dropped, with a counter
    await layer.cache.invalidate("x*")
    stats = layer.cache.stats()
    assert stats.degraded_reads >= 1
    assert stats.degraded_writes >= 2
    assert not stats.redis_available

    # PostgreSQL writes are neither lost nor blocked; their invalidations wait for Redis.
    updated = await layer.agents.update(agent.id, name="renamed-while-down")
    created = await layer.tasks.create(type="t")
    assert (await layer.agents.get(agent.id)).name == "renamed-while-down"
    assert (await layer.tasks.get(created.id)).id == created.id
    assert (await layer.health()).status == "degraded"

    valkey.start()
    await asyncio.sleep(0.3)  # past retry_after
    await layer.cache.set("back", 1)
    assert layer.cache.stats().l1_entries == 0, "L1 was dropped: it may have missed changes"
    assert await layer.cache.get("back") == 1
    assert await layer.cache.get("in-l1") == "kept"  # Valkey's append-only file kept it
    assert (await layer.agents.get(agent.id)).name == updated.name
    assert (await layer.health()).status == "ok"


async def test_locks_and_sessions_fail_loudly_while_down(
    layer: DataLayer, valkey: EmbeddedValkey
) -> None:
    valkey.stop()
    with pytest.raises(BackendUnavailable):
        async with layer.lock("resource", ttl=5):
            pass
    with pytest.raises(BackendUnavailable):
        await layer.sessions.create(agent_id="a")
    valkey.start()
    async with layer.lock("resource", ttl=5) as lock:
        assert lock.fencing_token is not None


async def test_subscriber_keeps_receiving_after_a_restart(
    layer: DataLayer, valkey: EmbeddedValkey
) -> None:
    received: list[Message] = []
    subscription = layer.pubsub.subscribe("agent:status", reconnect_delay=0.05)

    async def listen() -> None:
        async for message in subscription:
            received.append(message)

    task = asyncio.create_task(listen())
    try:
        await _until(lambda: True, 0.2)
        await _publish_until_received(layer, received, {"n": 1})
        valkey.stop()
        await asyncio.sleep(0.2)
        valkey.start()
        await _publish_until_received(layer, received, {"n": 2})
        assert [m.data for m in received][-1] == {"n": 2}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await subscription.aclose()


async def _publish_until_received(
    layer: DataLayer, received: list[Message], data: dict[str, int]
) -> None:
    # Pub/sub is at-most-once: until the subscription is (re)established, messages are lost.
    for _ in range(100):
        with contextlib.suppress(BackendUnavailable):
            await layer.pubsub.publish("agent:status", data)
        if await _until(lambda: any(m.data == data for m in received), 0.1):
            return
    raise AssertionError(f"{data} never arrived")


async def _until(condition: object, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.01)
    return bool(callable(condition) and condition())
