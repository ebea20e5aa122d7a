"""LangGraph's long-term memory store on agency-data (agency_data.integrations.langgraph).

Put, get, delete, search (namespace prefixes, filters, natural-language queries through the
store's collection), list_namespaces, mixed batches, TTLs and the sweeper, concurrency, tenant
isolation, the sync API, bad input, cancellation, and a LangGraph graph using the store.

The installed langgraph ships no reusable store test suite (langgraph-checkpoint-conformance
covers checkpointers only), so the cases of LangGraph's own AsyncPostgresStore tests
(libs/checkpoint-postgres/tests/test_async_store.py) that apply are ported at the end, with
the tests' deterministic word-hashing embedder in place of their character embeddings.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pytest
from psycopg import sql

try:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.config import get_store
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime
    from langgraph.store.base import (
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        PutOp,
        SearchOp,
    )
except ImportError:
    # CI installs the extra: there a missing langgraph is a failure, not a skip.
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        "langgraph is not installed (pip install agency-data[langgraph])", allow_module_level=True
    )

from agency_data import (
    ConfigError,
    DataLayer,
    EmbedderError,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.integrations.langgraph import AgencyStore, InvalidNamespace
from agency_data.sync.portal import Portal
from tests.conftest import DatabaseDsn, make_config, other_connection
from tests.embedding_support import HashingEmbedder, embed_texts

DIM = 32


def index(**extra: Any) -> dict[str, Any]:
    """An index config on the tests' deterministic embedder, embedding ``text``."""
    return {"dims": DIM, "embed": HashingEmbedder(DIM), "fields": ["text"], **extra}


@pytest.fixture
async def store(dl: DataLayer) -> AsyncIterator[AgencyStore]:
    """A store with semantic search (its collection's HNSW index built), on the default
    tenant."""
    async with AgencyStore(dl, index=index()) as made:
        await made.asetup()
        yield made


async def embeddings(dl: DataLayer, tenant: str = "default", name: str = "lg_store") -> list[Any]:
    """The store's embeddings of ``tenant``: (id, entity_id, field, key), by id."""
    rows = await dl.tenant(tenant).fetch(
        sql.SQL(
            "SELECT id, entity_id, metadata->>'field' AS field, metadata->>'key' AS key "
            "FROM {} ORDER BY id"
        ).format(sql.Identifier(f"emb_{name}"))
    )
    return [(r["id"], r["entity_id"], r["field"], r["key"]) for r in rows]


async def expire(dl: DataLayer, key: str, tenant: str = "default") -> None:
    """Move an item's expiry into the past (it stays until swept)."""
    changed = await dl.tenant(tenant).execute(
        "UPDATE langgraph_store SET expires_at = now() - interval '1 minute' "
        "WHERE key = %s AND ttl_minutes IS NOT NULL",
        [key],
    )
    assert changed == 1


async def expires_at(dl: DataLayer, key: str, tenant: str = "default") -> Any:
    """An item's stored expiry."""
    return await dl.tenant(tenant).fetch_value(
        "SELECT expires_at FROM langgraph_store WHERE key = %s", [key]
    )


class SlowEmbedder:
    """An async embedder that takes ``delay`` seconds a call."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.running = 0

    async def __call__(self, texts: list[str]) -> Any:
        self.running += 1
        try:
            await asyncio.sleep(self.delay)
            return np.asarray(embed_texts(texts, DIM), dtype=np.float32)
        finally:
            self.running -= 1


# -- put, get, delete ---------------------------------------------------------------------------


async def test_put_get_replace_delete(store: AgencyStore) -> None:
    ns = ("users", "u1", "memories")
    assert await store.aget(ns, "m1") is None
    await store.aput(ns, "m1", {"text": "likes green tea", "n": 1, "tags": ["a", "b"]})
    first = await store.aget(ns, "m1")
    assert isinstance(first, Item)
    assert (first.namespace, first.key, first.value) == (
        ns,
        "m1",
        {"text": "likes green tea", "n": 1, "tags": ["a", "b"]},
    )
    assert first.created_at == first.updated_at
    await asyncio.sleep(0.01)
    await store.aput(ns, "m1", {"text": "likes black tea", "n": 2})
    second = await store.aget(ns, "m1")
    assert second is not None
    assert second.value == {"text": "likes black tea", "n": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    # Another namespace, even a parent or a child, is another item.
    assert await store.aget(("users", "u1"), "m1") is None
    assert await store.aget((*ns, "deeper"), "m1") is None
    await store.adelete(ns, "m1")
    assert await store.aget(ns, "m1") is None
    await store.adelete(ns, "m1")  # deleting what is not there is no error


async def test_values_round_trip_as_json(store: AgencyStore) -> None:
    value = {
        "text": "unicode ✓ and quotes \" '",
        "nested": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
        "empty": {},
    }
    await store.aput(("json",), "k", value)
    item = await store.aget(("json",), "k")
    assert item is not None
    assert item.value == value


async def test_keys_and_labels_are_taken_literally(store: AgencyStore) -> None:
    # LIKE's wildcards and other odd characters are just characters here.
    odd = [("user_1",), ("userX1",), ("100%",), ("1000",), ("a b", "c-d"), ("a b-c",)]
    for n, ns in enumerate(odd):
        await store.aput(ns, f"k_{n}%", {"n": n})
    for n, ns in enumerate(odd):
        item = await store.aget(ns, f"k_{n}%")
        assert item is not None
        assert item.value == {"n": n}
        assert [i.value["n"] for i in await store.asearch(ns)] == [n]
    assert await store.aget(("user_1",), "k_1%") is None
    assert [i.namespace for i in await store.asearch(("a b",))] == [("a b", "c-d")]


async def test_long_namespaces_and_keys_use_hashed_embedding_ids(
    dl: DataLayer, store: AgencyStore
) -> None:
    ns = tuple(f"level{n}-" + "x" * 60 for n in range(12))
    key = "k" * 900
    await store.aput(ns, key, {"text": "a very deep memory"})
    item = await store.aget(ns, key)
    assert item is not None
    assert item.namespace == ns
    ((id_, entity_id, field, stored_key),) = await embeddings(dl)
    assert id_.startswith("sha256:")
    assert entity_id.startswith("sha256:")
    assert (field, stored_key) == ("text", key)
    hits = await store.asearch(ns[:3], query="deep memory")
    assert [(h.namespace, h.key) for h in hits] == [(ns, key)]
    await store.adelete(ns, key)
    assert await embeddings(dl) == []


# -- search ---------------------------------------------------------------------------------


async def test_search_by_namespace_prefix(store: AgencyStore) -> None:
    await store.aput(("docs",), "root", {"n": 0})
    await store.aput(("docs", "a"), "1", {"n": 1})
    await store.aput(("docs", "a", "deep"), "2", {"n": 2})
    await store.aput(("docs", "b"), "3", {"n": 3})
    await store.aput(("docsx",), "4", {"n": 4})
    await store.aput(("other",), "5", {"n": 5})

    def keys(items: list[Any]) -> set[str]:
        return {i.key for i in items}

    assert keys(await store.asearch(("docs",))) == {"root", "1", "2", "3"}
    assert keys(await store.asearch(("docs", "a"))) == {"1", "2"}
    assert keys(await store.asearch(("docs", "a", "deep"))) == {"2"}
    assert keys(await store.asearch(("doc",))) == set()
    assert keys(await store.asearch(())) == {"root", "1", "2", "3", "4", "5"}


async def test_search_orders_by_last_update_and_pages(store: AgencyStore) -> None:
    for n in range(7):
        await store.aput(("page",), f"k{n}", {"n": n})
    await store.aput(("page",), "k2", {"n": 2, "again": True})
    newest_first = ["k2", "k6", "k5", "k4", "k3", "k1", "k0"]
    assert [i.key for i in await store.asearch(("page",), limit=100)] == newest_first
    pages = [
        [i.key for i in await store.asearch(("page",), limit=3, offset=offset)]
        for offset in (0, 3, 6, 9)
    ]
    assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:], []]
    assert all(i.score is None for i in await store.asearch(("page",)))


async def test_search_filters(store: AgencyStore) -> None:
    docs = {
        "a": {"color": "red", "score": 4.5, "size": "L", "meta": {"lang": "en"}},
        "b": {"color": "red", "score": 3.0, "size": "M"},
        "c": {"color": "green", "score": 4.0, "size": "S", "meta": {"lang": "fr"}},
        "d": {"color": "blue", "score": 3.5},
        "e": {"color": None, "score": 10},
    }
    for key, value in docs.items():
        await store.aput(("f",), key, value)

    async def keys(filter: dict[str, Any]) -> set[str]:
        return {i.key for i in await store.asearch(("f",), filter=filter, limit=100)}

    assert await keys({"color": "red"}) == {"a", "b"}
    assert await keys({"color": {"$eq": "red"}}) == {"a", "b"}
    assert await keys({"color": "red", "score": {"$gt": 4}}) == {"a"}
    # $ne also matches where the field is missing or null (as LangGraph's in-memory store).
    assert await keys({"size": {"$ne": "M"}}) == {"a", "c", "d", "e"}
    assert await keys({"score": {"$gte": 4.0}}) == {"a", "c", "e"}
    assert await keys({"score": {"$lt": 3.5}}) == {"b"}
    assert await keys({"score": {"$lte": 3.5, "$gt": 3.0}}) == {"d"}
    # Numbers compare as numbers (10 > 4.5), strings as strings.
    assert await keys({"score": {"$gt": 4.4}}) == {"a", "e"}
    assert await keys({"size": {"$gte": "M"}}) == {"b", "c"}
    assert await keys({"color": None}) == {"e"}
    # A dict without operators is compared whole; a dotted key reaches inside.
    assert await keys({"meta": {"lang": "en"}}) == {"a"}
    assert await keys({"meta.lang": "fr"}) == {"c"}
    assert await keys({"color": "purple"}) == set()


async def test_natural_language_search_ranks_by_meaning(store: AgencyStore) -> None:
    facts = {
        "tea": "she drinks green tea every morning",
        "chess": "he plays chess in the park on sundays",
        "rain": "it rains a lot in bergen in autumn",
        "tea2": "black tea with milk is her favourite",
    }
    for key, text in facts.items():
        await store.aput(("users", "u1"), key, {"text": text, "kind": "fact"})
    await store.aput(("users", "u2"), "tea3", {"text": "green tea", "kind": "fact"})
    hits = await store.asearch(("users", "u1"), query="green tea in the morning")
    assert [h.key for h in hits][:2] == ["tea", "tea2"]
    assert {h.key for h in hits} == set(facts)  # every item of the namespace, ranked
    scores = [h.score for h in hits]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert hits[0].score == pytest.approx(
        float(np.dot(*embed_texts(["green tea in the morning", facts["tea"]], DIM))), abs=1e-5
    )
    # The prefix narrows it (u2's tea is not u1's); the empty prefix reaches both.
    assert "tea3" in {h.key for h in await store.asearch((), query="green tea")}
    # Filters apply inside the vector search.
    await store.aput(("users", "u1"), "tea4", {"text": "green tea", "kind": "wish"})
    wished = await store.asearch(("users",), query="green tea", filter={"kind": "wish"})
    assert [h.key for h in wished] == ["tea4"]
    # Pages of a ranked search are slices of the whole ranking.
    ranking = [h.key for h in await store.asearch(("users",), query="tea chess", limit=20)]
    pages = [
        h.key
        for offset in (0, 2, 4)
        for h in await store.asearch(("users",), query="tea chess", limit=2, offset=offset)
    ]
    assert pages == ranking[:6]


async def test_query_without_an_index_config_searches_by_filter(dl: DataLayer) -> None:
    plain = AgencyStore(dl)
    await plain.aput(("n",), "k", {"text": "green tea"})
    (found,) = await plain.asearch(("n",), query="anything at all")
    assert (found.key, found.score) == ("k", None)
    # No collection was made for it.
    assert "lg_store" not in await dl.embeddings.list_collections()


async def test_fields_decide_what_is_embedded(dl: DataLayer, store: AgencyStore) -> None:
    ns = ("docs",)
    await store.aput(ns, "default", {"text": "alpha words", "title": "gamma"})
    await store.aput(ns, "titled", {"text": "alpha words", "title": "gamma"}, index=["title"])
    await store.aput(ns, "unindexed", {"text": "alpha words"}, index=False)
    await store.aput(
        ns,
        "many",
        {"text": "x", "parts": [{"text": "delta one"}, {"text": "delta two"}]},
        index=["parts[*].text", "text"],
    )
    rows = await embeddings(dl)
    assert sorted((key, field) for _, _, field, key in rows) == [
        ("default", "text"),
        ("many", "parts[*].text.0"),
        ("many", "parts[*].text.1"),
        ("many", "text"),
        ("titled", "title"),
    ]
    alpha = [h.key for h in await store.asearch(ns, query="alpha words")]
    assert alpha[0] == "default"
    assert "unindexed" not in alpha
    assert next(h.key for h in await store.asearch(ns, query="gamma")) == "titled"
    # An item matched by several of its embeddings comes back once, at its best score.
    delta = await store.asearch(ns, query="delta two")
    assert [h.key for h in delta].count("many") == 1
    assert delta[0].key == "many"
    assert delta[0].score == pytest.approx(1.0, abs=1e-5)
    # The unindexed item is still found by filter, and by get.
    assert [i.key for i in await store.asearch(ns, filter={"text": "alpha words"}, limit=9)]
    # Putting it again with fewer texts leaves no stale embeddings behind.
    await store.aput(
        ns, "many", {"text": "x", "parts": [{"text": "delta one"}]}, index=["parts[*].text"]
    )
    assert sorted(f for _, _, f, k in await embeddings(dl) if k == "many") == ["parts[*].text"]
    await store.aput(ns, "many", {"text": "x"}, index=False)
    assert [k for *_, k in await embeddings(dl) if k == "many"] == []


async def test_a_store_without_an_index_keeps_the_collection_in_step(
    dl: DataLayer, store: AgencyStore
) -> None:
    # The same store name opened without an index config (another process, say): what it
    # writes over or deletes loses its embeddings, rather than leaving stale ones searchable.
    plain = AgencyStore(dl)
    await store.aput(("p",), "over", {"text": "green tea"})
    await store.aput(("p",), "gone", {"text": "green tea too"})
    await store.aput(("p",), "kept", {"text": "green tea kept"})
    await plain.aput(("p",), "over", {"text": "written without an index"})
    await plain.adelete(("p",), "gone")
    assert [k for *_, k in await embeddings(dl)] == ["kept"]
    assert [h.key for h in await store.asearch(("p",), query="green tea")] == ["kept"]
    assert (await plain.aget(("p",), "over")).value["text"].startswith("written")  # type: ignore[union-attr]


async def test_the_collection_and_its_index_are_made_once(dl: DataLayer) -> None:
    first = AgencyStore(dl, index=index(), name="memories")
    # Written before set-up: the collection is made, searches scan it exactly.
    await first.aput(("a",), "k", {"text": "before the index"})
    assert (await dl.embeddings.collection("memories").describe()).index is None

    async def set_up_in_a_transaction() -> None:
        async with dl.transaction():
            await first.asetup()

    with pytest.raises(UsageError, match="outside"):
        await set_up_in_a_transaction()
    await first.asetup()
    await first.asetup()
    assert [h.key for h in await first.asearch(("a",), query="index")] == ["k"]
    info = await dl.embeddings.collection("memories").describe()
    assert (info.dimension, info.metric, info.index is not None) == (DIM, "cosine", True)
    assert info.index is not None
    assert info.index.kind == "hnsw"
    # Another shape under the same name is refused, naming the way out.
    other = AgencyStore(dl, index={**index(), "dims": DIM * 2}, name="memories")
    with pytest.raises(Exception, match="another shape") as caught:
        await other.asetup()
    assert caught.type.__name__ == "Conflict"
    flat = AgencyStore(dl, index=index(ann_index_config={"kind": "flat"}), name="flat")
    await flat.aput(("a",), "k", {"text": "exact scans"})
    assert (await dl.embeddings.collection("flat").describe()).index is None
    assert [h.key for h in await flat.asearch(("a",), query="exact")] == ["k"]


async def test_stores_of_other_names_are_apart(dl: DataLayer, store: AgencyStore) -> None:
    notes = AgencyStore(dl, index=index(), name="notes")
    await store.aput(("ns",), "k", {"text": "in the default store"})
    await notes.aput(("ns",), "k", {"text": "in the notes store"})
    assert (await store.aget(("ns",), "k")).value["text"] == "in the default store"  # type: ignore[union-attr]
    assert [h.value["text"] for h in await notes.asearch(("ns",), query="store")] == [
        "in the notes store"
    ]
    assert await notes.alist_namespaces() == [("ns",)]
    await notes.adelete(("ns",), "k")
    assert await store.aget(("ns",), "k") is not None


# -- list_namespaces ------------------------------------------------------------------------


async def test_list_namespaces(store: AgencyStore) -> None:
    for ns in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
        ("admin", "users", "789"),
        ("a-b",),
    ]:
        await store.aput(ns, "k", {"x": 1})
    every = await store.alist_namespaces()
    assert every == sorted(every)  # as tuples sort: ("a", ...) before ("a-b",)
    assert every[:2] == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert ("a-b",) in every
    assert await store.alist_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert await store.alist_namespaces(suffix=("f",)) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert await store.alist_namespaces(prefix=("a", "*", "f")) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
    ]
    assert await store.alist_namespaces(prefix=("*", "*", "f")) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert await store.alist_namespaces(suffix=("*", "f")) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert await store.alist_namespaces(prefix=("a",), suffix=("d", "*")) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert await store.alist_namespaces(prefix=("users",)) == [
        ("users", "123"),
        ("users", "456", "settings"),
    ]
    assert await store.alist_namespaces(max_depth=1) == [
        ("a",),
        ("a-b",),
        ("admin",),
        ("b",),
        ("users",),
    ]
    assert await store.alist_namespaces(max_depth=1, limit=2, offset=1) == [("a-b",), ("admin",)]
    assert await store.alist_namespaces(prefix=("nothing",)) == []
    assert await store.alist_namespaces(suffix=("a", "b", "c", "d", "e")) == []


# -- batches ----------------------------------------------------------------------------------


async def test_a_batch_of_every_kind_of_op(store: AgencyStore) -> None:
    await store.aput(("b", "x"), "old", {"text": "green tea", "v": 0})
    results = await store.abatch(
        [
            PutOp(("b", "x"), "new", {"text": "black tea", "v": 1}),
            GetOp(("b", "x"), "old"),
            GetOp(("b", "x"), "new"),  # reads see the batch's state before its puts
            SearchOp(("b",), {"v": 0}),
            SearchOp(("b",), query="green tea"),
            ListNamespacesOp(),
            PutOp(("b", "x"), "old", None),
            PutOp(("b", "y"), "dup", {"v": "first"}),
            PutOp(("b", "y"), "dup", {"v": "last"}),  # the last put of an item wins
        ]
    )
    assert len(results) == 9
    assert results[0] is None
    assert results[6] is None
    assert results[8] is None
    assert isinstance(results[1], Item)
    assert results[1].value == {"text": "green tea", "v": 0}
    assert results[2] is None
    assert [i.key for i in results[3]] == ["old"]  # type: ignore[union-attr]
    assert [i.key for i in results[4]] == ["old"]  # type: ignore[union-attr]
    assert results[5] == [("b", "x")]
    assert await store.aget(("b", "x"), "old") is None
    assert (await store.aget(("b", "y"), "dup")).value == {"v": "last"}  # type: ignore[union-attr]
    assert (await store.aget(("b", "x"), "new")).value["v"] == 1  # type: ignore[union-attr]
    assert await store.abatch([]) == []


async def test_a_bad_op_anywhere_runs_none_of_the_batch(store: AgencyStore) -> None:
    with pytest.raises(ValidationError) as caught:
        await store.abatch([PutOp(("ok",), "k", {"v": 1}), PutOp(("ok",), "bad", {"v": {1, 2}})])
    assert caught.value.field == "ops[1].value"
    with pytest.raises(ValidationError) as caught:
        await store.abatch([PutOp(("ok",), "k", {"v": 1}), "not an op"])  # type: ignore[list-item]
    assert caught.value.field == "ops[1]"
    assert await store.asearch(()) == []


async def test_writes_join_the_callers_transaction(dl: DataLayer, store: AgencyStore) -> None:
    async def roll_back() -> None:
        async with dl.transaction():
            await store.aput(("tx",), "k", {"text": "rolled back"})
            assert await store.aget(("tx",), "k") is not None  # visible inside
            raise RuntimeError("roll it back")

    with pytest.raises(RuntimeError):
        await roll_back()
    assert await store.aget(("tx",), "k") is None
    assert await embeddings(dl) == []
    async with dl.transaction():
        await store.aput(("tx",), "k", {"text": "kept"})
    assert await store.aget(("tx",), "k") is not None


async def test_a_failing_embedder_writes_nothing(dl: DataLayer) -> None:
    def broken(texts: list[str]) -> Any:
        raise RuntimeError("model offline")

    store = AgencyStore(dl, index={"dims": DIM, "embed": broken, "fields": ["text"]})
    with pytest.raises(EmbedderError, match="model offline"):
        await store.aput(("e",), "k", {"text": "never stored"})
    assert await store.aget(("e",), "k") is None
    wrong = AgencyStore(
        dl, index={"dims": DIM, "embed": lambda t: [[0.0] * 3 for _ in t]}, name="wrong"
    )
    with pytest.raises(EmbedderError, match="3 dimensions"):
        await wrong.aput(("e",), "k", {"text": "wrong size"})


# -- TTL --------------------------------------------------------------------------------------


async def test_ttl_is_set_on_write_and_refreshed_on_read(dl: DataLayer) -> None:
    store = AgencyStore(dl, index=index(), ttl={"default_ttl": 60})
    await store.aput(("t",), "default", {"text": "lives an hour"})
    await store.aput(("t",), "own", {"text": "lives a day"}, ttl=24 * 60)
    await store.aput(("t",), "forever", {"text": "never expires"}, ttl=None)
    now = await dl.fetch_value("SELECT now()")
    assert 59 * 60 < (await expires_at(dl, "default") - now).total_seconds() <= 60 * 60 + 1
    assert (await expires_at(dl, "own") - now).total_seconds() > 23 * 3600
    assert await expires_at(dl, "forever") is None
    # Reads refresh by default; refresh_ttl=False leaves the expiry alone.
    await dl.tenant("default").execute(
        "UPDATE langgraph_store SET expires_at = expires_at - interval '30 minutes'"
    )
    before = await expires_at(dl, "default")
    await store.aget(("t",), "default", refresh_ttl=False)
    await store.asearch(("t",), refresh_ttl=False)
    await store.asearch(("t",), query="hour", refresh_ttl=False)
    assert await expires_at(dl, "default") == before
    await store.aget(("t",), "default")
    after_get = await expires_at(dl, "default")
    assert (after_get - before).total_seconds() > 29 * 60
    for search in (
        store.asearch(("t",)),
        store.asearch(("t",), query="hour"),
        store.asearch(("t",), filter={"text": "lives an hour"}),
    ):
        await dl.tenant("default").execute(
            "UPDATE langgraph_store SET expires_at = expires_at - interval '30 minutes' "
            "WHERE key = 'default'"
        )
        lowered = await expires_at(dl, "default")
        await search
        assert (await expires_at(dl, "default") - lowered).total_seconds() > 29 * 60


async def test_refresh_on_read_off_by_config(dl: DataLayer) -> None:
    store = AgencyStore(dl, ttl={"default_ttl": 60, "refresh_on_read": False})
    await store.aput(("t",), "k", {"v": 1})
    await dl.tenant("default").execute(
        "UPDATE langgraph_store SET expires_at = expires_at - interval '30 minutes'"
    )
    before = await expires_at(dl, "k")
    await store.aget(("t",), "k")
    await store.asearch(("t",))
    assert await expires_at(dl, "k") == before
    await store.aget(("t",), "k", refresh_ttl=True)  # asked for: refreshed all the same
    assert await expires_at(dl, "k") > before


async def test_sweeping_removes_expired_items_and_their_embeddings(
    dl: DataLayer, store: AgencyStore
) -> None:
    await store.aput(("s",), "old", {"text": "expired memory"}, ttl=5)
    await store.aput(("s",), "young", {"text": "fresh memory"}, ttl=5)
    await store.aput(("s",), "eternal", {"text": "no ttl memory"})
    await expire(dl, "old")
    # Expired but not yet swept: still read (as LangGraph's stores, unless omit_expired).
    assert await store.aget(("s",), "old", refresh_ttl=False) is not None
    assert await store.asweep_ttl() == 1
    assert await store.aget(("s",), "old") is None
    assert {k for *_, k in await embeddings(dl)} == {"young", "eternal"}
    assert await store.asweep_ttl() == 0
    # Many at once: swept in batches.
    await store.abatch([PutOp(("many",), f"k{n}", {"n": n}, ttl=1) for n in range(1200)])
    await dl.tenant("default").execute(
        "UPDATE langgraph_store SET expires_at = now() - interval '1 second' WHERE prefix = 'many'"
    )
    assert await store.asweep_ttl() == 1200
    assert await store.asearch(("many",)) == []


async def test_the_background_sweeper(dl: DataLayer) -> None:
    store = AgencyStore(
        dl, index=index(), ttl={"default_ttl": 0.01, "sweep_interval_minutes": 0.005}
    )
    task = await store.astart_ttl_sweeper()
    assert await store.astart_ttl_sweeper() is task  # already running: the same one
    await store.aput(("bg",), "k", {"text": "short lived"})
    deadline = asyncio.get_running_loop().time() + 30
    while await store.aget(("bg",), "k", refresh_ttl=False) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the sweeper never came"
        await asyncio.sleep(0.2)
    assert await embeddings(dl) == []
    assert await store.astop_ttl_sweeper(timeout=10)
    assert task.done()
    assert await store.astop_ttl_sweeper()  # not running: nothing to stop


async def test_omit_expired_hides_what_is_not_yet_swept(dl: DataLayer) -> None:
    store = AgencyStore(dl, index=index(), ttl={"omit_expired": True})
    await store.aput(("omit", "expired"), "e", {"text": "gone tea"}, ttl=5)
    await store.aput(("omit", "control"), "c", {"text": "kept tea"})
    await store.aput(("omit", "live"), "l", {"text": "live tea"}, ttl=5)
    await expire(dl, "e")
    stale = await expires_at(dl, "e")
    assert await store.aget(("omit", "expired"), "e") is None
    assert await store.asearch(("omit", "expired")) == []
    assert [h.key for h in await store.asearch(("omit",), query="tea", limit=10)] != []
    assert "e" not in {h.key for h in await store.asearch(("omit",), query="gone tea")}
    assert ("omit", "expired") not in await store.alist_namespaces(prefix=("omit",))
    # Reads do not bring an expired item back by refreshing it.
    assert await expires_at(dl, "e") == stale
    live_before = await expires_at(dl, "l")
    await store.aget(("omit", "live"), "l")
    assert await expires_at(dl, "l") > live_before


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_puts_and_gets(dl: DataLayer, store: AgencyStore) -> None:
    # Many writers of the same item, with values of different shapes: one value wins, and
    # its embeddings are exactly those of that value (none left from the others).
    async def write(n: int) -> None:
        parts = [{"text": f"part {n} {m}"} for m in range(n % 4 + 1)]
        await store.aput(("c",), "same", {"n": n, "parts": parts}, index=["parts[*].text"])

    async def read() -> None:
        item = await store.aget(("c",), "same")
        assert item is None or len(item.value["parts"]) == item.value["n"] % 4 + 1

    await asyncio.gather(*(f for n in range(40) for f in (write(n), read())))
    final = await store.aget(("c",), "same")
    assert final is not None
    rows = [r for r in await embeddings(dl) if r[3] == "same"]
    assert len(rows) == len(final.value["parts"])
    hits = await store.asearch(("c",), query=final.value["parts"][0]["text"])
    assert [h.key for h in hits] == ["same"]
    # Different items: none lost, none doubled.
    await asyncio.gather(
        *(store.aput(("d", str(n % 5)), f"k{n}", {"text": f"item {n}"}) for n in range(150))
    )
    found = await store.asearch(("d",), limit=1000)
    assert sorted(i.key for i in found) == sorted(f"k{n}" for n in range(150))
    assert len([r for r in await embeddings(dl) if r[3].startswith("k")]) == 150


async def test_concurrent_calls_are_gathered_and_answered_each_its_own(
    dl: DataLayer, store: AgencyStore
) -> None:
    await store.abatch([PutOp(("g",), f"k{n}", {"text": f"memory {n}", "n": n}) for n in range(60)])
    # Many callers at once: each gets its own answer, whatever batch it rode in.
    items = await asyncio.gather(*(store.aget(("g",), f"k{n}") for n in range(60)))
    assert [item.value["n"] for item in items] == list(range(60))  # type: ignore[union-attr]
    found = await asyncio.gather(
        *(store.asearch(("g",), filter={"n": n}) for n in range(20)),
        *(store.asearch(("g",), query=f"memory {n}", limit=1) for n in range(20)),
    )
    assert [hits[0].value["n"] for hits in found[:20]] == list(range(20))
    # Each ranked caller got its own query's ranking: the same best score as alone.
    for n, hits in enumerate(found[20:]):
        (alone,) = await store.asearch(("g",), query=f"memory {n}", limit=1)
        assert hits[0].score == pytest.approx(alone.score)
    # A bad call among them fails alone, before it joins anyone.
    calls = [store.aget(("g",), f"k{n}") for n in range(10)]
    calls.insert(5, store.aget(("g",), None))  # type: ignore[arg-type]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(answers[5], ValidationError)
    assert all(isinstance(a, Item) for n, a in enumerate(answers) if n != 5)
    # A put that only fails where its group is written (its value fits the table, but not
    # with the embedding's own fields): the group is run again put by put, and only that
    # caller gets the error.
    limit = dl.config.postgresql.max_json_bytes
    big = {"text": "big", "pad": "x" * (limit - len('{"text":"big","pad":""}'))}  # just fits
    puts = [store.aput(("g2",), f"p{n}", {"text": f"small {n}"}) for n in range(8)]
    puts.insert(3, store.aput(("g2",), "big", big))
    outcomes = await asyncio.gather(*puts, return_exceptions=True)
    assert isinstance(outcomes[3], ValidationError), outcomes[3]
    assert "cannot be indexed" in str(outcomes[3])
    assert [o for n, o in enumerate(outcomes) if n != 3] == [None] * 8
    assert sorted(i.key for i in await store.asearch(("g2",))) == [f"p{n}" for n in range(8)]


async def test_last_write_wins(store: AgencyStore) -> None:
    for n in range(20):
        # Each writer starts after the previous one returned: the last one's value stays.
        await asyncio.gather(store.aput(("w",), "k", {"n": n}), store.aget(("w",), "k"))
    assert (await store.aget(("w",), "k")).value == {"n": 19}  # type: ignore[union-attr]


# -- tenants ----------------------------------------------------------------------------------


async def test_tenants_see_only_their_own_items(dl: DataLayer) -> None:
    await AgencyStore(dl, index=index()).asetup()  # the unscoped layer makes the collection
    alice = AgencyStore(dl.tenant("alice"), index=index())
    bob = AgencyStore(dl.tenant("bob"), index=index())
    assert (alice.tenant, bob.tenant) == ("alice", "bob")
    await alice.aput(("mem",), "k", {"text": "alice likes green tea"}, ttl=5)
    await bob.aput(("mem",), "k", {"text": "bob likes green tea"}, ttl=5)
    await bob.aput(("bob-only",), "k", {"text": "green tea for bob"})
    assert (await alice.aget(("mem",), "k")).value["text"].startswith("alice")  # type: ignore[union-attr]
    assert (await bob.aget(("mem",), "k")).value["text"].startswith("bob")  # type: ignore[union-attr]
    assert [h.value["text"] for h in await alice.asearch((), query="green tea")] == [
        "alice likes green tea"
    ]
    assert [h.value["text"] for h in await alice.asearch(())] == ["alice likes green tea"]
    assert await alice.alist_namespaces() == [("mem",)]
    assert await bob.alist_namespaces() == [("bob-only",), ("mem",)]
    await expire(dl, "k", tenant="alice")
    await expire(dl, "k", tenant="bob")
    assert await alice.asweep_ttl() == 1
    assert await bob.aget(("mem",), "k", refresh_ttl=False) is not None
    await bob.adelete(("mem",), "k")
    assert [k for *_, k in await embeddings(dl, "alice")] == []
    assert [k for *_, k in await embeddings(dl, "bob")] == ["k"]
    # Row-level security holds whatever the SQL: alice's view has none of bob's rows.
    assert await dl.tenant("alice").fetch_value("SELECT count(*) FROM langgraph_store") == 0
    # The default tenant's store sees neither.
    assert await AgencyStore(dl).asearch(()) == []


async def test_a_tenants_store_needs_the_collection_made_first(dl: DataLayer) -> None:
    early = AgencyStore(dl.tenant("early"), index=index())
    with pytest.raises(NotFound, match="build the store once from the unscoped"):
        await early.aput(("a",), "k", {"text": "x"})
    assert await early.aget(("a",), "k") is None  # nothing written
    await AgencyStore(dl, index=index()).asetup()
    await early.aput(("a",), "k", {"text": "x"})
    assert await early.asearch(("a",), query="x") != []


# -- the sync API -------------------------------------------------------------------------------


async def test_sync_methods_from_another_thread(dl: DataLayer, store: AgencyStore) -> None:
    def work() -> list[Any]:
        store.setup()
        store.put(("sync",), "k", {"text": "written from a thread"})
        store.batch([PutOp(("sync",), "k2", {"text": "batched from a thread"})])
        got = store.get(("sync",), "k")
        hits = store.search(("sync",), query="thread")
        spaces = store.list_namespaces()
        store.delete(("sync",), "k2")
        store.put(("sync",), "old", {"v": 1}, ttl=5)
        return [got, hits, spaces, threading.current_thread() is threading.main_thread()]

    got, hits, spaces, on_main = await asyncio.to_thread(work)
    assert not on_main
    assert got.value == {"text": "written from a thread"}
    assert {h.key for h in hits} == {"k", "k2"}
    assert spaces == [("sync",)]
    assert await store.aget(("sync",), "k2") is None
    await expire(dl, "old")
    assert await asyncio.to_thread(store.sweep_ttl) == 1
    await asyncio.to_thread(store.start_ttl_sweeper, 60)
    assert await asyncio.to_thread(store.stop_ttl_sweeper, 10)


async def test_sync_methods_on_the_loops_thread_are_refused(store: AgencyStore) -> None:
    calls = [
        lambda: store.put(("x",), "k", {"v": 1}),
        lambda: store.get(("x",), "k"),
        lambda: store.search(("x",)),
        lambda: store.delete(("x",), "k"),
        lambda: store.list_namespaces(),
        lambda: store.batch([GetOp(("x",), "k")]),
        lambda: store.sweep_ttl(),
        lambda: store.setup(),
    ]
    for call in calls:
        with pytest.raises(UsageError, match=r"await store\.aget"):
            call()
    assert await store.aget(("x",), "k") is None


def test_a_store_on_a_private_loop(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> None:
    # The synchronous DataLayer's shape: the layer runs on a portal's loop thread, and plain
    # threads (and other loops) use the store through that portal.
    portal = Portal.start("store-test")
    layer = DataLayer(make_config(database, redis_url, tmp_path))
    try:
        portal.call(layer.connect())
        store = AgencyStore(layer, index=index(), portal=portal)
        store.put(("p",), "k", {"text": "from plain sync code"})
        assert store.get(("p",), "k").value["text"] == "from plain sync code"  # type: ignore[union-attr]

        async def from_another_loop() -> list[str]:
            await store.aput(("p",), "k2", {"text": "from another loop"})
            return [h.key for h in await store.asearch(("p",), query="another loop")]

        assert asyncio.run(from_another_loop())[0] == "k2"
        with pytest.raises(UsageError):
            AgencyStore(layer)  # no running loop here, and no portal given
    finally:
        portal.call(layer.aclose())
        portal.close()


# -- a LangGraph graph with the store --------------------------------------------------------


class Chat(TypedDict):
    """The graph's state."""

    user: str
    facts: list[str]
    question: str
    recalled: list[str]


async def remember(state: Chat, runtime: Runtime[None]) -> dict[str, Any]:
    """Write the user's facts as memories through the runtime's store."""
    assert runtime.store is not None
    for fact in state["facts"]:
        await runtime.store.aput(("memories", state["user"]), fact, {"text": fact})
    return {}


async def recall(state: Chat) -> dict[str, Any]:
    """Search the memories, reached through get_store()."""
    hits = await get_store().asearch(("memories", state["user"]), query=state["question"], limit=1)
    return {"recalled": [hit.value["text"] for hit in hits]}


def remember_sync(state: Chat, runtime: Runtime[None]) -> dict[str, Any]:
    """:func:`remember` as a sync node: the store's sync API, from LangGraph's worker thread."""
    assert runtime.store is not None
    for fact in state["facts"]:
        runtime.store.put(("memories", state["user"]), fact, {"text": fact})
    return {}


def recall_sync(state: Chat) -> dict[str, Any]:
    """The same, as a sync node (the sync API, from LangGraph's worker thread)."""
    hits = get_store().search(("memories", state["user"]), query=state["question"], limit=1)
    return {"recalled": [hit.value["text"] for hit in hits]}


def build(store: AgencyStore, *, sync: bool = False) -> Any:
    """remember -> recall, with an in-memory checkpointer."""
    graph = StateGraph(Chat)
    graph.add_node("remember", remember_sync if sync else remember)
    graph.add_node("recall", recall_sync if sync else recall)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", "recall")
    graph.add_edge("recall", END)
    return graph.compile(store=store, checkpointer=InMemorySaver())


async def test_a_graph_writes_and_recalls_memories(store: AgencyStore) -> None:
    facts = ["i drink green tea every morning", "my cat is called tom", "i live in oslo"]
    state = {"user": "u1", "facts": facts, "question": "what is my cat called", "recalled": []}
    config = {"configurable": {"thread_id": "t1"}}
    final = await build(store).ainvoke(state, config)
    assert final["recalled"] == ["my cat is called tom"]
    # Another thread of the same user recalls it too (long-term memory), with sync nodes.
    question = {**state, "facts": ["i have a dog"], "question": "which tea do i drink"}
    final = await asyncio.to_thread(
        build(store, sync=True).invoke, question, {"configurable": {"thread_id": "t2"}}
    )
    assert final["recalled"] == ["i drink green tea every morning"]
    assert sorted(i.key for i in await store.asearch(("memories", "u1"))) == sorted(
        [*facts, "i have a dog"]
    )


# -- bad input --------------------------------------------------------------------------------


BAD_NAMESPACES: list[Any] = [
    ("a.b",),
    ("",),
    ("ok", 5),
    "users",
    None,
    ("nul\x00",),
    ("\ud800",),
    ("x" * 1100,),
]


async def test_bad_namespaces(store: AgencyStore) -> None:
    for namespace in BAD_NAMESPACES:
        calls = [
            store.aput(namespace, "k", {"v": 1}),
            store.aget(namespace, "k"),
            store.asearch(namespace),
            store.adelete(namespace, "k"),
        ]
        if namespace is not None:
            calls.append(store.alist_namespaces(prefix=namespace))
        for call in calls:
            with pytest.raises(InvalidNamespace) as caught:
                await call
            # LangGraph's own error class too, so code written for its stores catches it.
            assert isinstance(caught.value, InvalidNamespaceError), namespace
            assert isinstance(caught.value, ValidationError)
            field = caught.value.field or ""
            assert field.startswith(("namespace", "prefix")), (namespace, field)
    assert await store.asearch(()) == []


async def test_namespaces_that_only_a_put_refuses(store: AgencyStore) -> None:
    for namespace, problem in [((), "empty"), (("langgraph", "x"), "reserves")]:
        with pytest.raises(InvalidNamespace, match=problem):
            await store.aput(namespace, "k", {"v": 1})
    assert await store.aget((), "k") is None
    assert await store.aget(("langgraph", "x"), "k") is None


BAD_CALLS: list[tuple[Any, str]] = [
    (lambda s: s.aput(("n",), 5, {"v": 1}), "key"),
    (lambda s: s.aput(("n",), None, {"v": 1}), "key"),
    (lambda s: s.aput(("n",), "nul\x00", {"v": 1}), "key"),
    (lambda s: s.aput(("n",), "k" * 2000, {"v": 1}), "key"),
    (lambda s: s.aget(("n",), 3.5), "key"),
    (lambda s: s.aput(("n",), "k", "a string"), "value"),
    (lambda s: s.aput(("n",), "k", ["a", "list"]), "value"),
    (lambda s: s.aput(("n",), "k", None), "value"),
    (lambda s: s.aput(("n",), "k", {"v": {1, 2}}), "value"),
    (lambda s: s.aput(("n",), "k", {"v": math.nan}), "value"),
    (lambda s: s.aput(("n",), "k", {1: "int key"}), "value"),
    (lambda s: s.aput(("n",), "k", {"v": "x" * 2_000_000}), "value"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, ttl=0), "ttl"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, ttl=-5), "ttl"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, ttl=math.inf), "ttl"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, ttl="5"), "ttl"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, ttl=True), "ttl"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, index="text"), "index"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, index=[5]), "index[0]"),
    (lambda s: s.aput(("n",), "k", {"v": 1}, index=[]), "index"),
    (lambda s: s.asearch(("n",), filter="kind"), "filter"),
    (lambda s: s.asearch(("n",), filter={"v": {"$in": [1]}}), "filter.v"),
    (lambda s: s.asearch(("n",), filter={"v": {"$gt": 1, "plain": 2}}), "filter.v"),
    (lambda s: s.asearch(("n",), filter={"$or": [{"v": 1}]}), "filter.$or"),
    (lambda s: s.asearch(("n",), filter={"v": {"$gt": None}}), "filter.v.$gt"),
    (lambda s: s.asearch(("n",), filter={"v": {"$gt": [1]}}), "filter.v.$gt"),
    (lambda s: s.asearch(("n",), filter={"v": math.nan}), "filter.v"),
    (lambda s: s.asearch(("n",), filter={5: 1}), "filter"),
    (lambda s: s.asearch(("n",), limit=0), "limit"),
    (lambda s: s.asearch(("n",), limit=True), "limit"),
    (lambda s: s.asearch(("n",), limit=10_000), "limit"),
    (lambda s: s.asearch(("n",), offset=-1), "offset"),
    (lambda s: s.asearch(("n",), query="q", limit=900, offset=200), "offset"),
    (lambda s: s.asearch(("n",), query=5), "query"),
    (lambda s: s.asearch(("n",), refresh_ttl="yes"), "refresh_ttl"),
    (lambda s: s.aget(("n",), "k", refresh_ttl=1), "refresh_ttl"),
    (lambda s: s.alist_namespaces(max_depth=0), "max_depth"),
    (lambda s: s.alist_namespaces(limit=-1), "limit"),
    (lambda s: s.alist_namespaces(offset=1.5), "offset"),
    (lambda s: s.abatch(None), "ops"),
    (lambda s: s.abatch([GetOp(("n",), "k"), 7]), "ops[1]"),
    (
        lambda s: s.abatch([ListNamespacesOp((MatchCondition("middle", ("a",)),))]),
        "ops[0].match_conditions[0].match_type",
    ),
    (lambda s: s.abatch([SearchOp(("n",), limit=-3)]), "ops[0].limit"),
    (lambda s: s.astart_ttl_sweeper(0), "sweep_interval_minutes"),
    (lambda s: s.astop_ttl_sweeper(timeout=-1), "timeout"),
]


async def test_bad_arguments(store: AgencyStore) -> None:
    for call, field in BAD_CALLS:
        with pytest.raises(ValidationError) as caught:
            await call(store)
        assert caught.value.field == field, str(caught.value)
    assert await store.asearch(()) == []


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"index": {"dims": 0, "embed": HashingEmbedder(DIM)}}, "index.dims"),
    ({"index": {"embed": HashingEmbedder(DIM)}}, "index"),
    ({"index": {"dims": DIM, "embed": HashingEmbedder(DIM), "nope": 1}}, "index"),
    ({"index": {"dims": DIM, "embed": 42}}, "index.embed"),
    ({"index": {"dims": DIM, "embed": "openai:text-embedding-3-small"}}, "index.embed"),
    ({"index": {"dims": DIM, "embed": HashingEmbedder(DIM), "fields": [""]}}, "index.fields"),
    ({"index": {**index(), "distance_type": "hamming"}}, "index.distance_type"),
    (
        {"index": {**index(), "ann_index_config": {"kind": "lsh"}}},
        "index.ann_index_config.kind",
    ),
    (
        {"index": {**index(), "ann_index_config": {"kind": "hnsw", "nlist": 3}}},
        "index.ann_index_config",
    ),
    ({"index": "dims=32"}, "index"),
    ({"ttl": {"default_ttl": -1}}, "ttl.default_ttl"),
    ({"ttl": {"refresh_on_read": "no"}}, "ttl.refresh_on_read"),
    ({"ttl": {"sweep": 5}}, "ttl"),
    ({"ttl": 5}, "ttl"),
]


async def test_bad_configs(dl: DataLayer) -> None:
    for kwargs, field in BAD_CONFIGS:
        with pytest.raises(ConfigError) as caught:
            AgencyStore(dl, **kwargs)
        assert caught.value.field == field, str(caught.value)


async def test_bad_construction(dl: DataLayer) -> None:
    for bad, field in [({"name": "Bad Name"}, "name"), ({"portal": "loop"}, "portal")]:
        with pytest.raises(ValidationError) as caught:
            AgencyStore(dl, **bad)
        assert caught.value.field == field
    with pytest.raises(ValidationError) as caught:
        AgencyStore("postgresql://...")  # type: ignore[arg-type]
    assert caught.value.field == "layer"


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelling_while_embedding_writes_nothing(dl: DataLayer) -> None:
    slow = SlowEmbedder(5.0)
    store = AgencyStore(dl, index={"dims": DIM, "embed": slow, "fields": ["text"]})
    await store.asetup()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.aput(("c",), "k", {"text": "never"}), 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.asearch(("c",), query="never"), 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            store.abatch([PutOp(("c",), "k2", {"text": "no"}), SearchOp(("c",), query="no")]), 0.3
        )
    await asyncio.sleep(0)
    assert slow.running == 0
    assert await store.asearch(()) == []
    assert await embeddings(dl) == []


async def test_cancelling_inside_the_transaction_rolls_it_back(
    dl: DataLayer, store: AgencyStore
) -> None:
    await store.aput(("c",), "held", {"text": "v1"})
    async with other_connection(dl) as conn:
        # Another transaction holds the item's row: the batch's upsert waits on it.
        await conn.execute("SELECT 1 FROM langgraph_store WHERE key = 'held' FOR UPDATE")
        batch = store.abatch(
            [PutOp(("c",), "fresh", {"text": "new item"}), PutOp(("c",), "held", {"text": "v2"})]
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batch, 0.5)
    assert await store.aget(("c",), "fresh") is None
    assert (await store.aget(("c",), "held")).value == {"text": "v1"}  # type: ignore[union-attr]
    assert [k for *_, k in await embeddings(dl)] == ["held"]


# -- LangGraph's own AsyncPostgresStore tests, ported -------------------------------------------


async def test_ported_abatch_order(store: AgencyStore) -> None:
    await store.aput(("test", "foo"), "key1", {"data": "value1"})
    await store.aput(("test", "bar"), "key2", {"data": "value2"})
    results = await store.abatch(
        [
            GetOp(namespace=("test", "foo"), key="key1"),
            PutOp(namespace=("test", "bar"), key="key2", value={"data": "value2"}),
            SearchOp(namespace_prefix=("test",), filter={"data": "value1"}, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            GetOp(namespace=("test",), key="key3"),
        ]
    )
    assert isinstance(results[0], Item)
    assert results[0].value == {"data": "value1"}
    assert results[1] is None
    assert len(results[2]) == 1  # type: ignore[arg-type]
    assert ("test", "foo") in results[3]
    assert ("test", "bar") in results[3]
    assert results[4] is None
    reordered = await store.abatch(
        [
            SearchOp(namespace_prefix=("test",), filter=None, limit=5, offset=0),
            GetOp(namespace=("test", "bar"), key="key2"),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=5, offset=0),
            PutOp(namespace=("test",), key="key3", value={"data": "value3"}),
            GetOp(namespace=("test", "foo"), key="key1"),
        ]
    )
    assert len(reordered[0]) == 2  # type: ignore[arg-type]
    assert reordered[1].value == {"data": "value2"}  # type: ignore[union-attr]
    assert reordered[3] is None
    assert reordered[4].value == {"data": "value1"}  # type: ignore[union-attr]


async def test_ported_batch_put_ops(store: AgencyStore) -> None:
    results = await store.abatch(
        [
            PutOp(namespace=("test",), key="key1", value={"data": "value1"}),
            PutOp(namespace=("test",), key="key2", value={"data": "value2"}),
            PutOp(namespace=("test",), key="key3", value=None),
        ]
    )
    assert results == [None, None, None]
    assert len(await store.asearch(["test"], limit=10)) == 2  # type: ignore[arg-type]


async def test_ported_vector_update_with_embedding(store: AgencyStore) -> None:
    await store.aput(("test",), "doc1", {"text": "zany zebra xerxes"})
    await store.aput(("test",), "doc2", {"text": "something about dogs"})
    await store.aput(("test",), "doc3", {"text": "text about birds"})
    initial = await store.asearch(("test",), query="zany xerxes")
    assert initial[0].key == "doc1"
    await store.aput(("test",), "doc1", {"text": "new text about dogs"})
    after = await store.asearch(("test",), query="zany xerxes")
    after_score = next(r.score for r in after if r.key == "doc1")
    assert after_score is not None
    assert initial[0].score is not None
    assert after_score < initial[0].score
    await store.aput(("test",), "doc4", {"text": "new text about dogs"}, index=False)
    assert not any(
        r.key == "doc4"
        for r in await store.asearch(("test",), query="new text about dogs", limit=3)
    )


async def test_ported_vector_search_edge_cases(store: AgencyStore) -> None:
    await store.aput(("test",), "doc1", {"text": "test document"})
    perfect = (await store.asearch(("test",), query="test document"))[0].score
    assert perfect is not None
    for query in ("", None):
        (hit,) = await store.asearch(("test",), query=query)
        assert hit.score is None
    for query in ("foo " * 100, "test!@#$%^&*()"):
        (hit,) = await store.asearch(("test",), query=query)
        assert hit.score is not None
        assert hit.score < perfect


@pytest.mark.parametrize(
    ("vector_type", "distance_type"),
    list(itertools.product(["vector", "halfvec"], ["cosine", "inner_product", "l2"])),
)
async def test_ported_embed_with_path_and_search_sorting(
    dl: DataLayer, vector_type: str, distance_type: str
) -> None:
    store = AgencyStore(
        dl,
        index={
            "dims": DIM,
            "embed": HashingEmbedder(DIM),
            "fields": ["key0", "key1", "key3"],
            "distance_type": distance_type,
            "ann_index_config": {"kind": "hnsw", "vector_type": vector_type},
        },
        name=f"lg_{vector_type}_{distance_type}",
    )
    await store.aput(("test",), "doc1", {"key1": "xxx", "key2": "yyy", "key3": "zzz"})
    await store.aput(
        ("test",), "doc2", {"key0": "uuu", "key1": "vvv", "key2": "www", "key3": "xxx"}
    )
    both = await store.asearch(("test",), query="xxx")
    assert len(both) == 2
    assert both[0].key != both[1].key
    assert both[0].score == pytest.approx(both[1].score, abs=1e-3)
    top = await store.asearch(("test",), query="uuu")
    assert top[0].key == "doc2"
    assert top[0].score > top[1].score
    # key2 is not embedded: a query for it matches neither as well.
    for hit in await store.asearch(("test",), query="www"):
        assert hit.score < both[0].score  # type: ignore[operator]
    # Sorting: the one match comes first among many non-matches.
    await store.aput(("test", "M"), "M", {"key1": "mmm"})
    await store.abatch(
        [PutOp(("test", side), f"{side}{n}", {"key1": "no"}) for side in "AZ" for n in range(100)]
    )
    results = await store.asearch(("test",), query="mmm", limit=10)
    assert len(results) == 10
    assert len({r.key for r in results}) == 10
    assert results[0].key == "M"
    assert results[0].score > results[1].score


async def test_ported_omit_expired_search_pagination(dl: DataLayer) -> None:
    store = AgencyStore(dl, ttl={"omit_expired": True})
    for key in ("a", "b", "c", "expired"):
        await store.aput(("page",), key, {"k": key}, ttl=5)
    await expire(dl, "expired")
    for key, seconds in {"a": 1, "expired": 2, "b": 3, "c": 4}.items():
        await dl.tenant("default").execute(
            "UPDATE langgraph_store SET updated_at = now() - %s * interval '1 second' "
            "WHERE key = %s",
            [seconds, key],
        )
    assert [i.key for i in await store.asearch(("page",), limit=2)] == ["a", "b"]
    assert [i.key for i in await store.asearch(("page",), limit=2, offset=2)] == ["c"]
