"""What the audit trail costs writes: audited against not, in turns on the same layer.

Auditing is switched per table (``dl.admin.audit``), so the two sides of each measure run on
the same layer, pool and data, one after the other in turns (off, on, off, on, ...); each
row's figures are the medians over the turns. Writes measured:

- ``tasks.create`` with 64 concurrent callers (gathered into group commits): each commit's
  statement records its rows in one trigger call, and takes the tenant's chain head once;
- ``agents.create`` from one caller: a record, and the head's lock, per write;
- ``store_many`` of 2,000 embeddings (384 dimensions): a bulk ingest, one record per row.

Records keep digests (``audit.detail`` digest, the default). Writers only add records; the
background sealer (every ``audit.seal_interval``, in the same process) chains them, and its
own rate is measured last.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from agency_data import DataLayer
from bench.context import Bench
from bench.harness import Result
from bench.vectors import make_items

__all__ = ["audit"]

SCENARIO = "audit"
DIM = 384


async def audit(b: Bench) -> list[Result]:
    """Writes with their tables audited against the same writes without."""
    dl = b.dl
    await dl.embeddings.create_collection("bench_audit", dimension=DIM, exist_ok=True)
    scope = dl.tenant("bench-audit")
    docs = scope.embeddings.collection("bench_audit")
    vectors = b.rng(15).normal(size=(2_000, DIM)).astype("float32")
    offset = 0

    async def tasks_64() -> float:
        n = b.size(2_000, 6_000)
        started = time.perf_counter()
        await asyncio.gather(*(scope.tasks.create("audited", {"i": i}) for i in range(n)))
        return n / (time.perf_counter() - started)

    async def agents_1() -> float:
        n = b.size(300, 1_000)
        started = time.perf_counter()
        for i in range(n):
            await scope.agents.create(f"a{i}", "bench")
        return n / (time.perf_counter() - started)

    async def ingest() -> float:
        nonlocal offset
        started = time.perf_counter()
        await docs.store_many(make_items(vectors, offset))
        offset += len(vectors)
        return len(vectors) / (time.perf_counter() - started)

    measures: list[tuple[str, str, Callable[[], Awaitable[float]]]] = [
        ("tasks.create, 64 callers", "ops/s", tasks_64),
        ("agents.create, 1 caller", "ops/s", agents_1),
        ("store_many, 2,000 x 384-d embeddings", "rows/s", ingest),
    ]
    results = []
    for name, unit, measure in measures:
        b.step(f"audit: {name}")
        off: list[float] = []
        on: list[float] = []
        await measure()  # warm-up
        for _ in range(b.size(2, 4)):
            for audited, rates in ((False, off), (True, on)):
                await _switch(dl, audited)
                rates.append(await measure())
        await _switch(dl, False)
        results.append(
            Result(
                SCENARIO,
                f"{name}, audited",
                unit,
                statistics.median(on),
                statistics.median(off),
                "not audited",
            )
        )
    results.append(await _sealing(b, results[-1].baseline or 0.0))
    await dl.admin.drop_collection("bench_audit")
    return results


async def _sealing(b: Bench, ingest: float) -> Result:
    """How fast records are chained, beside how fast a bulk ingest makes them.

    The records are added and sealed in one transaction, which no background sealer sees
    before it commits: the seal statement alone is timed.
    """
    n = b.size(20_000, 100_000)
    b.step(f"audit: sealing {n:,} records")
    async with b.dl.admin.transaction():
        await b.dl.admin.execute(
            "INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, "
            "detail) SELECT 'bench-seal', 'bench', 'insert', 'emb_bench_audit', i::text, "
            "jsonb_build_object('after', encode(sha256(i::text::bytea), 'hex')) "
            "FROM generate_series(1, %s) AS i",
            [n],
        )
        started = time.perf_counter()
        await b.dl.admin.execute("SELECT agency_data_audit_seal('bench-seal', %s)", [n])
        rate = n / (time.perf_counter() - started)
    return Result(
        SCENARIO,
        "sealing: records chained per second",
        "records/s",
        rate,
        ingest,
        "store_many rows/s, not audited (>1: the sealer keeps up)",
    )


async def _switch(dl: DataLayer, audited: bool) -> None:
    for table in ("tasks", "agents", "embeddings"):
        await dl.admin.audit(table, audited)
