"""Vector scenarios: ingest and search, against psycopg by hand and langchain-postgres."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from agency_data import DataLayer
from agency_data.vectors import _sql
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.compat import HalfVector
from agency_data.vectors.filter_ast import parse_filter
from agency_data.vectors.indexes import DEFAULT_M, hnsw_build_bytes
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
            copy.set_types(["text", "text", "text", "text", "vector", "jsonb", "text"])
            for item in items:
                await copy.write_row(
                    (
                        str(uuid.uuid4()),
                        "default",
                        "doc",
                        item["entity_id"],
                        item["vector"],
                        Jsonb(item["metadata"]),
                        None,
                    )
                )

    b.step(f"vector ingest: {n:,} x {DIM}")
    # A warm-up of each, then their timed runs alternate (which goes first too), so that both
    # see the same moments of a shared machine; the median run of each is kept.
    await ours()
    await raw_copy()
    ours_runs: list[float] = []
    copy_runs: list[float] = []
    for run in range(b.runs):
        pair = [(ours, ours_runs), (raw_copy, copy_runs)]
        for job, runs in pair if run % 2 == 0 else pair[::-1]:
            runs.append(await timed(job, 1))
    ours_rate = n / float(np.median(ours_runs))
    copy_rate = n / float(np.median(copy_runs))
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
    """Latency with recall@10 beside it, for indexes built with the layer's defaults.

    HNSW at ef_search 40 (pgvector's default) / 100 / 200, halfvec, binary with re-ranking,
    exact scans and filtered searches; each index's build time, size, and the server's memory.
    At 1m the halfvec index comes first, the full-precision one follows when it fits in this
    machine's memory, and binary quantization and the psycopg / langchain-postgres comparisons
    are skipped (they are measured at 20k and 100k).
    """
    dl = b.dl
    n = b.vectors
    million = n >= 1_000_000
    queries = b.size(100, 200)
    b.step(f"vector search: {n:,} x {DIM} vectors and their exact top 10")
    data = clustered(b.rng(2), n + queries, DIM)
    base, probes = data[:n], data[n:]
    truth = exact_top(base, probes)
    plans = [
        ("bench_hnsw", "vector", "none"),
        ("bench_half", "halfvec", "none"),
        ("bench_bits", "vector", "binary"),
    ]
    skipped: list[str] = []
    if million:
        plans = [("bench_half", "halfvec", "none")]
        too_big = _too_big(n, "vector")
        if too_big:
            skipped.append(f"the full-precision index ({too_big})")
        else:
            plans.append(("bench_hnsw", "vector", "none"))
        skipped += [
            "binary quantization",
            "the same SQL by psycopg and langchain-postgres (measured at 20k and 100k)",
        ]
        b.progress.console.print(f"vector search at {n:,}: skipping {'; '.join(skipped)}")

    results: list[Result] = []
    for name, storage, quantization in plans:
        built, col, position = await _load_and_build(b, name, storage, quantization, base)
        if skipped:
            built[0].extra["skipped"] = skipped
        results += built
        kind = {"vector": "HNSW", "halfvec": "halfvec HNSW"}[storage]
        b.step(f"vector search: {name}")
        if quantization == "binary":
            results.append(
                await _measure(col, position, probes, truth, "binary + re-rank", queries)
            )
        else:
            rows = [
                await _measure(
                    col,
                    position,
                    probes,
                    truth,
                    f"{kind} ef_search {ef or 40}" + (" (default)" if ef is None else ""),
                    queries,
                    ef_search=ef,
                )
                for ef in (None, 100, 200)
            ]
            if million:
                _mark_target(rows, 20)
            elif storage == "vector":
                rows[0].target = "default build and ef_search: p95 < 5 ms, recall >= 0.95"
                rows[0].met = rows[0].ours < 5 and rows[0].extra["recall@10"] >= 0.95
            results += rows
        primary = name == ("bench_half" if million else "bench_hnsw")
        if primary:
            b.step(f"vector search: {name}, exact")
            results.append(
                await _measure(
                    col, position, probes, truth, f"{kind} exact scan", b.size(10, 20), exact=True
                )
            )
        if primary or (million and quantization == "none"):
            results += await _filtered(b, (col, position), probes, base, kind)
        if name == "bench_hnsw" and not million:
            results += await _baselines(b, col, probes)
        await drop_if_exists(dl, name)
    return results


def exact_top(base: np.ndarray, probes: np.ndarray, k: int = 10) -> np.ndarray:
    """The rows of ``base`` nearest each probe by cosine, best first: numpy, a slice at a time
    (one product of a million rows would need gigabytes)."""
    best = np.full((len(probes), k), -np.inf, dtype=np.float32)
    where = np.zeros((len(probes), k), dtype=np.int64)
    for start in range(0, len(base), 50_000):
        part = base[start : start + 50_000]
        sims = probes @ (part / np.linalg.norm(part, axis=1, keepdims=True)).T
        take = min(k, len(part))
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        merged = np.concatenate([best, np.take_along_axis(sims, top, axis=1)], axis=1)
        places = np.concatenate([where, top + start], axis=1)
        order = np.argsort(-merged, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(merged, order, axis=1)
        where = np.take_along_axis(places, order, axis=1)
    return where


def _too_big(n: int, storage: str) -> str:
    """Why an index of ``n`` rows would not fit this machine's memory ('' when it fits)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    graph = hnsw_build_bytes(n, DIM, storage, DEFAULT_M)
    table = n * (DIM * (4 if storage == "vector" else 2) + 200)
    # The build may take a quarter of the RAM (indexes.py); table, index and this process's
    # copy of the data should stay within the rest, or searches measure the disk.
    if graph > ram // 4 or table + graph + 2 * table > ram * 3 // 4:
        return (
            f"table {table / 2**30:.1f} GiB and graph {graph / 2**30:.1f} GiB, "
            f"RAM {ram / 2**30:.0f} GiB"
        )
    return ""


async def _load_and_build(
    b: Bench, name: str, storage: str, quantization: str, base: np.ndarray
) -> tuple[list[Result], Any, dict[Any, int]]:
    """Load ``base`` into a new collection and build its index with the layer's defaults."""
    dl = b.dl
    n = len(base)
    await drop_if_exists(dl, name)
    col = await dl.embeddings.create_collection(name, dimension=DIM, storage=storage)
    ids: list[Any] = []
    for start in range(0, n, 20_000):
        b.step(f"vector search: loading {name}, {start:,} of {n:,}")
        ids += await col.store_many(make_items(base[start : start + 20_000], start, shards=True))
    b.step(f"vector search: building the {name} index")
    postmaster = _postmaster(await dl.admin.fetch_value("SELECT pg_backend_pid()"))
    peak = [0]
    watcher = asyncio.create_task(_watch_memory(postmaster, peak)) if postmaster else None
    started = time.perf_counter()
    try:
        info = await col.create_index(kind="hnsw", quantization=quantization)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    build = time.perf_counter() - started
    assert info.index is not None
    options = info.index.options
    index_mib = info.index.size_bytes / 2**20
    results = [
        Result(
            "vector search",
            f"{name}: HNSW build, {n:,} rows (m {options['m']}, "
            f"ef_construction {options['ef_construction']})",
            "s",
            build,
            higher_is_better=False,
            extra={"index_bytes": info.index.size_bytes, "table_bytes": info.table_bytes},
        ),
        Result(
            "vector search",
            f"{name}: index size (table {info.table_bytes / 2**20:,.0f} MiB)",
            "MiB",
            index_mib,
            higher_is_better=False,
        ),
    ]
    if postmaster:
        shared = await dl.admin.fetch_value(
            "SELECT pg_size_bytes(current_setting('shared_buffers'))"
        )
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        storage_bits = "bit" if quantization == "binary" else storage
        graph = hnsw_build_bytes(n, DIM, storage_bits, options["m"])
        results.append(
            Result(
                "vector search",
                f"{name}: PostgreSQL memory at build peak, PSS (shared_buffers "
                f"{shared / 2**20:,.0f} MiB, graph ~{graph / 2**20:,.0f} MiB)",
                "MiB",
                peak[0] / 2**20,
                higher_is_better=False,
                extra={"shared_buffers": shared, "graph_estimate": graph, "ram": ram},
            )
        )
    return results, col, {ident: i for i, ident in enumerate(ids)}


async def _watch_memory(postmaster: int, peak: list[int]) -> None:
    """Keep the server's largest memory footprint in ``peak[0]``, sampled every second."""
    while True:
        peak[0] = max(peak[0], await asyncio.to_thread(_postgres_pss, postmaster))
        await asyncio.sleep(1)


def _postmaster(backend_pid: int) -> int | None:
    """The pid of the server's postmaster, if it runs on this machine and /proc shows it."""
    try:
        status = Path(f"/proc/{backend_pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def _postgres_pss(postmaster: int) -> int:
    """Bytes of memory the server's processes hold (proportional set size: shared pages are
    shared out, so the sum is the server's real footprint)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if int(entry.name) != postmaster and parent != postmaster:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile, or one we may not read
    return total


async def _measure(
    col: Any,
    position: dict[Any, int],
    probes: np.ndarray,
    truth: np.ndarray,
    label: str,
    count: int,
    **options: Any,
) -> Result:
    """p50 / p95 / p99 and recall@10 of ``count`` searches, after the same searches once."""
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
    return Result(
        "vector search",
        f"{label}: p95 latency, recall@10 {recall:.3f}",
        "ms",
        p["p95"],
        higher_is_better=False,
        extra={**p, "recall@10": recall, "queries": count},
    )


def _mark_target(rows: list[Result], p95: float) -> None:
    """Put the target on the first row (lowest ef_search) that reaches recall@10 0.95."""
    good = [r for r in rows if r.extra["recall@10"] >= 0.95]
    row = good[0] if good else rows[-1]
    row.target = f"p95 < {p95:g} ms at recall@10 >= 0.95"
    row.met = bool(good) and row.ours < p95


async def _filtered(
    b: Bench,
    collection: tuple[Any, dict[Any, int]],
    probes: np.ndarray,
    base: np.ndarray,
    kind: str,
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
        truths = [set(subset[row]) for row in exact_top(base[subset], probes[:count])]
        paths: list[tuple[str, Any, Fetch]] = [
            ("", layer, _layer_fetch(b)),
            (" (owner, no RLS)", owner, _raw_fetch(b)),
        ]
        for suffix, search, explain in paths:
            name = f"{kind} filtered {label}{suffix}"
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
                    f"{name}: p95 latency, recall@10 {recall:.3f}",
                    "ms",
                    p["p95"],
                    higher_is_better=False,
                    target="full limit returned",
                    met=short == 0,
                    extra={**p, "recall@10": recall, "short_results": short, "plan": plan},
                )
            )
    return results


def _search(
    spec: CollectionSpec, query: np.ndarray, where: dict[str, Any]
) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    vector = HalfVector(query) if spec.storage == "halfvec" else query
    return _sql.search_sql(spec, "default", vector, 10, parse_filter(where), include_vectors=False)


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
            "SELECT id::uuid, entity_id, vector, metadata FROM {}"
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
