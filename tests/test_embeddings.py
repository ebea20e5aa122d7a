"""The embedding store: collections, storing, reading, exact search per metric, bad input."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agency_data import (
    Conflict,
    DataLayer,
    Embedding,
    NotFound,
    SimilarityQuery,
    ValidationError,
)
from tests.conftest import make_config

DIM = 16


def vectors(n: int, dim: int = DIM, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def items(matrix: np.ndarray, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "entity_type": "doc",
            "entity_id": str(i),
            "vector": v,
            "metadata": {"i": i, "kind": "fact" if i % 5 == 0 else "note"},
            "content": f"note number {i} about {'planning' if i % 7 == 0 else 'cooking'}",
            **extra,
        }
        for i, v in enumerate(matrix)
    ]


@pytest.fixture
async def small(dl: DataLayer) -> AsyncIterator[DataLayer]:
    await dl.embeddings.create_collection("small", dimension=DIM)
    return dl


async def test_default_collection_follows_config(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, vector={"dimension": 3, "distance_metric": "euclidean"}
    )
    async with DataLayer(config) as dl:
        ids = await dl.embeddings.store_many(
            [{"entity_type": "t", "entity_id": "1", "vector": [1, 2, 3]}]
        )
        info = await dl.embeddings.describe()
        assert (info.name, info.dimension, info.metric, info.storage, info.rows) == (
            "default",
            3,
            "euclidean",
            "vector",
            1,
        )
        assert await dl.embeddings.list_collections() == ["default"]
        (hit,) = await dl.embeddings.find_similar([1, 2, 4], limit=1)
        assert hit.id == ids[0]
        assert hit.score == pytest.approx(1.0)  # euclidean: the score is the distance


async def test_collections_lifecycle(dl: DataLayer) -> None:
    memories = await dl.embeddings.create_collection(
        "memories", dimension=4, metric="inner_product", storage="halfvec"
    )
    again = await dl.embeddings.create_collection(
        "memories", dimension=4, metric="inner_product", storage="halfvec", exist_ok=True
    )
    assert again.name == memories.name
    with pytest.raises(Conflict, match="already exists"):
        await dl.embeddings.create_collection(
            "memories", dimension=4, metric="inner_product", storage="halfvec"
        )
    with pytest.raises(Conflict, match="shape differs"):
        await dl.embeddings.create_collection("memories", dimension=8, exist_ok=True)
    assert "memories" in await dl.embeddings.list_collections()
    await memories.store({"entity_type": "t", "entity_id": "1", "vector": [1, 0, 0, 0]})
    await dl.embeddings.drop_collection("memories")
    assert "memories" not in await dl.embeddings.list_collections()
    with pytest.raises(NotFound, match="create_collection"):
        await dl.embeddings.collection("memories").count()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad-Name", "dimension": 3}, "name"),
        ({"name": "x" * 49, "dimension": 3}, "name"),
        ({"name": "ok", "dimension": 0}, "dimension"),
        ({"name": "ok", "dimension": 16001}, "dimension"),
        ({"name": "ok", "dimension": 3, "metric": "hamming"}, "metric"),
        ({"name": "ok", "dimension": 3, "storage": "bit"}, "storage"),
    ],
)
async def test_bad_collections(dl: DataLayer, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await dl.embeddings.create_collection(**kwargs)
    assert info.value.field == field


async def test_store_get_update_delete(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(20)
    ids = await col.store_many(items(matrix))
    assert len(ids) == 20
    assert await col.count() == 20
    first = await col.get(ids[0])
    assert isinstance(first, Embedding)
    assert first.entity_id == "0"
    assert np.array_equal(np.asarray(first.vector, dtype=np.float32), matrix[0])
    assert {e.id for e in await col.get_many([ids[1], ids[2], uuid.uuid4()])} == {ids[1], ids[2]}

    merged = await col.update_metadata(ids[0], {"extra": True})
    assert merged.metadata == {"i": 0, "kind": "fact", "extra": True}
    replaced = await col.update_metadata(ids[0], {"only": 1}, merge=False)
    assert replaced.metadata == {"only": 1}

    assert await col.count({"kind": "fact"}) == 3  # 5, 10, 15 (0 lost its kind)
    assert await col.delete(filter={"kind": "fact"}) == 3
    assert await col.delete([ids[1], uuid.uuid4()]) == 1
    assert await col.count() == 16
    with pytest.raises(NotFound):
        await col.get(ids[1])
    with pytest.raises(ValidationError, match="ids or a filter"):
        await col.delete()


async def test_upsert_by_id_and_embedding_objects(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    (ident,) = await col.store_many(items(vectors(1)))
    stored = await col.get(ident)
    changed = stored.model_copy(update={"metadata": {"v": 2}, "vector": [0.5] * DIM})
    assert await col.store(changed) == ident
    again = await col.get(ident)
    assert again.metadata == {"v": 2}
    assert again.vector == [0.5] * DIM
    assert again.created_at == stored.created_at
    assert await col.count() == 1


async def test_stream_store(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(250)

    async def produce() -> AsyncIterator[dict[str, Any]]:
        for item in items(matrix):
            yield item

    assert await col.stream_store(produce(), batch_size=100) == 250
    assert await col.stream_store(items(matrix[:5]), batch_size=2) == 5
    assert await col.count() == 255


def _bad_items() -> list[tuple[Any, str]]:
    good = {"entity_type": "t", "entity_id": "1", "vector": [0.0] * DIM}
    return [
        ({**good, "vector": [0.0] * (DIM - 1)}, "dimensions"),
        ({**good, "vector": [0.0] * (DIM + 1)}, "dimensions"),
        ({**good, "vector": []}, "empty"),
        ({**good, "vector": [math.nan] + [0.0] * (DIM - 1)}, "NaN"),
        ({**good, "vector": [math.inf] + [0.0] * (DIM - 1)}, "NaN or an infinite"),
        ({**good, "vector": [1e39] + [0.0] * (DIM - 1)}, "float32"),
        ({**good, "vector": ["1"] * DIM}, "not a number"),
        ({**good, "vector": "0" * DIM}, "not a sequence"),
        ({**good, "vector": [[0.0]] * DIM}, "flat"),
        ({k: v for k, v in good.items() if k != "vector"}, "missing"),
        ({**good, "entity_type": " "}, "blank"),
        ({**good, "entity_id": None}, "must be a string"),
        ({**good, "metadata": [1]}, "must be a dict"),
        ({**good, "metadata": {"x": math.nan}}, "NaN"),
        ({**good, "metadata": {"x": "y" * (1 << 20)}}, "over the limit"),
        ({**good, "colour": "red"}, "unknown fields"),
        ({**good, "id": ""}, "is empty"),
        ({**good, "id": "x" * 513}, "at most 512"),
        ({**good, "id": "a\x00b"}, "NUL"),
        ({**good, "id": 5}, "not an id"),
        ("not a mapping", "not an Embedding"),
    ]


@pytest.mark.parametrize(("bad", "message"), _bad_items())
async def test_bad_items_fail_the_whole_batch(small: DataLayer, bad: Any, message: str) -> None:
    col = small.embeddings.collection("small")
    batch = [*items(vectors(3)), bad]
    with pytest.raises(ValidationError, match=message) as info:
        await col.store_many(batch)
    assert info.value.field is not None
    assert info.value.field.startswith("items[3]")
    assert await col.count() == 0


async def test_duplicate_ids_in_a_batch(small: DataLayer) -> None:
    ident = uuid.uuid4()
    batch = [{**item, "id": ident} for item in items(vectors(2))]
    with pytest.raises(ValidationError, match="appears twice"):
        await small.embeddings.collection("small").store_many(batch)


async def test_halfvec_range_is_checked(dl: DataLayer) -> None:
    col = await dl.embeddings.create_collection("half", dimension=2, storage="halfvec")
    with pytest.raises(ValidationError, match="half precision"):
        await col.store({"entity_type": "t", "entity_id": "1", "vector": [70000.0, 0.0]})


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan", "inner_product"])
async def test_every_metric_matches_numpy_exact_search(dl: DataLayer, metric: str) -> None:
    col = await dl.embeddings.create_collection(f"m_{metric}", dimension=DIM, metric=metric)
    matrix = vectors(400, seed=3)
    ids = await col.store_many(items(matrix))
    queries = vectors(10, seed=4)
    for q in queries:
        if metric == "cosine":
            expected = 1 - (matrix @ q) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
        elif metric == "euclidean":
            expected = np.linalg.norm(matrix - q, axis=1)
        elif metric == "manhattan":
            expected = np.abs(matrix - q).sum(axis=1)
        else:
            expected = -(matrix @ q)
        top = np.argsort(expected)[:10]
        hits = await col.find_similar(q, limit=10, exact=True)
        assert [h.id for h in hits] == [ids[i] for i in top]
        assert [h.distance for h in hits] == pytest.approx(
            expected[top].tolist(), rel=1e-4, abs=1e-5
        )
        scores = [h.score for h in hits]
        if metric in ("cosine", "inner_product"):
            assert scores == sorted(scores, reverse=True)
        else:
            assert scores == sorted(scores)


async def test_threshold_filter_and_vectors(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(100)
    await col.store_many(items(matrix))
    q = matrix[0]
    hits = await col.find_similar(q, limit=50, threshold=0.2)
    assert hits
    assert all(h.score >= 0.2 for h in hits)
    assert hits[0].score == pytest.approx(1.0)
    facts = await col.find_similar(q, limit=50, filter={"kind": "fact", "i": {"$gte": 50}})
    assert {h.metadata["i"] for h in facts} == set(range(50, 100, 5))
    (with_vector,) = await col.find_similar(q, limit=1, include_vectors=True)
    assert np.array_equal(np.asarray(with_vector.vector, dtype=np.float32), q)
    assert (await col.find_similar(q, limit=1))[0].vector is None


async def test_bad_queries(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    await col.store_many(items(vectors(3)))
    q = [0.1] * DIM
    with pytest.raises(ValidationError, match="dimensions"):
        await col.find_similar([0.1] * 3)
    with pytest.raises(ValidationError, match="NaN"):
        await col.find_similar([math.nan] * DIM)
    with pytest.raises(ValidationError, match="unknown operator"):
        await col.find_similar(q, filter={"kind": {"$regex": "f.*"}})
    with pytest.raises(ValidationError, match="limit"):
        await col.find_similar(q, limit=0)
    with pytest.raises(ValidationError, match="ef_search"):
        await col.find_similar(q, ef_search=0)
    with pytest.raises(ValidationError, match="batch"):
        await col.batch_search([SimilarityQuery(vector=q)] * 1001)
    with pytest.raises(ValidationError, match="k must be"):
        await col.hybrid_search("text", q, k=0)


async def test_batch_search_matches_single_searches(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(200)
    await col.store_many(items(matrix))
    queries = [
        SimilarityQuery(vector=matrix[0], limit=5),
        {"vector": matrix[1], "limit": 3, "filter": {"kind": "note"}},
        SimilarityQuery(vector=matrix[2], limit=4, threshold=0.99),
    ]
    batched = await col.batch_search(queries, ef_search=50)
    singles = [
        await col.find_similar(matrix[0], limit=5),
        await col.find_similar(matrix[1], limit=3, filter={"kind": "note"}),
        await col.find_similar(matrix[2], limit=4, threshold=0.99),
    ]
    assert [[h.id for h in r] for r in batched] == [[h.id for h in r] for r in singles]
    assert len(batched[2]) == 1  # only the vector itself is that close


async def test_search_stream_walks_everything_in_order(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(300)
    await col.store_many(items(matrix))
    streamed = [r async for r in col.search_stream(matrix[0], batch_size=7)]
    assert len(streamed) == 300
    distances = [r.distance for r in streamed]
    assert distances == sorted(distances)
    close = [r async for r in col.search_stream(matrix[0], threshold=0.3, filter={"kind": "note"})]
    assert all(r.score >= 0.3 and r.metadata["kind"] == "note" for r in close)
    partial = []
    async with contextlib.aclosing(col.search_stream(matrix[0])) as stream:
        async for result in stream:
            partial.append(result)
            if len(partial) == 5:
                break
    assert await col.count() == 300  # the pool connection came back after the early break


async def test_hybrid_search_fuses_text_and_vectors(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    matrix = vectors(100)
    batch = items(matrix)
    batch[14]["content"] = "planning, planning and more planning"
    ids = await col.store_many(batch)
    # Item 14 is the best text match and the vector's own nearest neighbour: it must lead.
    hits = await col.hybrid_search("planning", matrix[14], limit=5)
    assert hits[0].id == ids[14]
    assert all(hits[i].score >= hits[i + 1].score for i in range(len(hits) - 1))
    planning = {ids[i] for i in range(0, 100, 7)}
    assert len(planning & {h.id for h in hits}) >= 3
    only_facts = await col.hybrid_search("planning", matrix[14], limit=5, filter={"kind": "fact"})
    assert all(h.metadata["kind"] == "fact" for h in only_facts)


async def test_tenants_are_isolated(small: DataLayer) -> None:
    acme = small.tenant("acme").embeddings.collection("small")
    globex = small.tenant("globex").embeddings.collection("small")
    (mine,) = await acme.store_many(items(vectors(1)))
    await globex.store_many(items(vectors(1)))
    assert await acme.count() == 1
    assert [h.id for h in await acme.find_similar(vectors(1)[0], limit=10)] == [mine]
    with pytest.raises(NotFound):
        await globex.get(mine)
    assert await globex.delete([mine]) == 0
    # Ids are unique per tenant: globex storing acme's id makes a row of its own.
    assert await globex.store({**items(vectors(1))[0], "id": mine, "entity_id": "g"}) == mine
    assert (await acme.get(mine)).entity_id == "0"
    assert (await globex.get(mine)).entity_id == "g"
    assert await globex.count() == 2


async def test_vectors_survive_a_restart(database: str, redis_url: str, tmp_path: Path) -> None:
    full = vectors(5, dim=8, seed=9)
    half = vectors(5, dim=8, seed=10)
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        exact = await dl.embeddings.create_collection("exact32", dimension=8)
        rounded = await dl.embeddings.create_collection("half16", dimension=8, storage="halfvec")
        ids32 = await exact.store_many(items(full))
        ids16 = await rounded.store_many(items(half))
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        for ident, v in zip(ids32, full, strict=True):
            back = np.asarray(
                (await dl.embeddings.collection("exact32").get(ident)).vector, dtype=np.float32
            )
            assert back.tobytes() == v.tobytes()  # bit-identical
        for ident, v in zip(ids16, half, strict=True):
            back = np.asarray((await dl.embeddings.collection("half16").get(ident)).vector)
            assert np.array_equal(back, v.astype(np.float16).astype(np.float64))
        info = await dl.embeddings.collection("half16").describe()
        assert info.bytes_per_vector == 8 + 2 * 8  # half of float32's
        assert (await dl.embeddings.collection("exact32").describe()).bytes_per_vector == 8 + 4 * 8


async def test_stored_inside_a_failed_transaction_is_gone(small: DataLayer) -> None:
    col = small.embeddings.collection("small")
    with pytest.raises(ValidationError):  # noqa: PT012
        async with small.transaction():
            await col.store_many(items(vectors(10)))
            await small.agents.create(name="", type="t")
    assert await col.count() == 0


async def test_a_bad_item_in_a_later_slice_stores_nothing(small: DataLayer) -> None:
    # store_many checks and sends 1,000 items at a time; the batch must still be all or none.
    col = small.embeddings.collection("small")
    batch = items(vectors(2_500))
    batch[2_200]["vector"] = [math.nan] * DIM
    with pytest.raises(ValidationError) as info:
        await col.store_many(batch)
    assert info.value.field == "items[2200].vector"
    assert await col.count() == 0
