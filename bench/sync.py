"""The synchronous API's price: a sync ``dl.agents.get`` (through the portal into the layer's
private loop) beside the same query on a sync psycopg connection and beside the async call in
its own loop; the bare portal hop beside asyncio's own way across threads; and eight threads
reading at once. Every figure's runs are interleaved with its baseline's."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from agency_data.sync import DataLayer as SyncDataLayer
from agency_data.sync import Portal
from bench.context import Bench
from bench.harness import Result
from bench.relational import _AGENT_SQL

__all__ = ["sync"]

THREADS = 8


def _rate(op: Callable[[], Any], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        op()
    return count / (time.perf_counter() - started)


def _threaded_rate(op: Callable[[int], Any], threads: int, count: int) -> float:
    """Calls per second of ``threads`` threads making ``count`` calls in all."""
    start = threading.Barrier(threads + 1)
    each = count // threads

    def work(n: int) -> None:
        start.wait()
        for _ in range(each):
            op(n)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - started)


async def _interleaved(
    jobs: dict[str, Callable[[], Awaitable[float]]], runs: int
) -> dict[str, float]:
    """The median rate of each job, the jobs' timed runs taken in turn."""
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, job in jobs.items():
            rates[name].append(await job())
    return {name: statistics.median(found) for name, found in rates.items()}


async def sync(b: Bench) -> list[Result]:
    """Sync agents.get vs sync psycopg vs async agents.get; the portal hop; eight threads."""
    dl = b.dl
    b.step("sync: setting up")
    ids: list[UUID] = [
        (await dl.agents.create(name=f"sync-{i}", type="worker", capabilities={"i": i})).id
        for i in range(200)
    ]
    n = b.size(2_000, 8_000)
    layer = await asyncio.to_thread(SyncDataLayer, dl.config)
    await asyncio.to_thread(layer.connect)
    uvloop_layer = await asyncio.to_thread(_uvloop_layer, dl.config)
    options = f"-c statement_timeout={int(dl.config.postgresql.statement_timeout * 1000)}"
    raw = await asyncio.to_thread(
        psycopg.connect, dl.admin_conninfo, autocommit=True, row_factory=dict_row, options=options
    )
    try:
        results = await _measure(b, layer, uvloop_layer, raw, ids, n)
    finally:
        raw.close()
        await asyncio.to_thread(layer.close)
        if uvloop_layer is not None:
            await asyncio.to_thread(uvloop_layer.close)
            await asyncio.to_thread(uvloop_layer.portal.close)
    return results


def _uvloop_layer(config: Any) -> SyncDataLayer | None:
    """The same sync layer on a uvloop portal, when uvloop is installed (it is not a
    dependency: the line shows what it would give)."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    portal = Portal.start("agency-data-sync-uvloop", loop_factory=uvloop.new_event_loop)
    from agency_data import DataLayer

    aio = DataLayer(config)
    portal.call(aio.connect())
    return SyncDataLayer.wrap(aio, portal)


async def _measure(
    b: Bench,
    layer: SyncDataLayer,
    uvloop_layer: SyncDataLayer | None,
    raw: psycopg.Connection[dict[str, Any]],
    ids: list[UUID],
    n: int,
) -> list[Result]:
    dl = b.dl
    cycle = itertools.cycle(ids)

    def sync_get() -> None:
        layer.agents.get(next(cycle), cached=False)

    def raw_get() -> None:
        row = raw.execute(_AGENT_SQL, ["default", next(cycle)]).fetchone()
        assert row is not None, "the baseline reads the agent"

    async def async_rate() -> float:
        started = time.perf_counter()
        for _ in range(n):
            await dl.agents.get(next(cycle), cached=False)
        return n / (time.perf_counter() - started)

    jobs: dict[str, Callable[[], Awaitable[float]]] = {
        "sync": lambda: asyncio.to_thread(_rate, sync_get, n),
        "psycopg": lambda: asyncio.to_thread(_rate, raw_get, n),
        "async": async_rate,
    }
    if uvloop_layer is not None:
        uv = uvloop_layer

        def uvloop_get() -> None:
            uv.agents.get(next(cycle), cached=False)

        jobs["uvloop"] = lambda: asyncio.to_thread(_rate, uvloop_get, n)
    b.step("sync: agents.get, sync vs psycopg vs async")
    for job in jobs.values():  # warm-up: connections, prepared statements, caches
        await job()
    rates = await _interleaved(jobs, b.runs)

    # The hop alone: a coroutine that does nothing, through our portal and through asyncio's
    # run_coroutine_threadsafe (a Task plus a concurrent.futures.Future) into the same loop.
    portal = layer.portal

    async def nothing() -> None:
        return None

    def ours() -> None:
        portal.call(nothing())

    def asyncio_way() -> None:
        asyncio.run_coroutine_threadsafe(nothing(), portal.loop).result()

    b.step("sync: the bare portal hop")
    hops = n * 5
    hop = await _interleaved(
        {
            "ours": lambda: asyncio.to_thread(_rate, ours, hops),
            "asyncio": lambda: asyncio.to_thread(_rate, asyncio_way, hops),
        },
        b.runs,
    )

    # A threaded sync app: eight threads reading at once, the layer sharing its queries
    # (agency_data.batching) against eight psycopg connections, one a thread.
    b.step("sync: eight threads")
    connections = [
        await asyncio.to_thread(
            psycopg.connect, dl.admin_conninfo, autocommit=True, row_factory=dict_row
        )
        for _ in range(THREADS)
    ]
    try:

        def threaded_sync(_: int) -> None:
            layer.agents.get(next(cycle), cached=False)

        def threaded_raw(index: int) -> None:
            connections[index].execute(_AGENT_SQL, ["default", next(cycle)]).fetchone()

        threaded = await _interleaved(
            {
                "sync": lambda: asyncio.to_thread(_threaded_rate, threaded_sync, THREADS, n),
                "psycopg": lambda: asyncio.to_thread(_threaded_rate, threaded_raw, THREADS, n),
            },
            b.runs,
        )
    finally:
        for conn in connections:
            conn.close()

    overhead = rates["psycopg"] / rates["sync"] - 1
    results = [
        Result(
            "sync",
            "sync dl.agents.get (no cache)",
            "q/s",
            rates["sync"],
            rates["psycopg"],
            "sync psycopg connection, owner (no RLS)",
            target="<= 25% overhead",
            met=overhead <= 0.25,
            extra={"us_per_call": 1e6 / rates["sync"], "baseline_us": 1e6 / rates["psycopg"]},
        ),
        Result(
            "sync",
            "sync dl.agents.get (no cache)",
            "q/s",
            rates["sync"],
            rates["async"],
            "async dl.agents.get in its own loop",
            extra={"us_per_call": 1e6 / rates["sync"], "baseline_us": 1e6 / rates["async"]},
        ),
        Result(
            "sync",
            "bare portal call (a coroutine doing nothing)",
            "calls/s",
            hop["ours"],
            hop["asyncio"],
            "run_coroutine_threadsafe().result()",
            extra={"us_per_call": 1e6 / hop["ours"], "baseline_us": 1e6 / hop["asyncio"]},
        ),
        Result(
            "sync",
            f"sync dl.agents.get, {THREADS} threads",
            "q/s",
            threaded["sync"],
            threaded["psycopg"],
            f"{THREADS} sync psycopg connections, one a thread",
        ),
    ]
    if "uvloop" in rates:
        results.append(
            Result(
                "sync",
                "sync dl.agents.get (no cache), portal on uvloop",
                "q/s",
                rates["uvloop"],
                rates["psycopg"],
                "sync psycopg connection, owner (no RLS)",
                extra={"us_per_call": 1e6 / rates["uvloop"], "asyncio_loop_qps": rates["sync"]},
            )
        )
    return results
