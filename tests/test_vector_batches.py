"""store_many's batch path: whole slices checked with numpy, sent as binary arrays, all or none.

A batch is checked and inserted a slice at a time (1,000 rows, fewer for wide vectors); these
tests put the bad row, the conflict or the odd input in a later slice, and check what the
database holds afterwards. The binary arrays are also sent on their own and read back.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import pytest

from agency_data import DataLayer, ValidationError
from agency_data.vectors import _binary
from agency_data.vectors.compat import vector_to_list

DIM = 8
SLICED = 2_500  # three slices of DIM-dimensional rows


def rows(n: int, dim: int = DIM, seed: int = 1, **extra: Any) -> list[dict[str, Any]]:
    matrix = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return [
        {"entity_type": "doc", "entity_id": str(i), "vector": v, "metadata": {"i": i}, **extra}
        for i, v in enumerate(matrix)
    ]


@pytest.fixture
async def notes(dl: DataLayer) -> Any:
    return await dl.embeddings.create_collection("notes", dimension=DIM)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([math.nan] * DIM, "NaN or an infinite"),
        ([0.0] * (DIM - 1) + [math.inf], "NaN or an infinite"),
        (np.full(DIM, -np.inf, dtype=np.float64), "NaN or an infinite"),
        ([1e39] + [0.0] * (DIM - 1), "float32"),
        ([0.5] * (DIM - 1), f"has {DIM - 1} dimensions; this collection holds {DIM}"),
        (np.zeros(DIM + 1, dtype=np.float32), f"has {DIM + 1} dimensions"),
        ([[0.0, 1.0]] * DIM, "flat"),
        ([0.0] * (DIM - 1) + ["x"], "not a number"),
        ([], "empty"),
        (None, "not a sequence"),
    ],
    ids=[
        "nan",
        "inf",
        "float64-inf",
        "overflow",
        "short",
        "long",
        "nested",
        "text",
        "empty",
        "none",
    ],
)
async def test_a_bad_row_in_a_later_slice_stores_nothing(
    notes: Any, vector: Any, message: str
) -> None:
    (kept,) = await notes.store_many(rows(1, seed=9))
    batch = rows(SLICED)
    batch[2_200]["vector"] = vector
    with pytest.raises(ValidationError, match=message) as info:
        await notes.store_many(batch)
    assert info.value.field == "items[2200].vector"
    assert await notes.count() == 1  # the slices before the bad one were rolled back
    assert (await notes.get(kept)).entity_id == "0"


async def test_ragged_rows_name_the_odd_one(notes: Any) -> None:
    # One row of another length makes the slice ragged: numpy cannot stack it.
    batch = rows(SLICED)
    batch[1_500]["vector"] = [*batch[1_500]["vector"], 1.0, 2.0]
    with pytest.raises(ValidationError, match=f"has {DIM + 2} dimensions") as info:
        await notes.store_many(batch)
    assert info.value.field == "items[1500].vector"
    assert await notes.count() == 0


async def test_other_bad_fields_in_a_later_slice(notes: Any) -> None:
    for index, change, field in (
        (1_999, {"metadata": {"x": math.nan}}, "items[1999].metadata"),
        (2_000, {"entity_type": " "}, "items[2000].entity_type"),
        (2_499, {"entity_id": "bad \ud800 text"}, "items[2499].entity_id"),
        (1_000, {"content": "\ud83d"}, "items[1000].content"),
    ):
        batch = rows(SLICED)
        batch[index] = {**batch[index], **change}
        with pytest.raises(ValidationError) as info:
            await notes.store_many(batch)
        assert info.value.field == field
    assert await notes.count() == 0


async def test_halfvec_range_in_a_later_slice(dl: DataLayer) -> None:
    half = await dl.embeddings.create_collection("half", dimension=DIM, storage="halfvec")
    batch = rows(SLICED)
    batch[2_100]["vector"] = [70_000.0] + [0.0] * (DIM - 1)
    with pytest.raises(ValidationError, match="half precision") as info:
        await half.store_many(batch)
    assert info.value.field == "items[2100].vector"
    assert await half.count() == 0


async def test_every_kind_of_vector_input_in_one_batch(notes: Any) -> None:
    rng = np.random.default_rng(3)
    inputs: list[Any] = [
        [0.25 * i for i in range(DIM)],  # a list of floats
        list(range(DIM)),  # a list of ints
        tuple(float(x) for x in rng.normal(size=DIM)),  # a tuple
        rng.normal(size=DIM),  # float64
        rng.normal(size=DIM).astype(np.float16),
        rng.normal(size=DIM).astype(np.float32),
        np.arange(DIM, dtype=np.int64),
        [np.float32(0.5)] * DIM,  # numpy scalars
    ]
    batch = [{"entity_type": "doc", "entity_id": str(i), "vector": v} for i, v in enumerate(inputs)]
    ids = await notes.store_many(batch)
    for ident, given in zip(ids, inputs, strict=True):
        stored = np.asarray((await notes.get(ident)).vector, dtype=np.float32)
        assert stored.tobytes() == np.asarray(given, dtype=np.float32).tobytes()


async def test_many_slices_keep_their_order_and_contents(notes: Any) -> None:
    batch = rows(SLICED)
    batch[7]["content"] = "säge 🪚 and ütf-8"
    batch[1_234]["entity_id"] = ""
    batch[2_345]["metadata"] = {"nested": {"list": [1, "zwei", None, True]}, "ключ": "значение"}
    ids = await notes.store_many(batch)
    assert len(set(ids)) == SLICED
    assert await notes.count() == SLICED
    for index in (0, 7, 999, 1_000, 1_234, 2_345, SLICED - 1):
        got = await notes.get(ids[index])
        want = batch[index]
        assert (got.entity_id, got.content, got.metadata) == (
            want["entity_id"],
            want.get("content"),
            want["metadata"],
        )
        assert np.asarray(got.vector, dtype=np.float32).tobytes() == want["vector"].tobytes()


async def test_wide_vectors_take_smaller_slices(dl: DataLayer) -> None:
    # 3,000 float32 dimensions: fewer rows per INSERT, so 800 rows take several.
    wide = await dl.embeddings.create_collection("wide", dimension=3_000)
    batch = rows(800, dim=3_000)
    ids = await wide.store_many(batch)
    assert await wide.count() == 800
    for index in (0, 173, 174, 349, 350, 799):
        got = np.asarray((await wide.get(ids[index])).vector, dtype=np.float32)
        assert got.tobytes() == batch[index]["vector"].tobytes()


async def test_replacing_across_slices(notes: Any) -> None:
    ids = await notes.store_many(rows(SLICED))
    again = [
        {**item, "id": ident, "metadata": {"round": 2}}
        for item, ident in zip(rows(SLICED, seed=2), ids, strict=True)
    ]
    fresh = rows(10, seed=3)
    assert (await notes.store_many(again + fresh))[:SLICED] == ids
    assert await notes.count() == SLICED + 10
    assert (await notes.get(ids[2_222])).metadata == {"round": 2}


async def test_another_tenants_id_in_a_later_slice_is_a_row_of_its_own(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("shared", dimension=DIM)
    acme = dl.tenant("acme").embeddings.collection("shared")
    globex = dl.tenant("globex").embeddings.collection("shared")
    (theirs,) = await acme.store_many(rows(1))
    batch = rows(SLICED)
    batch[2_300] = {**batch[2_300], "id": theirs}
    # Ids are unique per tenant: globex's row of that id leaves acme's alone.
    assert (await globex.store_many(batch))[2_300] == theirs
    assert await globex.count() == SLICED
    assert (await acme.get(theirs)).entity_id == "0"
    assert (await globex.get(theirs)).entity_id == "2300"


async def test_a_bad_item_in_a_later_slice_stores_nothing(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("shared", dimension=DIM)
    globex = dl.tenant("globex").embeddings.collection("shared")
    batch = rows(SLICED)
    batch[2_300] = {**batch[2_300], "id": "x" * 513}
    with pytest.raises(ValidationError, match="at most 512") as info:
        await globex.store_many(batch)
    assert info.value.field == "items[2300].id"
    assert await globex.count() == 0


async def test_storing_inside_another_tenants_transaction(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("shared", dimension=DIM)
    acme = dl.tenant("acme").embeddings.collection("shared")
    globex = dl.tenant("globex").embeddings.collection("shared")
    async with dl.tenant("acme").transaction():
        await acme.store_many(rows(3))
        await globex.store_many(rows(SLICED))
        await acme.store(rows(1)[0])
    assert await acme.count() == 4
    assert await globex.count() == SLICED


async def test_binary_arrays_read_back_as_sent(dl: DataLayer) -> None:
    ids = [str(uuid.uuid4()), "1", "ünï-🪚", "x" * 512, "a b"]
    texts = ["plain", "", None, "ünïcödé 🪚", "plain"]
    documents = [b"{}", b'{"a": [1, 2.5, null]}', '{"k": "ключ"}'.encode()]
    matrix = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)
    async with dl.pool.connection() as conn:
        cursor = conn.cursor()
        cursor.adapters.register_dumper(_binary.BinaryArray, _binary.ArrayDumper)
        await cursor.execute(
            "SELECT %b::text[] AS ids, %b::text[] AS texts, %b::text[] AS nulls, "
            "%b::jsonb[] AS documents",
            [
                _binary.id_array(ids),
                _binary.text_array(texts),
                _binary.text_array([None, None]),
                _binary.jsonb_array(documents),
            ],
        )
        row = await cursor.fetchone()
        vectors = {}
        for storage in ("vector", "halfvec"):
            array = _binary.vector_array(matrix, storage, conn.adapters.types[storage].oid)
            await cursor.execute(f"SELECT unnest(%b::{storage}[]) AS v", [array])
            vectors[storage] = [vector_to_list(r["v"]) for r in await cursor.fetchall()]
    assert row is not None
    assert row["ids"] == ids
    assert row["texts"] == texts
    assert row["nulls"] == [None, None]
    assert row["documents"] == [{}, {"a": [1, 2.5, None]}, {"k": "ключ"}]
    assert np.asarray(vectors["vector"], dtype=np.float32).tobytes() == matrix.tobytes()
    assert np.array_equal(vectors["halfvec"], matrix.astype(np.float16).astype(np.float64))


def test_random_ids_are_version_4() -> None:
    ids = _binary.random_ids(1_000)
    assert len(set(ids)) == 1_000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert all(str(uuid.UUID(i)) == i for i in ids)  # the canonical text
    assert _binary.random_ids(0) == []
