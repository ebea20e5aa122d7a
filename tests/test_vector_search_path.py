"""find_similar's one-statement path: the search names its tenant to row-level security itself.

A lone, unfiltered search of an indexed collection outside a transaction is one statement
whose LIMIT subquery sets the tenant (no pipeline with a set_config of its own). These tests
hold it to the same answers as the pipelined path, to its own tenant's rows, and to leaving
nothing behind on the connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agency_data import DataLayer
from agency_data.vectors import _sql
from tests.conftest import make_config

DIM = 16


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


async def _shared(dl: DataLayer) -> tuple[Any, Any, np.ndarray]:
    managed = await dl.embeddings.create_collection("shared", dimension=DIM)
    acme = dl.tenant("acme").embeddings.collection("shared")
    globex = dl.tenant("globex").embeddings.collection("shared")
    points = vectors(300, seed=1)
    # The same vectors for both tenants: only row-level security and the tenant condition
    # tell their rows apart.
    for tenant, col in (("acme", acme), ("globex", globex)):
        await col.store_many(
            [
                {"entity_type": tenant, "entity_id": str(i), "vector": v}
                for i, v in enumerate(points)
            ]
        )
    await managed.create_index(kind="hnsw", m=8, ef_construction=64)
    return acme, globex, points


@pytest.fixture
def one_statement(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many searches took the one-statement path."""
    calls: list[int] = []
    original = _sql.tenant_search_sql

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_sql, "tenant_search_sql", counted)
    return calls


async def test_one_statement_gives_the_pipelined_answers(
    dl: DataLayer, one_statement: list[int]
) -> None:
    acme, globex, _ = await _shared(dl)
    for q in vectors(20, seed=2):
        alone = await acme.find_similar(q, limit=10)
        # ef_search given: the settings go first, pipelined with the search.
        pipelined = await acme.find_similar(q, limit=10, ef_search=40)
        assert [(h.id, h.distance) for h in alone] == [(h.id, h.distance) for h in pipelined]
        assert len(alone) == 10
        assert {h.entity_type for h in alone} == {"acme"}
        assert {h.entity_type for h in await globex.find_similar(q, limit=10)} == {"globex"}
    assert len(one_statement) == 40  # acme's and globex's plain searches, not the tuned ones


async def test_one_statement_keeps_thresholds_and_vectors(
    dl: DataLayer, one_statement: list[int]
) -> None:
    acme, _, points = await _shared(dl)
    hits = await acme.find_similar(points[5], limit=5, include_vectors=True, threshold=0.999)
    assert len(one_statement) == 1
    assert [h.entity_id for h in hits] == ["5"]
    assert hits[0].vector is not None
    assert np.asarray(hits[0].vector, dtype=np.float32).tobytes() == points[5].tobytes()


async def test_other_searches_keep_the_pipelined_path(
    dl: DataLayer, one_statement: list[int]
) -> None:
    acme, _, points = await _shared(dl)
    q = points[3]
    await acme.find_similar(q, limit=5, filter={"entity_type": "acme"})
    await acme.find_similar(q, limit=5, exact=True)
    await acme.find_similar(q, limit=5, probes=3)
    await acme.batch_search([{"vector": q}, {"vector": points[4]}])
    async with dl.tenant("acme").transaction():
        inside = await acme.find_similar(q, limit=5)
    assert inside[0].entity_id == "3"
    unindexed = await dl.embeddings.create_collection("bare", dimension=DIM)
    await unindexed.store({"entity_type": "t", "entity_id": "1", "vector": q})
    assert [h.entity_id for h in await unindexed.find_similar(q, limit=1)] == ["1"]
    assert one_statement == []


async def test_searching_inside_another_tenants_transaction(dl: DataLayer) -> None:
    acme, globex, points = await _shared(dl)
    async with dl.tenant("acme").transaction():
        await acme.count()
        hits = await globex.find_similar(points[7], limit=3)
        assert [h.entity_type for h in hits] == ["globex"] * 3
        assert hits[0].entity_id == "7"
        assert (await acme.find_similar(points[7], limit=1))[0].entity_type == "acme"


async def test_the_tenant_setting_ends_with_the_search(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    # One pooled connection, so the check below runs where the search ran.
    config = make_config(
        database, redis_url, tmp_path, postgresql={"pool_min_size": 1, "pool_max_size": 1}
    )
    async with DataLayer(config) as dl:
        acme, _, points = await _shared(dl)
        assert len(await acme.find_similar(points[0], limit=10)) == 10
        async with dl.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT coalesce(current_setting('agency_data.tenant', true), '') AS tenant"
            )
            row = await cursor.fetchone()
        assert row is not None
        assert row["tenant"] == ""
