"""ANN indexes on 20,000 clustered 768-d vectors: recall, filtered searches, quantization, upkeep.

Recall is measured against numpy's exact search. The data is clustered with a low intrinsic
dimension, as real embeddings are: uniformly random high-dimensional vectors have no
neighbours worth finding, and no index finds them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from agency_data import Collection, Conflict, DataLayer, IndexProgress, ValidationError
from agency_data.vectors import indexes
from agency_data.vectors.indexes import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    build_memory,
    hnsw_build_bytes,
)
from tests.conftest import TEMPLATE_DB, DatabaseDsn, ServerSet, make_config

N, DIM, QUERIES = 20_000, 768, 100


def clustered(n: int, dim: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    basis = rng.normal(size=(50, 16, dim)) / 4.0
    labels = rng.integers(0, 50, size=n)
    local = np.einsum("nk,nkd->nd", rng.normal(size=(n, 16)), basis[labels])
    return (centers[labels] + 0.6 * local + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = clustered(N + QUERIES, DIM)
    base, queries = points[:N], points[N:]
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(q_unit @ unit.T), axis=1)[:, :10]
    return base, queries, truth


@pytest.fixture(scope="module")
def module_database(servers: ServerSet) -> Iterator[str]:
    name = servers.create_database(TEMPLATE_DB)
    yield servers.dsn(name)
    servers.drop_database(name)


@pytest.fixture(scope="module")
async def layer(
    module_database: str, servers: ServerSet, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DataLayer]:
    config = make_config(module_database, servers.redis_url, tmp_path_factory.mktemp("vectors"))
    async with DataLayer(config) as dl:
        yield dl


async def filled(
    dl: DataLayer, name: str, base: np.ndarray, storage: str = "vector"
) -> tuple[Collection, list[Any]]:
    col = await dl.embeddings.create_collection(name, dimension=DIM, storage=storage)
    ids = await col.store_many(
        {"entity_type": "doc", "entity_id": str(i), "vector": v, "metadata": {"bucket": i % 100}}
        for i, v in enumerate(base)
    )
    return col, ids


async def recall(
    col: Collection, ids: list[Any], queries: np.ndarray, truth: np.ndarray, **options: Any
) -> float:
    position = {ident: i for i, ident in enumerate(ids)}
    batches = await col.batch_search([{"vector": q, "limit": 10} for q in queries], **options)
    found = [len({position[h.id] for h in hits} & set(truth[i])) for i, hits in enumerate(batches)]
    return sum(found) / (10 * len(queries))


async def test_hnsw_recall_and_filtered_search(
    layer: DataLayer, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, queries, truth = data
    col, ids = await filled(layer, "hnsw768", base)
    seen: list[IndexProgress] = []
    info = await col.create_index(kind="hnsw", progress=seen.append)
    assert info.index is not None
    assert info.index.valid
    assert info.index.kind == "hnsw"
    assert info.index.options == {"m": DEFAULT_M, "ef_construction": DEFAULT_EF_CONSTRUCTION}
    assert (DEFAULT_M, DEFAULT_EF_CONSTRUCTION) == (16, 128)
    assert info.index.size_bytes > 0
    assert info.rows == N
    assert seen, "the build reported its progress"

    # The default build at the default ef_search (40): what a user who never tunes gets.
    assert await recall(col, ids, queries, truth) >= 0.95

    # 1% of rows match: the iterative index scan keeps going until the limit is met.
    overlap = []
    for q in queries[:20]:
        hits = await col.find_similar(q, limit=10, filter={"bucket": 7})
        assert len(hits) == 10
        assert {h.metadata["bucket"] for h in hits} == {7}
        exact = await col.find_similar(q, limit=10, filter={"bucket": 7}, exact=True)
        overlap.append(len({h.id for h in hits} & {h.id for h in exact}) / 10)
    assert np.mean(overlap) >= 0.9

    with pytest.raises(Conflict, match="replace=True"):
        await col.create_index(kind="hnsw")


async def test_halfvec_recall(
    layer: DataLayer, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, queries, truth = data
    col, ids = await filled(layer, "half768", base, storage="halfvec")
    info = await col.create_index(kind="hnsw")
    assert info.bytes_per_vector == 8 + 2 * DIM
    assert await recall(col, ids, queries, truth) >= 0.9


async def test_binary_quantization_with_reranking(
    layer: DataLayer, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, queries, truth = data
    col, ids = await filled(layer, "bits768", base)
    info = await col.create_index(kind="hnsw", quantization="binary")
    assert info.index is not None
    assert info.index.quantization == "binary"
    full = await layer.embeddings.collection("hnsw768").describe()
    assert full.index is not None
    assert info.index.size_bytes < full.index.size_bytes / 4, "one bit a dimension, not 32"
    assert await recall(col, ids, queries, truth) >= 0.9
    assert await recall(col, ids, queries[:20], truth[:20], exact=True) == 1.0


async def test_ivfflat_lists_probes_and_upkeep(
    layer: DataLayer, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, queries, _truth = data
    col, ids = await filled(layer, "ivf768", base[:5000])
    info = await col.create_index(kind="ivfflat")
    assert info.index is not None
    assert info.index.options == {"lists": 5}  # rows / 1000
    small_truth = np.argsort(
        -(queries @ (base[:5000] / np.linalg.norm(base[:5000], axis=1, keepdims=True)).T), axis=1
    )[:, :10]
    assert await recall(col, ids, queries[:30], small_truth[:30], probes=5) >= 0.95

    await col.store_many(
        {"entity_type": "doc", "entity_id": f"more{i}", "vector": v}
        for i, v in enumerate(base[5000:20000])
    )
    report = await col.optimize()
    assert report.rows == N
    assert report.suggested_lists == 20
    assert any("20 lists" in action for action in report.actions)
    assert (await col.describe()).index.options == {"lists": 20}  # type: ignore[union-attr]

    await col.reindex()
    await col.drop_index()
    assert (await col.describe()).index is None
    assert len(await col.find_similar(queries[0], limit=5)) == 5  # an exact scan now


async def test_index_limits_and_bad_options(database: str, redis_url: str, tmp_path: Path) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        wide = await dl.embeddings.create_collection("wide", dimension=2001)
        with pytest.raises(ValidationError, match="up to 2000 dimensions"):
            await wide.create_index(kind="hnsw")
        # Binary quantization indexes one bit a dimension: far wider vectors fit.
        await wide.create_index(kind="hnsw", quantization="binary")
        l1 = await dl.embeddings.create_collection("l1", dimension=4, metric="manhattan")
        with pytest.raises(ValidationError, match="IVFFlat has no manhattan"):
            await l1.create_index(kind="ivfflat")
        await l1.create_index(kind="hnsw")
        with pytest.raises(ValidationError, match="kind"):
            await l1.create_index(kind="flat", replace=True)
        with pytest.raises(ValidationError, match="ef_construction"):
            await l1.create_index(kind="hnsw", m=32, ef_construction=40, replace=True)
        # Without ef_construction, a wide m gets pgvector's least (2 x m), not an error.
        info = await l1.create_index(kind="hnsw", m=80, replace=True)
        assert info.index is not None
        assert info.index.options == {"m": 80, "ef_construction": 160}
        await wide.drop_index()
        with pytest.raises(ValidationError, match="no index to rebuild"):
            await wide.reindex()


def test_graph_estimate_and_build_memory() -> None:
    # Measured against pgvector 0.8: its graph holds 3,792 bytes per 768-d vector at m 16.
    per_row = (hnsw_build_bytes(1_000_000, 768, "vector", 16) - (32 << 20)) / 1_000_000
    assert 3_800 <= per_row <= 3_800 * 1.2
    half = hnsw_build_bytes(1_000_000, 768, "halfvec", 16)
    assert hnsw_build_bytes(1_000_000, 768, "bit", 16) < half < per_row * 1_000_000
    assert hnsw_build_bytes(1000, 768, "vector", 32) > hnsw_build_bytes(1000, 768, "vector", 16)
    with pytest.raises(ValidationError, match="storage"):
        hnsw_build_bytes(1000, 768, "float8", 16)
    gib = 1 << 30
    assert build_memory(gib, 2 * gib, 8 * gib) is None  # it fits already
    assert build_memory(3 * gib, gib, 8 * gib) == 3 * gib  # raised to what it needs
    assert build_memory(16 * gib, gib, 8 * gib) == 8 * gib  # and no more than the ceiling
    assert build_memory(3 * gib, gib, None) is None  # a server whose memory is unknown
    assert build_memory(3 * gib, gib, gib // 2) is None  # never lowered


def _small_graph(n: int = 3000, dim: int = 128) -> list[dict[str, Any]]:
    points = clustered(n, dim, seed=11)
    return [{"entity_type": "doc", "entity_id": str(i), "vector": v} for i, v in enumerate(points)]


async def test_build_memory_on_a_server_of_its_own(
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # maintenance_work_mem far below the graph (~4 MB), as on a server tuned for something else.
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET maintenance_work_mem = '1MB'").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        col = await dl.embeddings.create_collection("small", dimension=128)
        await col.store_many(_small_graph())

        # A configured server's memory is unknown: its setting stands, and the build says it
        # will be slow (ours before it, pgvector's own notice during it).
        with caplog.at_level(logging.INFO, logger="agency_data.vectors"):
            info = await col.create_index(kind="hnsw")
        assert info.index is not None
        assert info.index.valid
        assert "more than maintenance_work_mem (1 MiB)" in caplog.text
        assert "no longer fits into maintenance_work_mem" in caplog.text

        # Where the machine is known (the embedded server), the build's own connection gets
        # what the estimate says the graph needs, and pgvector builds it in memory.
        monkeypatch.setattr(indexes, "_memory_ceiling", lambda config: 1 << 30)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agency_data.vectors"):
            info = await col.create_index(kind="hnsw", replace=True)
        assert info.index is not None
        assert info.index.valid
        assert "with maintenance_work_mem" in caplog.text
        assert "no longer fits" not in caplog.text
        # Only the build's connection was raised.
        assert await dl.admin.fetch_value("SHOW maintenance_work_mem") == "1MB"
