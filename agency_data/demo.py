"""The end-to-end tour behind ``agency-data demo``: each step runs for real and is timed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from agency_data.config import DataLayerConfig
from agency_data.manager import DataLayer

__all__ = ["DemoStep", "run_demo"]


@dataclass(frozen=True)
class DemoStep:
    """One step of the tour: what it did, what it found, and how long it took."""

    title: str
    outcome: str
    seconds: float


Report = Callable[[DemoStep], Awaitable[None] | None]


async def run_demo(
    config: DataLayerConfig | None = None, report: Report | None = None
) -> list[DemoStep]:
    """Run the tour against ``config`` (embedded servers by default) and return its steps."""
    steps: list[DemoStep] = []

    async def record(title: str, outcome: str, started: float) -> None:
        step = DemoStep(title, outcome, time.perf_counter() - started)
        steps.append(step)
        if report is not None:
            result = report(step)
            if result is not None:
                await result

    started = time.perf_counter()
    dl = DataLayer(config)
    await dl.connect()
    try:
        where = "embedded servers in " + str(dl.config.embedded.data_dir)
        if not dl.config.postgresql.is_embedded:
            where = "the configured PostgreSQL"
        await record("connect", f"pool open, schema migrated ({where})", started)

        started = time.perf_counter()
        health = await dl.health()
        pg, cache = health.components["postgresql"], health.components["redis"]
        await record(
            "health",
            f"{health.status}: PostgreSQL {pg.versions.get('postgresql', '?')} with pgvector "
            f"{pg.versions.get('pgvector', '?')} ({pg.latency_ms or 0:.2f} ms), Redis "
            f"{cache.versions.get('valkey') or cache.versions.get('redis', '?')} "
            f"({'up' if cache.up else 'down'})",
            started,
        )

        started = time.perf_counter()
        states = await dl.migrations().status()
        counts = {
            state: sum(1 for s in states if s.state == state) for state in ("applied", "pending")
        }
        await record(
            "migrations",
            f"{counts['applied']} applied, {counts['pending']} pending, of {len(states)} known",
            started,
        )

        await _agents_and_tasks(dl, record)

        started = time.perf_counter()
        dry = await dl.migrations().down(steps=1, dry_run=True)
        await record(
            "migration dry run",
            f"rolling back one step would run {len(dry.steps)} step(s): "
            + ", ".join(s.key for s in dry.steps),
            started,
        )
    finally:
        started = time.perf_counter()
        await dl.aclose()
        await record("close", "pool closed, embedded servers released", started)
    return steps


async def _agents_and_tasks(
    dl: DataLayer, record: Callable[[str, str, float], Awaitable[None]]
) -> None:
    # Each run works in a tenant of its own, so repeated demos on one data dir do not mix.
    scope = dl.tenant(f"demo-{uuid.uuid4().hex[:8]}")

    started = time.perf_counter()
    workers = [
        await scope.agents.create(name=f"worker-{i}", type="worker", capabilities={"embed": True})
        for i in range(4)
    ]
    planner = await scope.agents.create(
        name="planner", type="coordinator", capabilities={"plan": True}
    )
    await record(
        "agents", f"registered {len(workers) + 1} agents (1 coordinator, 4 workers)", started
    )

    started = time.perf_counter()
    await scope.tasks.create(
        type="summarize", priority=9, data={"doc": "quarterly planning report"}
    )
    await scope.tasks.create_many([{"type": "embed", "data": {"chunk": i}} for i in range(1000)])
    await record("tasks", "queued 1,001 tasks (one create, one bulk create_many)", started)

    started = time.perf_counter()
    claimed_by: dict[str, int] = {}

    async def work(agent_id: UUID, name: str) -> None:
        while batch := await scope.tasks.claim(agent_id, types=["embed"], n=25):
            for task in batch:
                await scope.tasks.complete(task.id, result={"by": name})
            claimed_by[name] = claimed_by.get(name, 0) + len(batch)

    await asyncio.gather(*(work(w.id, w.name) for w in workers))
    done = await scope.tasks.count(type="embed", status="completed")
    shares = ", ".join(f"{name} {count}" for name, count in sorted(claimed_by.items()))
    once = "each exactly once" if sum(claimed_by.values()) == done else "SOME TWICE"
    elapsed = time.perf_counter() - started
    await record(
        "claim + complete",
        f"4 concurrent workers finished {done} tasks, {once} ({shares}); {done / elapsed:,.0f} tasks/s",
        started,
    )

    started = time.perf_counter()
    (top,) = await scope.tasks.claim(planner.id, n=1)
    await scope.tasks.complete(top.id, result={"summary": "on track"})
    hits = await scope.tasks.search("planning")
    await record(
        "search",
        f"the planner took the priority-9 task; full-text 'planning' finds {len(hits)} task(s)",
        started,
    )
