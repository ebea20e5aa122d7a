"""The change feed: what capturing a table costs its writes (one caller and eight), how fast
a reader reads what is waiting, and how long a change takes from its commit to a reader."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.context import Bench
from bench.harness import Result, concurrently, percentiles


async def _toggled(
    b: Bench, op: Callable[[], Awaitable[Any]], measure: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    """Rates with ``agents`` captured and not, their runs interleaved (median of each)."""
    feed = b.dl.changes
    for _ in range(20):
        await op()
    tracked, untracked = [], []
    for _ in range(b.runs):
        await feed.track("agents")
        tracked.append(await measure())
        await feed.untrack("agents")
        untracked.append(await measure())
    return statistics.median(tracked), statistics.median(untracked)


async def changes(b: Bench) -> list[Result]:
    """Single-row updates of a captured table against the same table uncaptured (same run,
    interleaved), alone and eight at once; reading throughput; commit -> reader latency."""
    dl = b.dl
    agents = [await dl.agents.create(name=f"bench-{i}", type="bench") for i in range(64)]
    turn = iter(range(10**12))

    async def update() -> None:
        agent = agents[next(turn) % len(agents)]
        await dl.execute("UPDATE agents SET version = version + 1 WHERE id = %s", [agent.id])

    n = b.size(500, 2_000)

    async def alone() -> float:
        started = time.perf_counter()
        for _ in range(n):
            await update()
        return n / (time.perf_counter() - started)

    b.step("changes: an update with its table captured and not")
    one_on, one_off = await _toggled(b, update, alone)
    b.step("changes: eight writers with the table captured and not")
    many_on, many_off = await _toggled(b, update, lambda: concurrently(update, 8, n * 2))

    b.step("changes: reading what is waiting")
    await dl.changes.track("agents")
    waiting = b.size(5_000, 20_000)
    cursor = await dl.changes.position()
    for _ in range(0, waiting, 100):
        async with dl.transaction():
            for _ in range(100):
                await update()
    started = time.perf_counter()
    read = 0
    async for _ in dl.changes(["agents"], since=cursor, wait=False, batch=1_000):
        read += 1
    read_rate = read / (time.perf_counter() - started)

    b.step("changes: commit -> reader latency")
    samples: list[float] = []
    reader = dl.changes(["agents"], since="now")
    pending = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0.2)  # the reader waits for the next commit
    for _ in range(b.size(100, 300)):
        started = time.perf_counter()
        await update()
        await asyncio.wait_for(pending, 10)
        samples.append((time.perf_counter() - started) * 1000)
        pending = asyncio.ensure_future(anext(reader))
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await reader.aclose()  # type: ignore[attr-defined]
    await dl.changes.untrack("agents")
    latency = percentiles(samples)
    return [
        Result(
            "changes",
            "update of a captured table (one writer)",
            "tx/s",
            one_on,
            one_off,
            "the same update, table not captured",
        ),
        Result(
            "changes",
            "update of a captured table (8 writers)",
            "tx/s",
            many_on,
            many_off,
            "the same updates, table not captured",
        ),
        Result("changes", f"reading {read:,} waiting changes", "changes/s", read_rate),
        Result(
            "changes",
            "commit -> reader latency p50",
            "ms",
            latency["p50"],
            higher_is_better=False,
            extra={"latency_ms": latency},
        ),
        Result(
            "changes", "commit -> reader latency p99", "ms", latency["p99"], higher_is_better=False
        ),
    ]
