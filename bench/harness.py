"""Measuring: throughput as the median of several timed runs after a warm-up, latency
percentiles, and the comparison of each figure with its baseline measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

T = TypeVar("T")

__all__ = [
    "Result",
    "latencies",
    "paired",
    "paired_latency",
    "percentiles",
    "print_table",
    "throughput",
    "write_json",
]


@dataclass
class Result:
    """One line of the report: our figure, the baseline's, and the target if there is one."""

    scenario: str
    name: str
    unit: str
    ours: float
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    target: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """ours / baseline."""
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline  # type: ignore[operator]

    @property
    def overhead(self) -> float | None:
        """How much worse than the baseline we are (0.10 = 10% slower), negative when better."""
        ratio = self.ratio
        if ratio is None or ratio == 0:
            return None
        return (1 / ratio - 1) if self.higher_is_better else (ratio - 1)


async def throughput(
    op: Callable[[], Awaitable[Any]], count: int, runs: int = 3, warmup: int | None = None
) -> float:
    """Operations per second: the median of ``runs`` timed loops of ``count`` calls of ``op``."""
    for _ in range(warmup if warmup is not None else max(1, count // 10)):
        await op()
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            await op()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


async def paired(
    ours: Callable[[], Awaitable[Any]],
    base: Callable[[], Awaitable[Any]],
    count: int,
    runs: int = 3,
) -> tuple[float, float]:
    """Operations per second of ``ours`` and ``base``, their timed runs interleaved.

    Alternating the two cancels most of the drift a shared 2-core machine shows over a few
    seconds, which would otherwise favour whichever ran in the quieter moment.
    """
    for _ in range(max(1, count // 10)):
        await ours()
        await base()
    ours_rates, base_rates = [], []
    for _ in range(runs):
        for op, rates in ((ours, ours_rates), (base, base_rates)):
            started = time.perf_counter()
            for _ in range(count):
                await op()
            rates.append(count / (time.perf_counter() - started))
    return statistics.median(ours_rates), statistics.median(base_rates)


async def paired_latency(
    ours: Callable[[T], Awaitable[Any]], base: Callable[[T], Awaitable[Any]], args: Sequence[T]
) -> tuple[dict[str, float], dict[str, float]]:
    """Latency percentiles (ms) of ``ours`` and ``base``, called once each per item of ``args``.

    Item by item, alternating which goes first, so both see the same machine.
    """
    for arg in args[:10]:
        await ours(arg)
        await base(arg)
    samples: tuple[list[float], list[float]] = ([], [])
    for i, arg in enumerate(args):
        order = ((ours, 0), (base, 1)) if i % 2 == 0 else ((base, 1), (ours, 0))
        for op, slot in order:
            started = time.perf_counter()
            await op(arg)
            samples[slot].append((time.perf_counter() - started) * 1000)
    return percentiles(samples[0]), percentiles(samples[1])


async def timed(job: Callable[[], Awaitable[Any]], runs: int = 3) -> float:
    """Seconds one call of ``job`` takes: the median of ``runs``."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        await job()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


async def latencies(op: Callable[[], Awaitable[Any]], count: int, warmup: int = 20) -> list[float]:
    """Milliseconds per call, for ``count`` sequential calls after a warm-up."""
    for _ in range(warmup):
        await op()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of ``samples``."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s"):
        return f"{value:,.2f} {unit}"
    if unit in ("recall", "rate"):
        return f"{value:.3f}"
    return f"{value:,.0f} {unit}"


def print_table(results: list[Result], console: Console) -> None:
    """The side-by-side table: ours, the baseline, their ratio, and the target."""
    table = Table(title="agency-data benchmarks", show_lines=False)
    for column in ("scenario", "measure", "ours", "baseline", "ours/baseline", "target", "met"):
        table.add_column(column, overflow="fold")
    for r in results:
        baseline = (
            f"{_fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline is not None else "-"
        )
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r.met]
        table.add_row(r.scenario, r.name, _fmt(r.ours, r.unit), baseline, ratio, r.target, met)
    console.print(table)


def environment(settings: dict[str, Any]) -> dict[str, Any]:
    """The machine, versions and settings a run was made with."""
    packages = {}
    for name in (
        "agency-data",
        "psycopg",
        "psycopg-pool",
        "redis",
        "hiredis",
        "pgvector",
        "numpy",
        "langchain-postgres",
        "cashews",
        "orjson",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "packages": packages,
        "settings": settings,
    }


def write_json(path: Path, results: list[Result], env: dict[str, Any]) -> None:
    """Save the results with the environment, for later comparison."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "ratio": r.ratio, "overhead": r.overhead} for r in results]
    path.write_text(json.dumps({"environment": env, "results": rows}, indent=2, default=str))


def run_sync(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion (used by the command line)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


async def concurrently(op: Any, callers: int, total: int) -> float:
    """Calls per second of ``callers`` loops running ``op`` at once, ``total`` calls in all."""
    each = total // callers

    async def loop() -> None:
        for _ in range(each):
            await op()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(callers)))
    return each * callers / (time.perf_counter() - started)


async def paired_concurrently(
    ours: Any, raw: Any, callers: int, total: int, runs: int
) -> tuple[float, float]:
    """Medians of ``runs`` rounds of :func:`concurrently`, ours and the baseline interleaved."""
    mine, theirs = [], []
    for _ in range(runs):
        mine.append(await concurrently(ours, callers, total))
        theirs.append(await concurrently(raw, callers, total))
    return statistics.median(mine), statistics.median(theirs)
