"""Embedding ids are strings: any non-empty text of up to 512 characters, unique per tenant.

Also: UUIDs (objects or text) still work as before, unknown or impossible ids are missing
rather than errors, and migration 0011 carries collections made with UUID ids over (and back).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agency_data import DataLayer, Embedding, MigrationError, NotFound, ValidationError
from agency_data.migrations import BUILTIN_SOURCE, MigrationRunner
from agency_data.vectors.ids import MAX_ID_LENGTH
from tests.conftest import DatabaseDsn, make_config

ODD_IDS = ["1", "2", "foo", "a b/c?d=e", "ÆØÅ-ñ-🙂", "x" * MAX_ID_LENGTH, " lead", "UPPER"]


def item(i: int, **extra: Any) -> dict[str, Any]:
    return {"entity_type": "doc", "entity_id": str(i), "vector": [1.0, float(i), 0.5], **extra}


@pytest.fixture
async def docs(dl: DataLayer) -> AsyncIterator[DataLayer]:
    await dl.embeddings.create_collection("docs", dimension=3)
    return dl


async def test_any_string_is_an_id(docs: DataLayer) -> None:
    col = docs.embeddings.collection("docs")
    stored = await col.store_many(item(i, id=ident) for i, ident in enumerate(ODD_IDS))
    assert stored == ODD_IDS
    for i, ident in enumerate(ODD_IDS):
        assert (await col.get(ident)).entity_id == str(i)
    assert {e.id for e in await col.get_many(ODD_IDS)} == set(ODD_IDS)
    # Exact strings: a case or a blank changes the id.
    with pytest.raises(NotFound):
        await col.get("upper")
    with pytest.raises(NotFound):
        await col.get("lead")
    hits = await col.find_similar([1.0, 2.0, 0.5], limit=3, filter={"id": {"$in": ["2", "foo"]}})
    assert {h.id for h in hits} == {"2", "foo"}
    assert [h.id for h in await col.find_similar([1, 0, 0], filter={"id": "a b/c?d=e"})] == [
        "a b/c?d=e"
    ]
    assert await col.count({"id": {"$like": "x%"}}) == 1
    assert (await col.update_metadata("foo", {"k": 1})).metadata == {"k": 1}
    assert await col.delete(["1", "foo"]) == 2
    assert await col.count() == len(ODD_IDS) - 2


async def test_generated_ids_are_uuid_texts(docs: DataLayer) -> None:
    col = docs.embeddings.collection("docs")
    ids = await col.store_many([item(0), item(1)])
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == 2
    one = await col.store(item(2))
    assert isinstance(one, str)
    assert (await col.get(one)).id == one


async def test_uuids_are_their_canonical_text(docs: DataLayer) -> None:
    col = docs.embeddings.collection("docs")
    ident = uuid.uuid4()
    assert await col.store(item(0, id=ident)) == str(ident)
    assert (await col.get(ident)).id == str(ident)
    assert (await col.get(str(ident))).id == str(ident)
    assert [e.id for e in await col.get_many([ident])] == [str(ident)]
    # An Embedding object built with a UUID carries its text.
    model = Embedding.model_validate({**item(1), "id": ident, "created_at": "2026-01-01T00:00Z"})
    assert model.id == str(ident)
    # Upserting by the UUID object replaces the row stored by its text.
    await col.store(item(7, id=str(ident)))
    assert (await col.get(ident)).entity_id == "7"
    assert await col.count() == 1


async def test_unknown_and_impossible_ids_are_missing(docs: DataLayer) -> None:
    col = docs.embeddings.collection("docs")
    await col.store(item(0, id="kept"))
    impossible = ["", "x" * (MAX_ID_LENGTH + 1), "nul\x00inside", "\udcff", "never-stored"]
    for ident in impossible:
        with pytest.raises(NotFound, match="does not exist"):
            await col.get(ident)
        with pytest.raises(NotFound, match="does not exist"):
            await col.update_metadata(ident, {"a": 1})
    assert await col.get_many(impossible) == []
    assert await col.delete(impossible) == 0
    assert [e.id for e in await col.get_many(["kept", *impossible])] == ["kept"]
    assert await col.count() == 1


@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("", "is empty"),
        ("x" * (MAX_ID_LENGTH + 1), f"at most {MAX_ID_LENGTH}"),
        ("a\x00b", "NUL"),
        ("\udcff", "surrogates"),
        (12, "not an id"),
        (None, None),  # no id: one is made
        (b"bytes", "not an id"),
    ],
)
async def test_ids_that_cannot_be_stored(docs: DataLayer, ident: Any, message: str | None) -> None:
    col = docs.embeddings.collection("docs")
    if message is None:
        assert await col.store(item(0, id=ident))
        return
    with pytest.raises(ValidationError, match=message) as info:
        await col.store_many([item(0, id="fine"), item(1, id=ident)])
    assert info.value.field == "items[1].id"
    assert await col.count() == 0
    with pytest.raises(ValidationError, match="not an id"):
        await col.get(12)  # type: ignore[arg-type]


async def test_each_tenant_has_its_own_ids(docs: DataLayer) -> None:
    acme = docs.tenant("acme").embeddings.collection("docs")
    globex = docs.tenant("globex").embeddings.collection("docs")
    await acme.store_many([item(1, id="1"), item(2, id="2")])
    await globex.store_many([item(10, id="1")])
    assert (await acme.get("1")).entity_id == "1"
    assert (await globex.get("1")).entity_id == "10"
    with pytest.raises(NotFound):
        await globex.get("2")
    # Upserts and deletes touch only the caller's tenant.
    await globex.store(item(11, id="1"))
    assert (await acme.get("1")).entity_id == "1"
    assert await globex.delete(["1", "2"]) == 1
    assert await acme.count() == 2
    assert {h.id for h in await acme.find_similar([1, 1, 0.5], limit=10)} == {"1", "2"}


async def test_upsert_replaces_and_reports_the_same_ids(docs: DataLayer) -> None:
    col = docs.embeddings.collection("docs")
    await col.store_many([item(0, id="a", content="first"), item(1, id="b")])
    assert await col.store_many([item(5, id="a", content="second"), item(6, id="c")]) == ["a", "c"]
    replaced = await col.get("a")
    assert (replaced.entity_id, replaced.content) == ("5", "second")
    assert await col.count() == 3
    with pytest.raises(ValidationError, match="appears twice"):
        await col.store_many([item(0, id="d"), item(1, id="d")])


def _runner(dsn: str) -> MigrationRunner:
    return MigrationRunner(dsn, [BUILTIN_SOURCE])


async def test_collections_with_uuid_ids_are_carried_over(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.embeddings.create_collection("older", dimension=3)
    await _runner(database.owner).down(to="0010")
    # Rows as the layer stored them before 0011: UUID ids, unique across tenants.
    ident = uuid.uuid4()
    with psycopg.connect(database.owner, autocommit=True) as conn:
        (table,) = conn.execute(
            "SELECT table_name FROM embedding_collections WHERE name = 'older'"
        ).fetchone() or ("",)
        kind = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = 'id'",
            [table],
        ).fetchone()
        assert kind == ("uuid",)
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (id, tenant_id, entity_type, entity_id, vector) "
                "VALUES (%s, 'default', 'doc', 'old', '[1,2,3]')"
            ).format(psycopg.sql.Identifier(table)),
            [ident],
        )
    await _runner(database.owner).up()
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        col = dl.embeddings.collection("older")
        assert (await col.get(ident)).entity_id == "old"
        assert (await col.get(str(ident))).id == str(ident)
        await col.store(item(1, id="not-a-uuid"))
        await dl.tenant("other").embeddings.collection("older").store(item(2, id=str(ident)))
    # Back to UUIDs is refused while an id is not one, or one id is in two tenants.
    with pytest.raises(MigrationError, match="not-a-uuid"):
        await _runner(database.owner).down(to="0010")
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert await dl.embeddings.collection("older").delete(["not-a-uuid"]) == 1
    with pytest.raises(MigrationError, match="more than one tenant"):
        await _runner(database.owner).down(to="0010")
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert await dl.tenant("other").embeddings.collection("older").delete([ident]) == 1
    await _runner(database.owner).down(to="0010")
    await _runner(database.owner).up()
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert (await dl.embeddings.collection("older").get(ident)).entity_id == "old"
