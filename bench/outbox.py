"""The transactional outbox: what ``tx.publish`` costs a write, how fast the relay moves
messages, and how long a message takes from its commit to a consumer."""

from __future__ import annotations

import asyncio
import time

from bench.context import Bench
from bench.harness import Result, paired, paired_concurrently, percentiles


async def outbox(b: Bench) -> list[Result]:
    """Single-row writes with and without a published message (same run, interleaved); the
    relay's throughput; commit -> consumer latency."""
    dl = b.dl
    n = b.size(500, 2_000)

    async def plain() -> None:
        async with dl.transaction():
            await dl.tasks.create(type="bench-outbox")

    async def published() -> None:
        async with dl.transaction() as tx:
            await dl.tasks.create(type="bench-outbox")
            await tx.publish("bench-outbox", {"task": "created"})

    b.step("outbox: a write with and without tx.publish")
    with_rate, without_rate = await paired(published, plain, n, b.runs)
    # Publishing transactions commit one at a time (commit order): eight writers show it.
    b.step("outbox: eight writers with and without tx.publish")
    many_with, many_without = await paired_concurrently(published, plain, 8, n * 2, b.runs)

    b.step("outbox: relay throughput")
    messages = b.size(5_000, 20_000)
    relay = dl.outbox
    # The background relay paused, so that one relay finds them all waiting.
    await relay.aclose()
    await relay.relay()  # what the write runs left
    for start in range(0, messages, 100):
        async with dl.transaction() as tx:
            for i in range(start, min(messages, start + 100)):
                await tx.publish("bench-relay", {"i": i})
    started = time.perf_counter()
    sent = await relay.relay()
    elapsed = time.perf_counter() - started
    relay_rate = (sent / elapsed) if sent else 0.0
    relay.start()

    b.step("outbox: commit -> consumer latency")
    samples: list[float] = []
    stream = "bench-latency"
    consumer = dl.streams.consume(stream, "bench", "c1", block=0.05)
    pending = asyncio.ensure_future(anext(consumer))
    await asyncio.sleep(0.2)  # the group exists and the consumer waits
    for i in range(b.size(100, 300)):
        started = time.perf_counter()
        async with dl.transaction() as tx:
            await tx.publish(stream, {"i": i})
        message = await asyncio.wait_for(pending, 10)
        samples.append((time.perf_counter() - started) * 1000)
        await dl.streams.ack(stream, "bench", message.id)
        pending = asyncio.ensure_future(anext(consumer))
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await consumer.aclose()
    latency = percentiles(samples)
    return [
        Result(
            "outbox",
            "write + tx.publish (one task created a transaction)",
            "tx/s",
            with_rate,
            without_rate,
            "the same write without publishing",
        ),
        Result(
            "outbox",
            "write + tx.publish (8 writers)",
            "tx/s",
            many_with,
            many_without,
            "the same writes without publishing",
        ),
        Result(
            "outbox",
            f"relay throughput ({sent:,} messages waiting)",
            "messages/s",
            relay_rate,
        ),
        Result(
            "outbox",
            "commit -> consumer latency p50",
            "ms",
            latency["p50"],
            higher_is_better=False,
            extra={"latency_ms": latency},
        ),
        Result(
            "outbox", "commit -> consumer latency p99", "ms", latency["p99"], higher_is_better=False
        ),
    ]
