"""Vector scenarios: ingest and search, against psycopg by hand and langchain-postgres."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from agency_data import DataLayer
from agency_data.vectors import _sql
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.filter_ast import parse_filter
from bench.context import Bench, clustered
from bench.databases import equalize
from bench.harness import Result, paired_latency, percentiles, timed

DIM = 768


def make_items(
    vectors: np.ndarray, offset: int = 0, *, shards: bool = False
) -> list[dict[str, Any]]:
    """Items for store_many; vector ``i`` is in bucket ``i % 100`` and decile ``i % 10``.

    With ``shards``, also in shard ``i % 1000``: the selective filters' field.
    """
    items = []
    for i, v in enumerate(vectors, start=offset):
        metadata = {"bucket": i % 100, "decile": i % 10}
        if shards:
            metadata["shard"] = i % 1000
        items.append({"entity_type": "doc", "entity_id": str(i), "vector": v, "metadata": metadata})
    return items


async def ingest(b: Bench) -> list[Result]:
    """store_many against binary COPY into an identical table, and langchain-postgres."""
    dl = b.dl
    n = b.size(5_000, 20_000)
    vectors = clustered(b.rng(1), n, DIM)
    items = make_items(vectors)
    col = await dl.embeddings.create_collection("bench_ingest", dimension=DIM, exist_ok=True)
    spec = await dl.embeddings._catalog.load("bench_ingest")
    # The same columns and indexes, without row-level security (LIKE does not copy it): binary
    # COPY straight into the table, which the layer cannot do under RLS.
    raw_table = sql.Identifier("bench_raw_ingest")
    await dl.admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(raw_table))
    await dl.admin.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(raw_table, spec.table_id)
    )

    async def ours() -> None:
        await dl.admin.execute(sql.SQL("TRUNCATE {}").format(spec.table_id))
        await col.store_many(items)

    async def raw_copy() -> None:
        await dl.admin.execute(sql.SQL("TRUNCATE {}").format(raw_table))
        async with (
            b.raw.connection() as conn,
            conn.cursor() as cursor,
            cursor.copy(
                sql.SQL(
                    "COPY {} (id, tenant_id, entity_type, entity_id, vector, metadata, content) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ).format(raw_table)
            ) as copy,
        ):
            copy.set_types(["uuid", "text", "text", "text", "vector", "jsonb", "text"])
            for item in items:
                await copy.write_row(
                    (
                        uuid.uuid4(),
                        "default",
                        "doc",
                        item["entity_id"],
                        item["vector"],
                        Jsonb(item["metadata"]),
                        None,
                    )
                )

    b.step(f"vector ingest: {n:,} x {DIM}")
    ours_rate = n / await timed(ours, b.runs)
    copy_rate = n / await timed(raw_copy, b.runs)
    assert await col.count() == n, "store_many stored every vector"
    copied = await dl.admin.fetch_value(sql.SQL("SELECT count(*) FROM {}").format(raw_table))
    assert copied == n, "COPY stored every vector"
    results = [
        Result(
            "vector ingest",
            f"store_many ({n:,} x {DIM}-d)",
            "vectors/s",
            ours_rate,
            copy_rate,
            "psycopg binary COPY",
            target="within 15% of COPY",
            met=copy_rate / ours_rate - 1 <= 0.15,
        ),
    ]
    lc_rate = await _langchain_ingest(b, vectors[: b.size(500, 2_000)])
    if lc_rate is not None:
        results.append(
            Result(
                "vector ingest",
                "store_many vs langchain-postgres",
                "vectors/s",
                ours_rate,
                lc_rate,
                "PGVectorStore.aadd_embeddings",
                target=">= 5x",
                met=ours_rate >= 5 * lc_rate,
            )
        )
    await dl.admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(raw_table))
    await dl.embeddings.drop_collection("bench_ingest")
    return results


def _langchain_url(b: Bench) -> str:
    # The owner's, like the other baselines: langchain-postgres creates its own tables, which
    # the application role may not, and they have no row-level security.
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(b.dl.admin_conninfo)
    user = quote(str(params.get("user", "postgres")), safe="")
    if params.get("password"):
        user += ":" + quote(str(params["password"]), safe="")
    host = params.get("host", "localhost")
    if str(host).startswith("/"):
        return f"postgresql+psycopg://{user}@/{params['dbname']}?host={host}"
    return f"postgresql+psycopg://{user}@{host}:{params.get('port', 5432)}/{params['dbname']}"


async def _langchain_store(b: Bench, table: str) -> Any:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGEngine, PGVectorStore

    engine = PGEngine.from_connection_string(_langchain_url(b))
    await engine.ainit_vectorstore_table(table, DIM, overwrite_existing=True)
    store = await PGVectorStore.create(
        engine, table_name=table, embedding_service=DeterministicFakeEmbedding(size=DIM)
    )
    return engine, store


async def _langchain_ingest(b: Bench, vectors: np.ndarray) -> float | None:
    b.step(f"vector ingest: langchain-postgres ({len(vectors):,})")
    engine, store = await _langchain_store(b, "bench_langchain_ingest")
    texts = [f"doc {i}" for i in range(len(vectors))]
    embeddings = [v.tolist() for v in vectors]
    metadatas = [{"bucket": i % 100} for i in range(len(vectors))]
    started = time.perf_counter()
    await store.aadd_embeddings(texts, embeddings, metadatas=metadatas)
    rate = len(vectors) / (time.perf_counter() - started)
    stored = await b.dl.admin.fetch_value("SELECT count(*) FROM bench_langchain_ingest")
    assert stored == len(vectors), "langchain-postgres stored every vector"
    await b.dl.admin.execute("DROP TABLE IF EXISTS bench_langchain_ingest")
    await engine.close()
    return rate


async def search(b: Bench) -> list[Result]:
    """Latency and recall@10 for HNSW (ef 40 / 100), halfvec, binary, exact, and filters."""
    dl = b.dl
    n = b.vectors
    queries = b.size(100, 200)
    rng = b.rng(2)
    data = clustered(rng, n + queries, DIM)
    base, probes = data[:n], data[n:]
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    truth = np.argsort(-(probes @ unit.T), axis=1)[:, :10]

    results: list[Result] = []
    collections: dict[str, Any] = {}
    for name, storage, quantization in (
        ("bench_hnsw", "vector", "none"),
        ("bench_half", "halfvec", "none"),
        ("bench_bits", "vector", "binary"),
    ):
        b.step(f"vector search: loading {n:,} into {name}")
        await drop_if_exists(dl, name)
        col = await dl.embeddings.create_collection(name, dimension=DIM, storage=storage)
        ids: list[Any] = []
        for start in range(0, n, 20_000):
            ids += await col.store_many(
                make_items(base[start : start + 20_000], start, shards=True)
            )
        b.step(f"vector search: building the {name} index")
        started = time.perf_counter()
        info = await col.create_index(
            kind="hnsw", m=16, ef_construction=64, quantization=quantization
        )
        build = time.perf_counter() - started
        collections[name] = (col, {ident: i for i, ident in enumerate(ids)})
        results.append(
            Result(
                "vector search",
                f"{name}: HNSW build ({n:,})",
                "s",
                build,
                higher_is_better=False,
                extra={"index_bytes": info.index.size_bytes if info.index else None},
            )
        )

    async def measure(label: str, name: str, count: int, **options: Any) -> None:
        col, position = collections[name]
        for q in probes[:count]:  # warm-up: the same queries once, so pages are in memory
            await col.find_similar(q, limit=10, **options)
        samples, found = [], 0
        for i, q in enumerate(probes[:count]):
            started = time.perf_counter()
            hits = await col.find_similar(q, limit=10, **options)
            samples.append((time.perf_counter() - started) * 1000)
            found += len({position[h.id] for h in hits} & set(truth[i]))
        p = percentiles(samples)
        recall = found / (10 * count)
        target_ok = p["p95"] < (5 if n <= 100_000 else 20) and recall >= 0.95
        results.append(
            Result(
                "vector search",
                f"{label}: p95 latency",
                "ms",
                p["p95"],
                higher_is_better=False,
                target="p95 < 5 ms, recall >= 0.95"
                if "HNSW ef 40" in label and n <= 100_000
                else "",
                met=target_ok if "HNSW ef 40" in label and n <= 100_000 else None,
                extra={**p, "recall@10": recall},
            )
        )
        results.append(Result("vector search", f"{label}: recall@10", "recall", recall, extra=p))

    b.step("vector search: HNSW")
    await measure("HNSW ef 40", "bench_hnsw", queries)
    await measure("HNSW ef 100", "bench_hnsw", queries, ef_search=100)
    await measure("halfvec HNSW ef 40", "bench_half", queries)
    await measure("binary + re-rank", "bench_bits", queries)
    b.step("vector search: exact")
    await measure("exact scan", "bench_hnsw", b.size(10, 20), exact=True)
    results += await _filtered(b, collections["bench_hnsw"], probes, base)
    results += await _baselines(b, collections["bench_hnsw"][0], probes)
    for name in collections:
        await drop_if_exists(dl, name)
    return results


async def _filtered(
    b: Bench, collection: tuple[Any, dict[Any, int]], probes: np.ndarray, base: np.ndarray
) -> list[Result]:
    """Filtered search, from broad to selective: as the layer runs it (the application role,
    under row-level security), and the same SQL as the owner, whom row-level security does not
    filter. The metadata GIN index can serve only the second: PostgreSQL does not let a
    condition that is not leakproof (jsonb's @> is not) use an index under row-level security.
    """
    col, position = collection
    spec = await b.dl.embeddings._catalog.load(col.name)
    count = b.size(50, 100)

    async def layer(q: np.ndarray, where: dict[str, Any]) -> list[int]:
        return [position[h.id] for h in await col.find_similar(q, limit=10, filter=where)]

    async def owner(q: np.ndarray, where: dict[str, Any]) -> list[int]:
        statement, params = _search(spec, q, where)
        async with b.raw.connection() as conn:
            rows = await (await conn.execute(statement, params)).fetchall()
        return [position[row["id"]] for row in rows]

    results = []
    for label, field, divisor, value in (
        ("10%", "decile", 10, 3),
        ("1%", "bucket", 100, 7),
        ("0.1%", "shard", 1000, 7),
    ):
        where = {field: value}
        subset = np.flatnonzero(np.arange(len(base)) % divisor == value)
        unit = base[subset] / np.linalg.norm(base[subset], axis=1, keepdims=True)
        truths = [set(subset[np.argsort(-(unit @ q))[:10]]) for q in probes[:count]]
        paths: list[tuple[str, Any, Fetch]] = [
            ("", layer, _layer_fetch(b)),
            (" (owner, no RLS)", owner, _raw_fetch(b)),
        ]
        for suffix, search, explain in paths:
            name = f"filtered {label}{suffix}"
            b.step(f"vector search: {name}")
            plan = await _plan(explain, spec, probes[0], where)
            for q in probes[:count]:  # warm-up, as for the unfiltered searches
                await search(q, where)
            samples, found, short = [], 0, 0
            for q, truth in zip(probes[:count], truths, strict=True):
                started = time.perf_counter()
                hits = await search(q, where)
                samples.append((time.perf_counter() - started) * 1000)
                found += len(set(hits) & truth)
                short += len(hits) < 10
            p = percentiles(samples)
            recall = found / (10 * count)
            results.append(
                Result(
                    "vector search",
                    f"{name}: p95 latency",
                    "ms",
                    p["p95"],
                    higher_is_better=False,
                    target="full limit returned",
                    met=short == 0,
                    extra={**p, "recall@10": recall, "short_results": short, "plan": plan},
                )
            )
            results.append(Result("vector search", f"{name}: recall@10", "recall", recall))
    return results


def _search(
    spec: CollectionSpec, query: np.ndarray, where: dict[str, Any]
) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    return _sql.search_sql(spec, "default", query, 10, parse_filter(where), include_vectors=False)


Fetch = Callable[[sql.SQL | sql.Composed, list[Any]], Awaitable[list[dict[str, Any]]]]


def _layer_fetch(b: Bench) -> Fetch:
    # A pooled connection as find_similar gets it, with the tenant named in the transaction
    # (dl.fetch would mark the connection for a reset, as it does after any caller's own SQL).
    async def fetch(statement: sql.SQL | sql.Composed, params: list[Any]) -> list[dict[str, Any]]:
        async with b.dl.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config('agency_data.tenant', 'default', true)")
            return await (await conn.execute(statement, params)).fetchall()

    return fetch


def _raw_fetch(b: Bench) -> Fetch:
    async def fetch(statement: sql.SQL | sql.Composed, params: list[Any]) -> list[dict[str, Any]]:
        async with b.raw.connection() as conn:
            return await (await conn.execute(statement, params)).fetchall()

    return fetch


async def _plan(
    fetch: Fetch, spec: CollectionSpec, query: np.ndarray, where: dict[str, Any]
) -> str:
    """The plan's nodes for a filtered search, outermost first: which scans serve it."""
    statement, params = _search(spec, query, where)
    rows = await fetch(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statement), params)
    steps: list[str] = []
    pending = [next(iter(rows[0].values()))[0]["Plan"]]
    while pending:
        node = pending.pop(0)
        index = node.get("Index Name")
        steps.append(node["Node Type"] + (f" on {index}" if index else ""))
        pending.extend(node.get("Plans", []))
    return " > ".join(steps)


async def _baselines(b: Bench, col: Any, probes: np.ndarray) -> list[Result]:
    dl = b.dl
    count = b.size(100, 200)
    spec = await dl.embeddings._catalog.load(col.name)

    async def ours_p(q: np.ndarray) -> None:
        hits = await col.find_similar(q, limit=10)
        assert len(hits) == 10

    async def raw_p(q: np.ndarray) -> None:
        query, params = _sql.search_sql(spec, "default", q, 10, None, include_vectors=False)
        async with b.raw.connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
        assert len(rows) == 10

    b.step("vector search: the same SQL by psycopg")
    await equalize(dl.pool, b.raw)
    ours, raw = await paired_latency(ours_p, raw_p, list(probes[:count]))
    results = [
        Result(
            "vector search",
            "find_similar p50 (HNSW ef 40)",
            "ms",
            ours["p50"],
            raw["p50"],
            "psycopg, same SQL, no RLS",
            higher_is_better=False,
            target="<= 10% overhead",
            met=ours["p50"] / raw["p50"] - 1 <= 0.10,
            extra={"ours": ours, "raw": raw},
        )
    ]
    lc = await _langchain_search(b, spec, probes[:count])
    if lc is not None:
        results.append(
            Result(
                "vector search",
                "find_similar p50 vs langchain-postgres",
                "ms",
                ours["p50"],
                lc["p50"],
                "asimilarity_search_by_vector",
                higher_is_better=False,
                extra={"langchain": lc},
            )
        )
    return results


async def _latency(op: Any, probes: np.ndarray) -> dict[str, float]:
    for q in probes[:10]:
        await op(q)
    samples = []
    for q in probes:
        started = time.perf_counter()
        await op(q)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


async def _langchain_search(b: Bench, spec: Any, probes: np.ndarray) -> dict[str, float] | None:
    from langchain_postgres.v2.indexes import DistanceStrategy, HNSWIndex

    b.step("vector search: langchain-postgres on the same data and index")
    engine, store = await _langchain_store(b, "bench_langchain_search")
    await b.dl.admin.execute(
        sql.SQL(
            "INSERT INTO bench_langchain_search (langchain_id, content, embedding, langchain_metadata) "
            "SELECT id, entity_id, vector, metadata FROM {}"
        ).format(spec.table_id)
    )
    await store.aapply_vector_index(
        HNSWIndex(
            name="bench_langchain_hnsw",
            distance_strategy=DistanceStrategy.COSINE_DISTANCE,
            m=16,
            ef_construction=64,
        )
    )

    async def op(q: np.ndarray) -> None:
        docs = await store.asimilarity_search_by_vector(q.tolist(), k=10)
        assert len(docs) == 10

    result = await _latency(op, probes)
    await b.dl.admin.execute("DROP TABLE IF EXISTS bench_langchain_search")
    await engine.close()
    return result


async def drop_if_exists(dl: DataLayer, name: str) -> None:
    """Drop collection ``name`` if there is one."""
    if name in await dl.embeddings.list_collections():
        await dl.embeddings.drop_collection(name)
