"""Locks, sessions, pub/sub, streams and Lua scripts, on standalone Valkey and on a Cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agency_data import (
    DataLayer,
    LockNotAcquired,
    LockNotOwned,
    Message,
    NotFound,
    StreamMessage,
    ValidationError,
)
from tests.conftest import make_config


@pytest.fixture
async def dl(
    database: str, redis_section: dict[str, Any], tmp_path: Path
) -> AsyncIterator[DataLayer]:
    async with DataLayer(make_config(database, "", tmp_path, redis=redis_section)) as layer:
        yield layer


# -- locks ---------------------------------------------------------------------------------------


async def test_lock_basics_and_growing_fencing_tokens(dl: DataLayer) -> None:
    async with dl.lock("resource:7", ttl=5) as first:
        assert first.held
        assert first.fencing_token is not None
        with pytest.raises(LockNotAcquired, match="held by someone else"):
            await dl.lock("resource:7", ttl=5, wait=0.1).acquire()
    async with dl.lock("resource:7", ttl=5) as second:
        assert second.fencing_token is not None
        assert second.fencing_token > first.fencing_token
    async with dl.tenant("other").lock("resource:7", ttl=5):
        pass  # tenants have their own locks


async def test_fifty_contenders_never_overlap(dl: DataLayer) -> None:
    holders = 0
    most = 0
    tokens: list[int] = []

    async def contend() -> None:
        nonlocal holders, most
        async with dl.lock("hot", ttl=5, wait=30) as lock:
            holders += 1
            most = max(most, holders)
            assert lock.fencing_token is not None
            tokens.append(lock.fencing_token)
            await asyncio.sleep(0.002)
            holders -= 1

    await asyncio.gather(*(contend() for _ in range(50)))
    assert most == 1
    assert len(tokens) == 50
    assert tokens == sorted(tokens), "each grant gets a larger fencing token"
    assert dl.cache.stats().lock_waits > 0


async def test_a_crashed_holder_lock_expires(dl: DataLayer) -> None:
    crashed = dl.lock("job", ttl=0.2)
    await crashed.acquire()  # and never released: the holder "crashed"
    async with dl.lock("job", ttl=5, wait=2) as next_holder:
        assert next_holder.fencing_token is not None


async def test_a_paused_holder_is_fenced_off(dl: DataLayer) -> None:
    await dl.admin.execute(
        "CREATE TABLE resources (id int PRIMARY KEY, value text, fence bigint NOT NULL)"
    )
    await dl.execute("INSERT INTO resources VALUES (7, 'initial', 0)")

    async def fenced_write(value: str, token: int) -> int:
        return await dl.execute(
            "UPDATE resources SET value = %s, fence = %s WHERE id = 7 AND fence < %s",
            [value, token, token],
        )

    slow = dl.lock("resource:7", ttl=0.2)
    slow_token = await slow.acquire()
    await asyncio.sleep(0.35)  # paused (GC, swap, a long await) past its TTL
    async with dl.lock("resource:7", ttl=5) as fast:
        assert fast.fencing_token is not None
        assert await fenced_write("fast", fast.fencing_token) == 1
    assert await fenced_write("slow", slow_token) == 0, "the stale holder's write is rejected"
    with pytest.raises(LockNotOwned, match="expired"):
        await slow.release()
    assert await dl.fetch_value("SELECT value FROM resources WHERE id = 7") == "fast"


async def test_auto_renewal_and_extend(dl: DataLayer) -> None:
    async with dl.lock("long", ttl=0.3, auto_renew=True) as lock:
        await asyncio.sleep(0.8)
        assert lock.held
        with pytest.raises(LockNotAcquired):
            await dl.lock("long", wait=0).acquire()
    lock = dl.lock("extend", ttl=0.3)
    await lock.acquire()
    await lock.extend(5, replace_ttl=True)
    await asyncio.sleep(0.4)
    await lock.release()
    with pytest.raises(LockNotOwned):
        await lock.release()


@pytest.mark.parametrize("kwargs", [{"ttl": -1}, {"ttl": 0}, {"wait": -1}, {"ttl": "5"}])
async def test_bad_lock_arguments(dl: DataLayer, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        dl.lock("x", **kwargs)


# -- sessions ------------------------------------------------------------------------------------


async def test_session_lifecycle(dl: DataLayer) -> None:
    session = await dl.sessions.create(agent_id="42", data={"goal": "plan"}, ttl=60)
    assert (await dl.sessions.get(session.id)).data == {"goal": "plan"}
    updated = await dl.sessions.update(session.id, {"step": 2})
    assert updated.data == {"goal": "plan", "step": 2}
    replaced = await dl.sessions.update(session.id, {"only": True}, merge=False)
    assert replaced.data == {"only": True}
    other = await dl.sessions.create(agent_id="42")
    await dl.sessions.create(agent_id="43")
    assert [s.id for s in await dl.sessions.list_by_agent("42")] == [session.id, other.id]
    await dl.sessions.delete(other.id)
    assert [s.id for s in await dl.sessions.list_by_agent(42)] == [session.id]
    with pytest.raises(NotFound):
        await dl.sessions.get(other.id)
    with pytest.raises(NotFound):
        await dl.sessions.delete(other.id)


async def test_sliding_expiry(dl: DataLayer) -> None:
    session = await dl.sessions.create(agent_id="a", ttl=0.4)
    for _ in range(4):
        await asyncio.sleep(0.2)
        touched = await dl.sessions.touch(session.id)  # keeps it alive
    assert touched.expires_at > session.expires_at
    await asyncio.sleep(0.6)
    with pytest.raises(NotFound, match="expired"):
        await dl.sessions.get(session.id)
    assert await dl.sessions.list_by_agent("a") == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.create(agent_id="a", ttl=0),
        lambda s: s.create(agent_id="a", data=[1]),
        lambda s: s.create(agent_id="a", data={"x": float("nan")}),
        lambda s: s.create(agent_id=""),
        lambda s: s.get(""),
    ],
)
async def test_bad_session_input(dl: DataLayer, call: Any) -> None:
    with pytest.raises(ValidationError):
        await call(dl.sessions)


# -- pub/sub -------------------------------------------------------------------------------------


async def test_publish_and_subscribe(dl: DataLayer) -> None:
    received: list[Message] = []
    stream = dl.pubsub.subscribe("agent:status", patterns=["task:*"])

    async def listen() -> None:
        async for message in stream:
            received.append(message)
            if message.pattern is not None:
                return

    task = asyncio.create_task(listen())
    for _ in range(200):  # at-most-once: publish until the subscription is in place
        await dl.pubsub.publish("agent:status", {"agent_id": "42", "status": "online"})
        if received:
            break
        await asyncio.sleep(0.01)
    await dl.pubsub.publish("task:done", [1, 2])
    await asyncio.wait_for(task, 5)
    await stream.aclose()
    assert received[0].channel == "agent:status"
    assert received[0].data == {"agent_id": "42", "status": "online"}
    assert received[-1].pattern == "task:*"
    assert received[-1].data == [1, 2]
    # Other tenants hear nothing of it.
    assert await dl.tenant("other").pubsub.publish("agent:status", {}) == 0


async def test_bad_messages(dl: DataLayer) -> None:
    with pytest.raises(ValidationError):
        await dl.pubsub.publish("c", object())
    with pytest.raises(ValidationError):
        await dl.pubsub.publish("c", "x" * (2 << 20))


# -- streams -------------------------------------------------------------------------------------


async def test_streams_deliver_at_least_once(dl: DataLayer) -> None:
    for i in range(5):
        await dl.streams.publish("jobs", {"i": i})

    async def take(consumer: str, n: int, claim_after: float = 30.0) -> list[StreamMessage]:
        got: list[StreamMessage] = []
        consume = dl.streams.consume(
            "jobs", "workers", consumer, count=n, block=0.2, claim_after=claim_after
        )
        async with contextlib.aclosing(consume) as messages:
            async for message in messages:
                got.append(message)
                if len(got) == n:
                    break
        return got

    first = await take("crashy", 3)  # ...and never acknowledged: this consumer "crashed"
    assert [m.data["i"] for m in first] == [0, 1, 2]
    rest = await take("steady", 2)
    assert [m.data["i"] for m in rest] == [3, 4]
    await dl.streams.ack("jobs", "workers", *(m.id for m in rest))
    assert await dl.streams.pending("jobs", "workers") == 3

    await asyncio.sleep(0.3)
    redelivered = await take("steady", 3, claim_after=0.2)
    assert [m.data["i"] for m in redelivered] == [0, 1, 2]
    assert all(m.attempts >= 2 for m in redelivered)
    await dl.streams.ack("jobs", "workers", *(m.id for m in redelivered))
    assert await dl.streams.pending("jobs", "workers") == 0


# -- Lua scripts ---------------------------------------------------------------------------------


async def test_scripts_run_and_survive_a_script_flush(dl: DataLayer) -> None:
    dl.scripts.register("incr_by", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = "ad:{default}:counter"
    assert await dl.scripts.run("incr_by", keys=[key], args=[5]) == 5
    # A restarted server has forgotten every script; EVALSHA then reloads it.
    await dl.redis.script_flush()  # on a Cluster: every node
    assert await dl.scripts.run("incr_by", keys=[key], args=[2]) == 7
    assert "incr_by" in dl.scripts.names
    assert len(dl.scripts.sha("incr_by")) == 40
    with pytest.raises(NotFound):
        await dl.scripts.run("nope")


async def test_everything_works_through_sentinel(
    database: str, sentinel: tuple[str, str], tmp_path: Path
) -> None:
    master, address = sentinel
    config = make_config(
        database, "", tmp_path, redis={"sentinel": {"master_name": master, "sentinels": [address]}}
    )
    async with DataLayer(config) as layer:
        assert (await layer.health()).status == "ok"
        await layer.cache.set("via-sentinel", {"ok": True})
        assert await layer.cache.get("via-sentinel") == {"ok": True}
        async with layer.lock("sentinel-lock", ttl=5) as lock:
            assert lock.held
        session = await layer.sessions.create(agent_id="s")
        assert (await layer.sessions.get(session.id)).agent_id == "s"
        await layer.pubsub.publish("c", 1)
