"""ANN indexes on 20,000 clustered 768-d vectors: recall, filtered searches, quantization, upkeep.

Recall is measured against numpy's exact search. The data is clustered with a low intrinsic
dimension, as real embeddings are: uniformly random high-dimensional vectors have no
neighbours worth finding, and no index finds them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agency_data import Collection, Conflict, DataLayer, IndexProgress, ValidationError
from tests.conftest import TEMPLATE_DB, ServerSet, make_config

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
    info = await col.create_index(kind="hnsw", m=16, ef_construction=64, progress=seen.append)
    assert info.index is not None
    assert info.index.valid
    assert info.index.kind == "hnsw"
    assert info.index.size_bytes > 0
    assert info.rows == N
    assert seen, "the build reported its progress"

    assert await recall(col, ids, queries, truth) >= 0.95  # the default ef_search (40)

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
        await wide.drop_index()
        with pytest.raises(ValidationError, match="no index to rebuild"):
            await wide.reindex()
