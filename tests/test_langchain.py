"""LangChain on agency-data: langchain-tests' own suites (VectorStore, LLM cache) run against the
real servers, and what they do not cover (filters, scores, MMR, retrievers, tenancy, TTL, bad
input).

The suite's fixture is synchronous and its async tests run on the test session's loop, so the
layer here runs on a loop of its own behind a portal, as it does under the sync front end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
    from langchain_core.outputs import Generation
    from langchain_tests.integration_tests import (
        AsyncCacheTestSuite,
        BaseStoreAsyncTests,
        BaseStoreSyncTests,
        SyncCacheTestSuite,
        VectorStoreIntegrationTests,
    )
except ImportError:  # pragma: no cover - the extra is part of the dev install
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("langchain-core and langchain-tests are not installed", allow_module_level=True)

from agency_data import DataLayer, UsageError, ValidationError
from agency_data.integrations.langchain import AgencyByteStore, AgencyLLMCache, AgencyVectorStore
from agency_data.sync.portal import Portal
from tests.conftest import DatabaseDsn, make_config
from tests.embedding_support import embed_texts

DIM = 6  # the suite's DeterministicFakeEmbedding size


class WordEmbeddings(Embeddings):
    """tests.embedding_support's hashing embedder as a LangChain Embeddings: texts sharing
    words are near each other."""

    def __init__(self, dimension: int = 32) -> None:
        self.dimension = dimension

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(texts, self.dimension)

    def embed_query(self, text: str) -> list[float]:
        return embed_texts([text], self.dimension)[0]


@pytest.fixture(scope="module")
def portal() -> Iterator[Portal]:
    portal = Portal.start("langchain-tests")
    yield portal
    portal.close()


@pytest.fixture
def layer(
    portal: Portal, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> Iterator[DataLayer]:
    dl = DataLayer(make_config(database, redis_url, tmp_path))
    portal.call(dl.connect())
    yield dl
    portal.call(dl.aclose())


class TestStandardSuite(VectorStoreIntegrationTests):
    """langchain-tests' VectorStoreIntegrationTests, sync and async, unchanged."""

    @pytest.fixture
    def vectorstore(self, portal: Portal, layer: DataLayer) -> AgencyVectorStore:  # type: ignore[override]
        name = f"lc_{uuid.uuid4().hex[:8]}"
        docs = portal.call(layer.embeddings.create_collection(name, dimension=DIM))
        return AgencyVectorStore(docs, self.get_embeddings(), portal=portal)


class TestCacheSuite(SyncCacheTestSuite):
    """langchain-tests' SyncCacheTestSuite on the layer's cache."""

    @pytest.fixture
    def cache(self, portal: Portal, layer: DataLayer) -> AgencyLLMCache:  # type: ignore[override]
        return AgencyLLMCache(layer.cache, namespace=f"lc-{uuid.uuid4().hex[:8]}", portal=portal)


class TestAsyncCacheSuite(AsyncCacheTestSuite):
    """langchain-tests' AsyncCacheTestSuite on the layer's cache."""

    @pytest.fixture
    def cache(self, portal: Portal, layer: DataLayer) -> AgencyLLMCache:  # type: ignore[override]
        return AgencyLLMCache(layer.cache, namespace=f"lc-{uuid.uuid4().hex[:8]}", portal=portal)


class TestByteStoreSuite(BaseStoreSyncTests[bytes]):
    """langchain-tests' BaseStoreSyncTests on the PostgreSQL byte store."""

    @pytest.fixture
    def kv_store(self, portal: Portal, layer: DataLayer) -> AgencyByteStore:  # type: ignore[override]
        return AgencyByteStore(layer, namespace=f"kv-{uuid.uuid4().hex[:8]}", portal=portal)

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:  # type: ignore[override]
        return b"foo", b"\x00bar\xff", b"buzz" * 1000


class TestAsyncByteStoreSuite(BaseStoreAsyncTests[bytes]):
    """langchain-tests' BaseStoreAsyncTests on the PostgreSQL byte store."""

    @pytest.fixture
    async def kv_store(self, portal: Portal, layer: DataLayer) -> AgencyByteStore:  # type: ignore[override]
        return AgencyByteStore(layer, namespace=f"kv-{uuid.uuid4().hex[:8]}", portal=portal)

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:  # type: ignore[override]
        return b"foo", b"\x00bar\xff", b"buzz" * 1000


async def test_byte_store_tenants_prefixes_and_pages(dl: DataLayer) -> None:
    acme = AgencyByteStore(dl.tenant("acme"), namespace="docs")
    globex = AgencyByteStore(dl.tenant("globex"), namespace="docs")
    other = AgencyByteStore(dl.tenant("acme"), namespace="other")
    keys = [f"doc/{i:05d}" for i in range(2500)] + ["a%b", "a_c", "a\\d", "ab"]
    # A key given twice keeps the last value.
    await acme.amset([(k, k.encode()) for k in keys] + [("ab", b"last")])
    await globex.amset([("doc/00001", b"globex")])
    assert await acme.amget(["doc/00001", "nope", "ab"]) == [b"doc/00001", None, b"last"]
    assert await globex.amget(["doc/00001", "ab"]) == [b"globex", None]
    assert await other.amget(["doc/00001"]) == [None]
    # In key order, across pages; LIKE's wildcards in a prefix are taken literally.
    listed = [k async for k in acme.ayield_keys(prefix="doc/")]
    assert listed == sorted(k for k in keys if k.startswith("doc/"))
    assert [k async for k in acme.ayield_keys(prefix="a%")] == ["a%b"]
    assert [k async for k in acme.ayield_keys(prefix="a_")] == ["a_c"]
    assert [k async for k in acme.ayield_keys(prefix="a\\")] == ["a\\d"]
    assert [k async for k in globex.ayield_keys()] == ["doc/00001"]
    await acme.amdelete(["doc/00001", "never-set"])
    assert await acme.amget(["doc/00001"]) == [None]
    assert await globex.amget(["doc/00001"]) == [b"globex"]
    with pytest.raises(UsageError, match="event loop"):
        acme.mget(["ab"])
    for call, field in [
        (lambda: acme.amset([("k", "text")]), "key_value_pairs[0][1]"),
        (lambda: acme.amset([("", b"v")]), "key_value_pairs[0][0]"),
        (lambda: acme.amset([("k" * 1025, b"v")]), "key_value_pairs[0][0]"),
        (lambda: acme.amset([("k",)]), "key_value_pairs[0]"),
        (lambda: acme.amset("kv"), "key_value_pairs"),
        (lambda: acme.amget([5]), "keys[0]"),
        (lambda: acme.amdelete(["a\x00b"]), "keys[0]"),
    ]:
        with pytest.raises(ValidationError) as info:
            await call()
        assert info.value.field == field
    with pytest.raises(ValidationError, match="namespace"):
        AgencyByteStore(dl, namespace="")
    with pytest.raises(ValidationError, match="agency-data DataLayer or tenant view"):
        AgencyByteStore(dl.cache)


async def test_the_llm_cache_per_tenant_with_a_ttl(dl: DataLayer) -> None:
    answer = [Generation(text="42", generation_info={"model": "m"})]
    acme = AgencyLLMCache(dl.tenant("acme").cache, ttl=0.5)
    globex = AgencyLLMCache(dl.tenant("globex").cache)
    await acme.aupdate("the question", "model=m", answer)
    assert await acme.alookup("the question", "model=m") == answer
    assert await acme.alookup("the question", "model=other") is None
    assert await globex.alookup("the question", "model=m") is None
    await asyncio.sleep(0.8)
    assert await acme.alookup("the question", "model=m") is None
    with pytest.raises(ValidationError, match="ttl"):
        AgencyLLMCache(dl.cache, ttl=0)
    with pytest.raises(ValidationError, match="prompt must be a string"):
        await acme.alookup(None, "model=m")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="agency-data Cache"):
        AgencyLLMCache({}, portal=None)
    with pytest.raises(UsageError, match="event loop"):
        acme.lookup("the question", "model=m")


def _store(
    portal: Portal, layer: DataLayer, name: str = "notes", dim: int = 32
) -> AgencyVectorStore:
    docs = portal.call(layer.embeddings.create_collection(name, dimension=dim, exist_ok=True))
    return AgencyVectorStore(docs, WordEmbeddings(dim), portal=portal)


NOTES = [
    Document("the planner agent schedules every task", metadata={"kind": "agent", "n": 1}),
    Document("cooking pasta needs salted boiling water", metadata={"kind": "food", "n": 2}),
    Document("the planner reviews finished tasks weekly", metadata={"kind": "agent", "n": 3}),
    Document("vector search finds the nearest embeddings", metadata={"kind": "search", "n": 4}),
]


def test_filters_scores_and_retrievers(portal: Portal, layer: DataLayer) -> None:
    store = _store(portal, layer)
    ids = store.add_documents(NOTES, ids=["a", "b", "c", "d"])
    assert ids == ["a", "b", "c", "d"]
    hits = store.similarity_search_with_score("the planner agent schedules every task", k=4)
    assert hits[0][0] == Document(NOTES[0].page_content, metadata=NOTES[0].metadata, id="a")
    assert hits[0][1] == pytest.approx(0.0, abs=1e-6)
    distances = [s for _, s in hits]
    assert distances == sorted(distances)
    # The full filter language.
    agents = store.similarity_search("tasks", k=4, filter={"kind": "agent", "n": {"$gte": 3}})
    assert [d.id for d in agents] == ["c"]
    either = store.similarity_search("x", k=4, filter={"$or": [{"n": 2}, {"kind": "search"}]})
    assert {d.id for d in either} == {"b", "d"}
    # Relevance in [0, 1] and a threshold through a retriever.
    scored = store.similarity_search_with_relevance_scores(NOTES[0].page_content, k=2)
    assert scored[0][0].id == "a"
    assert 0.99 <= scored[0][1] <= 1.0 + 1e-6
    assert all(0.0 <= s <= 1.0 + 1e-6 for _, s in scored)
    retriever = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9, "k": 4}
    )
    assert [d.id for d in retriever.invoke("the planner agent schedules every task")] == ["a"]
    plain = store.as_retriever(search_kwargs={"k": 1, "filter": {"kind": "food"}})
    assert [d.id for d in plain.invoke("anything")] == ["b"]
    # Max marginal relevance: the near-duplicate "c" gives way to a different document.
    store.add_documents([Document("the planner agent schedules every task!", id="a2")])
    mmr = store.max_marginal_relevance_search(
        "the planner agent schedules every task", k=2, fetch_k=5, lambda_mult=0.3
    )
    assert mmr[0].id in ("a", "a2")
    assert mmr[1].id not in ("a", "a2")
    nearest = store.similarity_search("the planner agent schedules every task", k=2)
    assert {d.id for d in nearest} == {"a", "a2"}
    # Deleting by filter, then everything.
    store.delete(filter={"kind": "food"})
    assert store.get_by_ids(["b"]) == []
    store.delete()
    assert store.similarity_search("x", k=4) == []


async def test_async_methods_and_from_texts(portal: Portal, layer: DataLayer) -> None:
    docs = await portal.acall(layer.embeddings.create_collection("texts", dimension=32))
    store = await AgencyVectorStore.afrom_texts(
        ["alpha beta", "gamma delta"],
        WordEmbeddings(32),
        [{"i": 0}, {"i": 1}],
        ids=["x", "y"],
        collection=docs,
        portal=portal,
    )
    assert [d.id for d in await store.asimilarity_search("gamma", k=1)] == ["y"]
    mmr = await store.amax_marginal_relevance_search("alpha", k=2, fetch_k=2)
    assert [d.id for d in mmr] == ["x", "y"]
    assert [d.page_content for d in await store.aget_by_ids(["y", "nope", "x"])] == [
        "gamma delta",
        "alpha beta",
    ]
    with pytest.raises(ValidationError, match="needs collection="):
        AgencyVectorStore.from_texts(["a"], DeterministicFakeEmbedding(size=DIM))


async def test_built_inside_the_layers_loop(dl: DataLayer) -> None:
    """In async code the store runs on the caller's loop, with no thread in between, and its
    sync methods refuse to run there (they would wait on the loop they block)."""
    await dl.embeddings.create_collection("notes", dimension=32)
    acme = AgencyVectorStore(
        dl.tenant("acme").embeddings.collection("notes"),
        WordEmbeddings(32),
    )
    globex = AgencyVectorStore(
        dl.tenant("globex").embeddings.collection("notes"),
        WordEmbeddings(32),
    )
    await acme.aadd_documents(NOTES, ids=["1", "2", "3", "4"])
    await globex.aadd_texts(["globex only"], ids=["1"])
    # Each tenant sees its own documents, even under the same ids.
    assert [d.page_content for d in await globex.aget_by_ids(["1", "2"])] == ["globex only"]
    assert len(await acme.asimilarity_search("planner", k=10)) == 4
    assert [d.id for d in await globex.asimilarity_search("planner", k=10)] == ["1"]
    with pytest.raises(UsageError, match="event loop"):
        acme.similarity_search("planner")
    await globex.adelete(["1", "2"])
    assert len(await acme.aget_by_ids(["1"])) == 1


def test_bad_input(portal: Portal, layer: DataLayer) -> None:
    store = _store(portal, layer)
    with pytest.raises(ValidationError, match="must be a LangChain Embeddings"):
        AgencyVectorStore(store.collection, lambda texts: texts, portal=portal)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="agency-data Collection"):
        AgencyVectorStore("notes", DeterministicFakeEmbedding(size=DIM), portal=portal)
    with pytest.raises(UsageError, match="sync front end"):
        AgencyVectorStore(store.collection, DeterministicFakeEmbedding(size=DIM))
    for call, field in [
        (lambda: store.similarity_search("x", k=0), "k"),
        (lambda: store.similarity_search("x", filter={"$bad": 1}), "$bad"),
        (lambda: store.similarity_search("x", colour="red"), "colour"),
        (lambda: store.max_marginal_relevance_search("x", lambda_mult=2), "lambda_mult"),
        (lambda: store.add_texts(["a", "b"], ids=["1"]), "ids"),
        (lambda: store.add_texts(["a"], ids=[""]), "items[0].id"),
        (lambda: store.add_texts([5]), "texts[0]"),  # type: ignore[list-item]
        (lambda: store.delete(["a"], filter={"n": 1}), "filter"),
    ]:
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field is not None
        assert info.value.field.startswith(field), (field, info.value)
    assert store.similarity_search("x") == []


def test_over_the_sync_front_end(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> None:
    """Built on agency_data.sync objects, the adapters take the front end's portal: sync calls
    from this thread, async ones from a loop of the caller's own."""
    from agency_data.sync import DataLayer as SyncDataLayer

    with SyncDataLayer(make_config(database, redis_url, tmp_path)) as dl:
        dl.embeddings.create_collection("sync_docs", dimension=32)
        store = AgencyVectorStore(
            dl.tenant("acme").embeddings.collection("sync_docs"), WordEmbeddings(32)
        )
        store.add_documents(NOTES, ids=["a", "b", "c", "d"])
        assert [d.id for d in store.similarity_search(NOTES[1].page_content, k=1)] == ["b"]
        found = asyncio.run(store.asimilarity_search(NOTES[3].page_content, k=1))
        assert [d.id for d in found] == ["d"]
        assert dl.tenant("globex").embeddings.collection("sync_docs").count() == 0

        kv = AgencyByteStore(dl.tenant("acme"), namespace="sync")
        kv.mset([("k1", b"v1"), ("k2", b"v2")])
        assert kv.mget(["k2", "k1", "k3"]) == [b"v2", b"v1", None]
        assert list(kv.yield_keys(prefix="k")) == ["k1", "k2"]

        cache = AgencyLLMCache(dl.tenant("acme").cache)
        answer = [Generation(text="cached")]
        cache.update("prompt", "model", answer)
        assert cache.lookup("prompt", "model") == answer
        assert asyncio.run(cache.alookup("prompt", "model")) == answer
