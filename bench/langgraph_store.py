"""LangGraph's long-term memory store: AgencyStore against LangGraph's own AsyncPostgresStore
(langgraph-checkpoint-postgres) on the same server, the same items and the same embedder.

Both index the items' ``text`` for semantic search with the same cheap deterministic embedder
(word hashing, so that the stores, not a model, are measured), at cosine distance, and
refresh TTLs on read as LangGraph does by default. The baseline logs in as the owner role and
keeps its own tables (``store``, ``store_vectors``), which have no row-level security; ours
go through the application role and row-level security. Figures: puts and gets one at a time
and from 64 concurrent callers, and the latency of searches by query and by filter.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bench.context import Bench
from bench.harness import Result, paired, paired_concurrently, paired_latency

DIM = 64
CALLERS = 64
_WORDS = [
    f"{a}{b}"
    for a in ("tea", "chess", "rain", "cat", "oslo", "code", "plan", "task", "note", "song")
    for b in ("", "s", "ing", "er", "ed", "y", "ly", "ish")
]


async def embed(texts: list[str]) -> list[list[float]]:
    """One unit vector per text: its words hashed (crc32) into ``DIM`` places (lists: the
    baseline hands what the embedder returns to psycopg as it is)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, zlib.crc32(word.encode()) % DIM] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    vectors: list[list[float]] = (out / norms).tolist()
    return vectors


def _value(rng: np.random.Generator, n: int) -> dict[str, Any]:
    words = rng.choice(_WORDS, size=8)
    return {"text": " ".join(words), "kind": "fact" if n % 3 else "wish", "n": n}


def _namespace(n: int) -> tuple[str, ...]:
    return ("users", f"u{n % 50}", "memories")


async def langgraph_store(b: Bench) -> list[Result]:
    """The scenario (see the module's docstring)."""
    try:  # the extras: agency-data[langgraph] and the bench's langgraph-checkpoint-postgres
        from langgraph.store.postgres import AsyncPostgresStore

        from agency_data.integrations.langgraph import AgencyStore
    except ImportError:
        b.step("langgraph-store: skipped (pip install agency-data[langgraph,bench])")
        return []
    dl = b.dl
    index: Any = {"dims": DIM, "embed": embed, "fields": ["text"]}
    ours = AgencyStore(dl, index=index, name="bench_lg_store")
    await ours.asetup()
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        dl.admin_conninfo,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        min_size=dl.pool.min_size,
        max_size=dl.pool.max_size,
        open=False,
    )
    await pool.open()
    try:
        theirs = AsyncPostgresStore(pool, index=index)  # type: ignore[arg-type]
        await theirs.setup()
        return await _measure(b, ours, theirs)
    finally:
        await ours.aclose()
        await dl.admin.execute(
            "DROP TABLE IF EXISTS store_vectors, store, store_migrations, vector_migrations"
        )
        await dl.execute("DELETE FROM langgraph_store WHERE store = 'bench_lg_store'")
        await dl.embeddings.drop_collection("bench_lg_store")
        await pool.close()


async def _measure(b: Bench, ours: Any, theirs: Any) -> list[Result]:
    from langgraph.store.base import PutOp

    rng = b.rng(16)
    n = b.size(2_000, 10_000)
    baseline = "AsyncPostgresStore"
    results: list[Result] = []

    b.step(f"langgraph-store: loading {n:,} items into each")
    values = [_value(rng, i) for i in range(n)]
    for store in (ours, theirs):
        for start in range(0, n, 500):
            await store.abatch(
                [
                    PutOp(_namespace(i), f"m{i}", values[i])
                    for i in range(start, min(n, start + 500))
                ]
            )

    counter = iter(range(10**9))

    def put(store: Any) -> Callable[[], Awaitable[Any]]:
        async def one() -> None:
            i = next(counter) % n
            await store.aput(_namespace(i), f"m{i}", values[(i * 7) % n])

        return one

    def get(store: Any) -> Callable[[], Awaitable[Any]]:
        async def one() -> None:
            i = next(counter) % n
            assert await store.aget(_namespace(i), f"m{i}") is not None

        return one

    count = b.size(300, 1_000)
    b.step("langgraph-store: puts, one caller")
    mine, base = await paired(put(ours), put(theirs), count, b.runs)
    results.append(Result("langgraph store", "aput, 1 caller", "puts/s", mine, base, baseline))
    b.step(f"langgraph-store: puts, {CALLERS} callers")
    mine, base = await paired_concurrently(put(ours), put(theirs), CALLERS, count * 4, b.runs)
    results.append(
        Result("langgraph store", f"aput, {CALLERS} callers", "puts/s", mine, base, baseline)
    )
    b.step("langgraph-store: gets, one caller")
    mine, base = await paired(get(ours), get(theirs), count * 2, b.runs)
    results.append(Result("langgraph store", "aget, 1 caller", "gets/s", mine, base, baseline))
    b.step(f"langgraph-store: gets, {CALLERS} callers")
    mine, base = await paired_concurrently(get(ours), get(theirs), CALLERS, count * 8, b.runs)
    results.append(
        Result("langgraph store", f"aget, {CALLERS} callers", "gets/s", mine, base, baseline)
    )

    queries = [" ".join(rng.choice(_WORDS, size=3)) for _ in range(b.size(100, 200))]

    async def ranked(store: Any, query: str) -> None:
        assert await store.asearch(("users",), query=query, limit=10)

    async def filtered(store: Any, query: str) -> None:
        await store.asearch(("users", "u7"), filter={"kind": "wish"}, limit=10)

    async def ranked_filtered(store: Any, query: str) -> None:
        await store.asearch(("users",), query=query, filter={"kind": "wish"}, limit=10)

    for label, job in (
        ("asearch by query, top 10", ranked),
        ("asearch by query + filter", ranked_filtered),
        ("asearch by filter, one namespace", filtered),
    ):
        b.step(f"langgraph-store: {label}")
        mine_ms, base_ms = await paired_latency(
            lambda q, job=job: job(ours, q), lambda q, job=job: job(theirs, q), queries
        )
        results.append(
            Result(
                "langgraph store",
                f"{label} ({n:,} items) p50",
                "ms",
                mine_ms["p50"],
                base_ms["p50"],
                baseline,
                higher_is_better=False,
                extra={"ours": mine_ms, "baseline": base_ms},
            )
        )
    # Recall of the ranked search against the exact ranking (same embedder, same items).
    b.step("langgraph-store: ranked search agreement")
    agree = []
    for query in queries[:50]:
        mine_keys = [h.key for h in await ours.asearch(("users",), query=query, limit=10)]
        their_keys = [h.key for h in await theirs.asearch(("users",), query=query, limit=10)]
        agree.append(len(set(mine_keys) & set(their_keys)) / 10)
    # (The baseline ranks exactly; the word-hashing embedder makes many ties, so this is a
    # floor on agreement rather than a recall figure.)
    results[-3].extra["overlap_with_baseline_top10"] = statistics.mean(agree)
    return results
