"""Store events: what publishing a task's changes costs its writes (events on vs off, same run,
interleaved), and how long an event takes from its commit to a subscriber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from uuid import UUID

from agency_data import DataLayer, Event, TaskStore
from bench.context import Bench
from bench.harness import Result, paired, percentiles


async def events(b: Bench) -> list[Result]:
    """Task writes with the tasks' events on and off; commit -> subscriber latency (the
    commit's notification wakes the relay)."""
    off = b.dl
    async with DataLayer(off.config, events={"tasks": True}) as on:
        n = b.size(300, 1_500)

        def creating(dl: DataLayer) -> Callable[[], Awaitable[object]]:
            return lambda: dl.tasks.create("bench-events")

        b.step("events: task create, events on and off")
        create_on, create_off = await paired(creating(on), creating(off), n, b.runs)

        def lifecycle(tasks: TaskStore, agent: UUID) -> Callable[[], Awaitable[object]]:
            async def run() -> None:
                task = await tasks.create("bench-life")
                (claimed,) = await tasks.claim(agent, types=["bench-life"])
                await tasks.complete(claimed, {"ok": True})
                assert claimed.id == task.id

            return run

        b.step("events: task create + claim + complete, events on and off")
        # Each layer claims its own tasks only: a tenant apiece.
        on_scope, off_scope = on.tenant("bench-on"), off.tenant("bench-off")
        on_agent = await on_scope.agents.create(name="bench", type="w")
        off_agent = await off_scope.agents.create(name="bench", type="w")
        life_on, life_off = await paired(
            lifecycle(on_scope.tasks, on_agent.id),
            lifecycle(off_scope.tasks, off_agent.id),
            b.size(100, 500),
            b.runs,
        )

        b.step("events: commit -> subscriber latency")
        samples = b.size(60, 200)
        latency = await _latency(on, samples)
    backlog = await off.admin.fetch_value("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    return [
        Result(
            "events",
            "task create, tasks' events on (one outbox row more)",
            "tx/s",
            create_on,
            create_off,
            "the same with events off",
        ),
        Result(
            "events",
            "task create + claim + complete, events on (3 events)",
            "tasks/s",
            life_on,
            life_off,
            "the same with events off",
            extra={"unsent_after": backlog},
        ),
        Result(
            "events",
            "commit -> subscriber p50",
            "ms",
            latency["p50"],
            higher_is_better=False,
            extra={"latency_ms": latency},
        ),
        Result("events", "commit -> subscriber p99", "ms", latency["p99"], higher_is_better=False),
    ]


async def _latency(dl: DataLayer, count: int) -> dict[str, float]:
    """Milliseconds from a task's completion call to its event reaching a live subscriber
    (the trigger's outbox row wakes relays through the commit's notification)."""
    scope = dl.tenant("bench-latency")
    agent = await scope.agents.create(name="latency", type="w")
    subscription: AsyncGenerator[Event, None] = scope.events.subscribe("task.completed")
    pending = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0.3)  # the first read waits in Redis
    samples = []
    try:
        for _ in range(count):
            await scope.tasks.create("latency")
            (claimed,) = await scope.tasks.claim(agent.id)
            started = time.perf_counter()
            await scope.tasks.complete(claimed)
            event = await asyncio.wait_for(pending, 10)
            samples.append((time.perf_counter() - started) * 1000)
            assert event.id == str(claimed.id)
            pending = asyncio.ensure_future(anext(subscription))
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await subscription.aclose()
    return percentiles(samples)
