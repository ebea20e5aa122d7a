"""Locks under cancellation and bad arguments: a cancelled acquire never leaves a lock held."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import pytest

from agency_data import DataLayer, LockNotOwned, ValidationError
from agency_data.models import DEFAULT_TENANT
from agency_data.redis.keys import Keys


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
