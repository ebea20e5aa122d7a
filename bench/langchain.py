"""The LangChain adapter against langchain-postgres, through LangChain's own interface.

Both stores get the same texts, metadata and embedding model (an ``Embeddings`` that looks the
texts' vectors up, so that neither side pays for a model), the same HNSW index, and the same
queries: ``aadd_texts`` for ingest, ``asimilarity_search`` (a text query, embedded by the model)
for search latency.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from langchain_core.embeddings import Embeddings

from agency_data.integrations.langchain import AgencyVectorStore
from bench.context import Bench, clustered
from bench.harness import Result, percentiles
from bench.vectors import DIM, _langchain_url, drop_if_exists

_COLLECTION = "bench_lc"
_TABLE = "bench_langchain_adapter"


class LookupEmbeddings(Embeddings):
    """The vectors of known texts ("doc 12", "query 3"), looked up: no model in the timing."""

    def __init__(self, documents: np.ndarray, queries: np.ndarray) -> None:
        self._documents = documents
        self._queries = queries

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(text).tolist() for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text).tolist()

    def _vector(self, text: str) -> np.ndarray:
        kind, _, number = text.partition(" ")
        return (self._documents if kind == "doc" else self._queries)[int(number)]


async def langchain(b: Bench) -> list[Result]:
    """AgencyVectorStore vs langchain-postgres's PGVectorStore: ingest rate and search p50."""
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.indexes import DistanceStrategy, HNSWIndex

    n = b.size(2_000, 10_000)
    queries = b.size(100, 200)
    data = clustered(b.rng(7), n + queries, DIM)
    embeddings = LookupEmbeddings(data[:n], data[n:])
    texts = [f"doc {i}" for i in range(n)]
    metadatas = [{"bucket": i % 100} for i in range(n)]
    query_texts = [f"query {j}" for j in range(queries)]

    b.step(f"langchain: AgencyVectorStore.aadd_texts ({n:,} x {DIM})")
    await drop_if_exists(b.dl, _COLLECTION)
    collection = await b.dl.embeddings.create_collection(_COLLECTION, dimension=DIM)
    ours = AgencyVectorStore(collection, embeddings)
    started = time.perf_counter()
    await ours.aadd_texts(texts, metadatas, ids=[f"doc-{i}" for i in range(n)])
    ours_ingest = n / (time.perf_counter() - started)
    assert await collection.count() == n, "the adapter stored every text"
    await collection.create_index("hnsw", m=16, ef_construction=64)

    b.step(f"langchain: langchain-postgres aadd_texts ({n:,} x {DIM})")
    engine = PGEngine.from_connection_string(_langchain_url(b))
    await engine.ainit_vectorstore_table(_TABLE, DIM, overwrite_existing=True)
    theirs = await PGVectorStore.create(engine, table_name=_TABLE, embedding_service=embeddings)
    started = time.perf_counter()
    # Its ids are UUIDs: given as ours are given strings.
    await theirs.aadd_texts(texts, metadatas, ids=[str(uuid.uuid4()) for _ in range(n)])
    their_ingest = n / (time.perf_counter() - started)
    await theirs.aapply_vector_index(
        HNSWIndex(
            name="bench_langchain_adapter_hnsw",
            distance_strategy=DistanceStrategy.COSINE_DISTANCE,
            m=16,
            ef_construction=64,
        )
    )

    b.step("langchain: asimilarity_search, both stores, alternating")
    ours_ms: list[float] = []
    their_ms: list[float] = []
    for warm in query_texts[:10]:
        await ours.asimilarity_search(warm, k=10)
        await theirs.asimilarity_search(warm, k=10)
    for j, query in enumerate(query_texts):
        pair = [(ours, ours_ms), (theirs, their_ms)]
        for store, samples in pair if j % 2 == 0 else pair[::-1]:
            started = time.perf_counter()
            found = await store.asimilarity_search(query, k=10)
            samples.append((time.perf_counter() - started) * 1000)
            assert len(found) == 10, "each store returns ten documents"
    ours_p = percentiles(ours_ms)
    their_p = percentiles(their_ms)
    await b.dl.admin.execute(f"DROP TABLE IF EXISTS {_TABLE}")
    await engine.close()
    await drop_if_exists(b.dl, _COLLECTION)
    return [
        Result(
            "langchain",
            f"aadd_texts ({n:,} x {DIM}-d, string ids)",
            "texts/s",
            ours_ingest,
            their_ingest,
            "langchain-postgres PGVectorStore.aadd_texts",
            target=">= 5x",
            met=ours_ingest >= 5 * their_ingest,
        ),
        Result(
            "langchain",
            "asimilarity_search p50 (HNSW, k 10)",
            "ms",
            ours_p["p50"],
            their_p["p50"],
            "langchain-postgres PGVectorStore.asimilarity_search",
            higher_is_better=False,
            target=">= 2x faster",
            met=their_p["p50"] >= 2 * ours_p["p50"],
            extra={"ours": ours_p, "langchain-postgres": their_p},
        ),
    ]
