"""Coordination scenarios: lock acquire+release, uncontended and contended; pub/sub throughput
and delivery latency."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.context import Bench
from bench.harness import Result, percentiles, throughput


async def locks(b: Bench) -> list[Result]:
    """Acquire + release per second, alone and with 16 contenders."""
    dl = b.dl
    n = b.size(2_000, 5_000)

    async def once() -> None:
        async with dl.lock("bench:free", ttl=5):
            pass

    b.step("locks: uncontended")
    alone = await throughput(once, n, b.runs)

    b.step("locks: 16 contenders")
    per_task = b.size(50, 200)

    async def contender() -> None:
        for _ in range(per_task):
            async with dl.lock("bench:hot", ttl=5, wait=60):
                pass

    started = time.perf_counter()
    await asyncio.gather(*(contender() for _ in range(16)))
    contended = 16 * per_task / (time.perf_counter() - started)
    return [
        Result("locks", "acquire + release, uncontended", "locks/s", alone),
        Result("locks", "acquire + release, 16 contenders", "locks/s", contended),
    ]


async def pubsub(b: Bench) -> list[Result]:
    """Messages per second through one subscriber, and publish-to-delivery latency."""
    dl = b.dl
    n = b.size(5_000, 20_000)
    b.step("pub/sub: messages")
    latencies: list[float] = []
    subscription = dl.pubsub.subscribe("bench")
    ready = asyncio.Event()

    async def listen() -> None:
        async for message in subscription:
            if message.data == "ready":
                ready.set()
                continue
            latencies.append((time.perf_counter() - message.data) * 1000)
            if len(latencies) == n:
                return

    listener = asyncio.create_task(listen())
    while not ready.is_set():
        await dl.pubsub.publish("bench", "ready")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 0.05)
    started = time.perf_counter()
    for _ in range(n):
        await dl.pubsub.publish("bench", time.perf_counter())
    await asyncio.wait_for(listener, 60)
    elapsed = time.perf_counter() - started
    await subscription.aclose()
    p = percentiles(latencies)
    return [
        Result("pub/sub", "publish -> receive", "msgs/s", n / elapsed),
        Result("pub/sub", "delivery latency p50", "ms", p["p50"], higher_is_better=False, extra=p),
        Result("pub/sub", "delivery latency p99", "ms", p["p99"], higher_is_better=False, extra=p),
    ]
