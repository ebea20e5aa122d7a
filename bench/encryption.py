"""What field encryption costs writes and reads: the same work with the fields sealed and not.

A second DataLayer on the same servers seals ``tasks.data`` and collections' ``content`` (and
opens them as they load); the plain layer is the baseline. Both run in turns (plain, sealed,
plain, ...), medians kept:

- ``tasks.create`` with 64 concurrent callers (group commits), a 1 KB ``data`` each;
- ``tasks.get`` of those tasks, 64 callers (gathered point reads), data opened on the way;
- ``store_many`` of 2,000 embeddings (384 dimensions) with 500 bytes of content each.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from collections.abc import Awaitable, Callable

from agency_data import DataLayer
from bench.context import Bench
from bench.harness import Result
from bench.vectors import make_items

__all__ = ["encryption"]

SCENARIO = "encryption"
DIM = 384


async def encryption(b: Bench) -> list[Result]:
    """Sealed fields against plain ones, on the same servers."""
    sealing = {
        "fields": ["tasks.data", "embeddings.content"],
        "kek": base64.b64encode(os.urandom(32)).decode(),
        "key_store": b.dl.config.embedded.data_dir / "bench-keys",
    }
    await b.dl.embeddings.create_collection("bench_sealed", dimension=DIM, exist_ok=True)
    vectors = b.rng(16).normal(size=(2_000, DIM)).astype("float32")
    payload = {"notes": "x" * 1000}
    offset = 0
    async with DataLayer(b.dl.config, encryption=sealing) as sealed:
        layers = {False: b.dl, True: sealed}
        made: dict[bool, list[object]] = {False: [], True: []}

        def creates(on: bool) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                scope = layers[on].tenant("bench-enc")
                n = b.size(2_000, 6_000)
                started = time.perf_counter()
                tasks = await asyncio.gather(
                    *(scope.tasks.create("sealed", payload) for _ in range(n))
                )
                made[on] = [t.id for t in tasks]
                return n / (time.perf_counter() - started)

            return run

        def reads(on: bool) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                scope = layers[on].tenant("bench-enc")
                ids = made[on]
                started = time.perf_counter()
                await asyncio.gather(*(scope.tasks.get(i) for i in ids))
                return len(ids) / (time.perf_counter() - started)

            return run

        def ingest(on: bool) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                nonlocal offset
                docs = layers[on].tenant("bench-enc").embeddings.collection("bench_sealed")
                items = [{**item, "content": "y" * 500} for item in make_items(vectors, offset)]
                offset += len(vectors)
                started = time.perf_counter()
                await docs.store_many(items)
                return len(vectors) / (time.perf_counter() - started)

            return run

        measures = [
            ("tasks.create, 64 callers, 1 KB data", "ops/s", creates),
            ("tasks.get, 64 callers", "ops/s", reads),
            ("store_many, 2,000 x 384-d, 500 B content", "rows/s", ingest),
        ]
        results = []
        for name, unit, measure in measures:
            b.step(f"encryption: {name}")
            rates: dict[bool, list[float]] = {False: [], True: []}
            await measure(False)()  # warm-up
            await measure(True)()
            for _ in range(b.size(2, 4)):
                for on in (False, True):
                    rates[on].append(await measure(on)())
            results.append(
                Result(
                    SCENARIO,
                    f"{name}, sealed",
                    unit,
                    statistics.median(rates[True]),
                    statistics.median(rates[False]),
                    "not sealed",
                )
            )
    await b.dl.admin.drop_collection("bench_sealed")
    return results
