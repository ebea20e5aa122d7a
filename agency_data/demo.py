"""The end-to-end tour behind ``agency-data demo``: each step runs for real and is timed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
