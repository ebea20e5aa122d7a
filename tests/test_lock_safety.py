"""Locks under cancellation and bad arguments: a cancelled acquire never leaves a lock held."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agency_data import DataLayer, LockNotOwned, ValidationError
from agency_data.models import DEFAULT_TENANT
from agency_data.redis.keys import Keys
from tests.conftest import make_config


async def test_a_cancelled_acquire_never_takes_the_lock(dl: DataLayer) -> None:
    probe = dl.lock("contended")
    for trial in range(60):
        holder = dl.lock("contended", ttl=0.03)
        await holder.acquire()
        waiter = dl.lock("contended", wait=2)
        # The holder's TTL runs out while the cancelled waiter may still be retrying.
        with contextlib.suppress(TimeoutError):
            token = await asyncio.wait_for(waiter.acquire(), 0.005 + (trial % 5) * 0.003)
            pytest.fail(f"trial {trial}: a cancelled acquire returned grant {token}")
        assert not waiter.held
        await asyncio.sleep(0.05)
        assert not await waiter.owned(), f"trial {trial}: the cancelled waiter holds the lock"
        assert not await probe.locked()


async def test_cancelling_a_renewing_holder_lets_go(dl: DataLayer) -> None:
    for trial in range(20):
        lock = dl.lock("renewed", ttl=0.06, auto_renew=True)
        await lock.acquire()
        await asyncio.sleep(0.01 * (trial % 4))
        await asyncio.wait_for(lock.release(), 2)
        assert not await lock.locked()


async def test_a_cancelled_stream_read_stops(dl: DataLayer) -> None:
    for trial in range(20):
        # Cancelling a step of an async generator ends it: each trial starts a consumer.
        consumer = dl.streams.consume("jobs", "g", "c1", block=1.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(consumer), 0.005 + 0.002 * (trial % 5))
        await consumer.aclose()
    await dl.streams.publish("jobs", {"n": 1})
    again = dl.streams.consume("jobs", "g", "c1", block=1.0)
    message = await asyncio.wait_for(anext(again), 5)
    assert message.data == {"n": 1}
    await again.aclose()


@pytest.mark.parametrize("seconds", [0, -1, 0.0004, math.nan, math.inf, "5", True, None])
async def test_extend_refuses_bad_times_and_keeps_the_lock(dl: DataLayer, seconds: Any) -> None:
    lock = dl.lock("kept", ttl=5)
    await lock.acquire()
    if seconds is None:
        await lock.extend(seconds)  # None: back to the lock's own ttl
    else:
        with pytest.raises(ValidationError, match="additional"):
            await lock.extend(seconds)
    assert lock.held
    assert await lock.owned()
    await lock.release()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": math.inf},
        {"ttl": math.nan},
        {"ttl": 1e300},
        {"wait": math.nan},
        {"wait": math.inf},
        {"wait": -0.5},
        {"auto_renew": "yes"},
    ],
)
async def test_lock_refuses_non_finite_times(dl: DataLayer, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        dl.lock("x", **kwargs)


async def test_locked_owned_and_extend_like_redis_py(dl: DataLayer) -> None:
    mine = dl.lock("shared", ttl=2)
    other = dl.lock("shared", ttl=2)
    assert not await mine.locked()
    await mine.acquire()
    assert await mine.locked()
    assert await other.locked()
    assert await mine.owned()
    assert not await other.owned()
    await mine.extend(10)  # added to what is left
    assert 11_000 < await dl.redis.pttl(_key(dl, "shared")) <= 12_000
    await mine.extend(1, replace_ttl=True)
    assert 0 < await dl.redis.pttl(_key(dl, "shared")) <= 1_000
    with pytest.raises(ValidationError, match="replace_ttl"):
        await mine.extend(1, replace_ttl="no")  # type: ignore[arg-type]
    with pytest.raises(LockNotOwned):
        await other.extend(5)  # never acquired
    await mine.release()
    assert not await mine.locked()


def _key(_dl: DataLayer, name: str) -> str:
    return Keys(DEFAULT_TENANT).lock(name)


BUSY = """
local started = os.clock()
while os.clock() - started < tonumber(ARGV[1]) do end
return 1
"""


async def _stall(url: str, seconds: float) -> None:
    """Keep Redis busy for ``seconds`` (a busy script on a connection of its own)."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.eval(BUSY, 0, seconds)
    finally:
        await client.aclose()


@pytest.fixture
async def slow(database: str, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A layer whose Redis replies time out after 0.2 s (and are then resent by redis-py)."""
    config = make_config(
        database, redis_url, tmp_path, redis={"socket_timeout": 0.2, "max_retries": 1}
    )
    async with DataLayer(config) as dl:
        warm = dl.lock("warm-up")  # the scripts are loaded: the stalled call is one EVALSHA
        await warm.acquire()
        await warm.extend(1)
        await warm.release()
        yield dl


async def test_a_resent_acquire_finds_its_own_grant(slow: DataLayer, redis_url: str) -> None:
    stall = asyncio.create_task(_stall(redis_url, 0.3))
    await asyncio.sleep(0.03)
    lock = slow.lock("resent", ttl=30)
    token = await lock.acquire()  # the first send times out; it ran all the same
    await stall
    assert lock.held
    assert await lock.owned()
    assert token == lock.fencing_token
    await lock.release()
    assert not await lock.locked()


async def test_a_resent_extend_adds_its_time_once(slow: DataLayer, redis_url: str) -> None:
    lock = slow.lock("extended", ttl=5)
    await lock.acquire()
    stall = asyncio.create_task(_stall(redis_url, 0.3))
    await asyncio.sleep(0.03)
    await lock.extend(10)
    await stall
    left = await slow.redis.pttl(_key(slow, "extended"))
    assert 14_000 < left <= 15_000, left
    await lock.release()


async def test_a_cancelled_acquire_gives_back_even_when_redis_is_slow(
    slow: DataLayer, redis_url: str
) -> None:
    lock = slow.lock("stalled", ttl=5)
    stall = asyncio.create_task(_stall(redis_url, 0.9))
    await asyncio.sleep(0.03)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lock.acquire(), 0.05)
    await stall
    probe = slow.lock("stalled")
    deadline = asyncio.get_running_loop().time() + 5
    while await probe.locked():
        assert asyncio.get_running_loop().time() < deadline, "the cancelled grant is still held"
        await asyncio.sleep(0.05)
    assert not await lock.owned()


async def test_a_give_back_overtaken_by_its_acquire_still_wins(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    # The cancelled acquire waits in Redis behind a slow command; the give-back, sent on
    # another connection, may run before it. The acquire must then find its token revoked.
    config = make_config(
        database, redis_url, tmp_path, redis={"socket_timeout": 2.0, "max_retries": 0}
    )
    async with DataLayer(config) as dl:
        warm = dl.lock("warm-up")
        await warm.acquire()
        await warm.release()
        for trial in range(3):
            lock = dl.lock(f"overtaken-{trial}", ttl=30, wait=5)
            stall = asyncio.create_task(_stall(redis_url, 0.4))
            await asyncio.sleep(0.03)
            acquiring = asyncio.create_task(lock.acquire())
            await asyncio.sleep(0.03)
            acquiring.cancel()
            with pytest.raises(asyncio.CancelledError):
                await acquiring
            await stall
            await asyncio.sleep(0.2)
            assert not await lock.locked(), f"trial {trial}: the cancelled grant is held"
            assert await lock.acquire()  # the same object can still take it afterwards
            await lock.release()
