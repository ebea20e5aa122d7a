"""Row-level security: what it costs point reads and filtered vector search, against the same
layer on tables without it and with no tenant named to PostgreSQL, measured side by side."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from agency_data import DataLayer
from bench.context import Bench, clustered
from bench.databases import disable_rls, equalize, rls_off_layer
from bench.harness import Result, paired, paired_latency
from bench.vectors import DIM, drop_if_exists, make_items

SCENARIO = "row-level security"
COLLECTION = "bench_rls"
TARGET = "<= 10% slower"


async def rls(b: Bench) -> list[Result]:
    """RLS on (the layer as shipped) against RLS off (a database of its own), interleaved."""
    b.step("row-level security: a database without it")
    async with rls_off_layer(b.dl) as off:
        results = await _point_reads(b, off)
        results += await _writes(b, off)
        results += await _filtered_search(b, off)
    return results


async def _writes(b: Bench, off: DataLayer) -> list[Result]:
    # Not a target of its own; shown so that a write's share of the cost is known too.
    counter = itertools.count()

    async def with_rls() -> None:
        await b.dl.tasks.create(type="bench-rls", data={"n": next(counter)})

    async def without() -> None:
        await off.tasks.create(type="bench-rls", data={"n": next(counter)})

    b.step("row-level security: dl.tasks.create, RLS on vs off")
    await equalize(b.dl.pool, off.pool)
    on_rate, off_rate = await paired(with_rls, without, b.size(1_000, 3_000), b.runs)
    return [
        Result(
            SCENARIO, "dl.tasks.create (1 row, 1 tx), RLS on", "tx/s", on_rate, off_rate, "RLS off"
        )
    ]


async def _point_reads(b: Bench, off: DataLayer) -> list[Result]:
    b.step("row-level security: agents in both databases")
    cycles = []
    for layer in (b.dl, off):
        agents = [
            await layer.agents.create(name=f"agent-{i}", type="worker", capabilities={"i": i})
            for i in range(200)
        ]
        cycles.append(itertools.cycle([a.id for a in agents]))
    on_ids, off_ids = cycles

    async def with_rls() -> None:
        await b.dl.agents.get(next(on_ids), cached=False)

    async def without() -> None:
        await off.agents.get(next(off_ids), cached=False)

    b.step("row-level security: dl.agents.get, RLS on vs off")
    await equalize(b.dl.pool, off.pool)
    on_rate, off_rate = await paired(with_rls, without, b.size(3_000, 10_000), b.runs)
    return [
        Result(
            SCENARIO,
            "dl.agents.get (no cache), RLS on",
            "q/s",
            on_rate,
            off_rate,
            "RLS off",
            target=TARGET,
            met=off_rate / on_rate - 1 <= 0.10,
        )
    ]


async def _filtered_search(b: Bench, off: DataLayer) -> list[Result]:
    # The same vectors, metadata and HNSW parameters in both databases; at most 100,000 of
    # them, as the layer's own search scenario measures the larger sizes.
    n = min(b.vectors, 100_000)
    queries = b.size(200, 500)
    data = clustered(b.rng(7), n + queries, DIM)
    base, probes = data[:n], data[n:]
    on_col = await _load(b, b.dl, base, rls=True)
    off_col = await _load(b, off, base, rls=False)
    results = []
    for label, field, value in (("10%", "decile", 3), ("1%", "bucket", 7)):
        where = {field: value}

        async def with_rls(q: np.ndarray, where: dict[str, int] = where) -> None:
            hits = await on_col.find_similar(q, limit=10, filter=where)
            assert len(hits) == 10

        async def without(q: np.ndarray, where: dict[str, int] = where) -> None:
            hits = await off_col.find_similar(q, limit=10, filter=where)
            assert len(hits) == 10

        b.step(f"row-level security: find_similar filtered {label}, RLS on vs off")
        # Every query once in each database first, so both have their pages in memory, and a
        # check that both return the same neighbours (the graphs differ a little: HNSW draws
        # each node's level at random).
        same = 0
        for q in probes:
            on_hits = await on_col.find_similar(q, limit=10, filter=where)
            off_hits = await off_col.find_similar(q, limit=10, filter=where)
            same += len({h.entity_id for h in on_hits} & {h.entity_id for h in off_hits})
        agreement = same / (10 * len(probes))
        await equalize(b.dl.pool, off.pool)
        on_p, off_p = await paired_latency(with_rls, without, list(probes))
        results.append(
            Result(
                SCENARIO,
                f"find_similar filtered {label} ({n:,}), RLS on: p50",
                "ms",
                on_p["p50"],
                off_p["p50"],
                "RLS off",
                higher_is_better=False,
                target=TARGET,
                met=on_p["p50"] / off_p["p50"] - 1 <= 0.10,
                extra={"rls_on": on_p, "rls_off": off_p, "same_top10": agreement},
            )
        )
    await drop_if_exists(b.dl, COLLECTION)
    return results


async def _load(b: Bench, layer: DataLayer, base: np.ndarray, *, rls: bool) -> Any:
    """The collection, filled with ``base`` and indexed; without row-level security if not ``rls``."""
    b.step(f"row-level security: loading {len(base):,} vectors, RLS {'on' if rls else 'off'}")
    await drop_if_exists(layer, COLLECTION)
    col = await layer.embeddings.create_collection(COLLECTION, dimension=DIM)
    if not rls:
        spec = await layer.embeddings._catalog.load(COLLECTION)
        await disable_rls(layer, spec.table)
    for start in range(0, len(base), 20_000):
        await col.store_many(make_items(base[start : start + 20_000], start))
    assert await col.count() == len(base), "every vector stored"
    await col.create_index(kind="hnsw", m=16, ef_construction=64)
    return col
