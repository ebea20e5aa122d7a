"""Text in, vectors inside: collections with an embedder store and search text.

Every kind of embedder the layer accepts (a plain or async callable, a LangChain-shaped
``Embeddings``, a sentence-transformers-shaped model), batching with bounded concurrency,
retries of transient errors, checks of what an embedder returns, and cancellation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from agency_data import DataLayer, Embedder, EmbedderError, ValidationError
from tests.embedding_support import HashingEmbedder, embed_texts

DIM = 32
FACTS = [
    "the planner agent schedules every task",
    "cooking pasta needs salted boiling water",
    "vector search finds the nearest embeddings",
    "the weather in oslo is cold in winter",
    "agents share memory through the data layer",
]


class AsyncEmbedder:
    """An async callable that can be slowed down, fail on chosen calls, and count overlaps."""

    def __init__(self, delay: float = 0.0, failures: list[BaseException] | None = None) -> None:
        self.delay = delay
        self.failures = list(failures or [])
        self.calls = 0
        self.running = 0
        self.most_running = 0

    async def __call__(self, texts: list[str]) -> Any:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.failures:
                raise self.failures.pop(0)
            return np.asarray(embed_texts(texts, DIM), dtype=np.float32)
        finally:
            self.running -= 1


class SentenceModel:
    """Shaped as a sentence-transformers model: ``encode_document`` / ``encode_query``."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.queries = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        return np.asarray(embed_texts(texts, DIM))

    def encode_document(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def encode_query(self, texts: list[str]) -> np.ndarray:
        self.queries += 1
        return self.encode(texts)


class HttpError(Exception):
    """Shaped as an HTTP client's error: it carries the response's status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


async def test_store_and_search_text(dl: DataLayer) -> None:
    embedder = HashingEmbedder(DIM)
    docs = await dl.embeddings.create_collection("facts", dimension=DIM, embedder=embedder)
    ids = await docs.store_texts(
        FACTS,
        metadatas=[{"n": n} for n in range(len(FACTS))],
        ids=[f"fact-{n}" for n in range(len(FACTS))],
    )
    assert ids == [f"fact-{n}" for n in range(len(FACTS))]
    stored = await docs.get("fact-2")
    assert (stored.content, stored.metadata, stored.entity_type) == (FACTS[2], {"n": 2}, "document")
    hits = await docs.search_text("which agent schedules a task", limit=2)
    assert hits[0].id == "fact-0"
    assert embedder.queries == 1
    filtered = await docs.search_text("memory agents", limit=5, filter={"n": {"$gte": 3}})
    assert {h.id for h in filtered} <= {"fact-3", "fact-4"}
    assert filtered[0].id == "fact-4"
    # Hybrid search with only the text: the embedder makes the vector.
    fused = await docs.hybrid_search("boiling water", limit=1)
    assert [h.id for h in fused] == ["fact-1"]
    # Ids are made when not given; generated and given ones mix.
    more = await docs.store_texts(["one more", "and another"], ids=[None, "mine"])
    assert more[1] == "mine"
    assert len(more[0]) == 36
    assert await docs.count() == len(FACTS) + 2


async def test_every_kind_of_embedder(dl: DataLayer) -> None:
    model = SentenceModel()
    kinds: list[Any] = [
        lambda texts: embed_texts(texts, DIM),  # a plain callable: run in a worker thread
        AsyncEmbedder(),
        HashingEmbedder(DIM),
        model,
        Embedder(HashingEmbedder(DIM), batch_size=2),
    ]
    await dl.embeddings.create_collection("kinds", dimension=DIM)
    for n, kind in enumerate(kinds):
        view = dl.tenant(f"t{n}").embeddings.collection("kinds", embedder=kind)
        await view.store_texts(FACTS)
        (best,) = await view.search_text(FACTS[3], limit=1)
        assert best.content == FACTS[3], kind
    assert model.queries == 1
    assert model.threads
    assert threading.current_thread().name not in model.threads


async def test_langchain_embeddings_are_used_as_they_are(dl: DataLayer) -> None:
    fake = pytest.importorskip("langchain_core.embeddings.fake")
    embeddings = fake.DeterministicFakeEmbedding(size=DIM)
    docs = await dl.embeddings.create_collection("lc", dimension=DIM, embedder=embeddings)
    await docs.store_texts(["alpha", "beta"], ids=["a", "b"])
    # The fake embeds a text the same way whatever the call: the query finds its document.
    assert [h.id for h in await docs.search_text("beta", limit=1)] == ["b"]
    assert (await docs.get("a")).vector == pytest.approx(embeddings.embed_query("alpha"))


async def test_the_embedder_follows_the_collection_into_tenant_views(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("shared", dimension=DIM, embedder=HashingEmbedder(DIM))
    view = dl.tenant("acme").embeddings.collection("shared")
    await view.store_texts(FACTS[:2], ids=["x", "y"])
    assert [h.id for h in await view.search_text(FACTS[1], limit=1)] == ["y"]
    # Another embedder for one view leaves the collection's own in place.
    counting = HashingEmbedder(DIM)
    other = dl.tenant("acme").embeddings.collection("shared", embedder=counting)
    await other.search_text("x")
    assert counting.queries == 1
    assert dl.tenant("acme").embeddings.collection("shared").embedder is not None
    assert dl.tenant("acme").embeddings.collection("shared").embedder.source is not counting  # type: ignore[union-attr]


async def test_batches_run_with_bounded_concurrency(dl: DataLayer) -> None:
    slow = AsyncEmbedder(delay=0.05)
    embedder = Embedder(slow, batch_size=10, concurrency=3)
    docs = await dl.embeddings.create_collection("many", dimension=DIM, embedder=embedder)
    texts = [f"text number {i} about {FACTS[i % 5]}" for i in range(95)]
    ids = await docs.store_texts(texts)
    assert len(ids) == 95
    assert slow.calls == 10
    assert slow.most_running == 3
    # In the texts' order, whichever batch finished first.
    for i in (0, 37, 94):
        assert (await docs.get(ids[i])).content == texts[i]


@pytest.mark.parametrize(
    "failure", [TimeoutError("slow"), ConnectionError("reset"), HttpError(503), HttpError(429)]
)
async def test_transient_errors_are_retried(dl: DataLayer, failure: BaseException) -> None:
    flaky = AsyncEmbedder(failures=[failure, failure])
    docs = await dl.embeddings.create_collection(
        "flaky", dimension=DIM, embedder=Embedder(flaky, retries=2)
    )
    assert len(await docs.store_texts(FACTS)) == len(FACTS)
    assert flaky.calls == 3


async def test_failures_store_nothing(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("failing", dimension=DIM)
    col = dl.embeddings.collection("failing")

    broken = col.with_embedder(AsyncEmbedder(failures=[ValueError("bad model")]))
    with pytest.raises(EmbedderError, match=r"not retried.*ValueError: bad model") as info:
        await broken.store_texts(FACTS)
    assert isinstance(info.value.__cause__, ValueError)

    down = AsyncEmbedder(failures=[HttpError(500)] * 3)
    with pytest.raises(EmbedderError, match=r"after 3 attempts") as info:
        await col.with_embedder(Embedder(down, retries=2)).store_texts(FACTS)
    assert isinstance(info.value.__cause__, HttpError)
    assert down.calls == 3

    for returned, message in [
        (lambda texts: [[0.0] * DIM], "for 5 texts"),
        (lambda texts: [[0.0] * (DIM - 1)] * len(texts), f"31 dimensions.*have {DIM}"),
        (lambda texts: [[float("nan")] * DIM] * len(texts), r"NaN or infinite.*texts\[0\]"),
        (lambda texts: "not vectors", "not a list of vectors|values for 5 texts"),
        (lambda texts: None, "values for 5 texts|not a list"),
    ]:
        with pytest.raises(EmbedderError, match=message):
            await col.with_embedder(returned).store_texts(FACTS)
    assert await col.count() == 0


async def test_bad_input(dl: DataLayer) -> None:
    plain = await dl.embeddings.create_collection("plain", dimension=DIM)
    with pytest.raises(ValidationError, match="needs a text embedder") as info:
        await plain.store_texts(FACTS)
    assert info.value.field == "embedder"
    with pytest.raises(ValidationError, match="needs a text embedder"):
        await plain.search_text("x")
    with pytest.raises(ValidationError, match="needs a text embedder"):
        await plain.hybrid_search("x")
    docs = plain.with_embedder(HashingEmbedder(DIM))
    for call, message, field in [
        (lambda: docs.store_texts("one text"), "must be a list", "texts"),
        (lambda: docs.store_texts([1]), "must be a string", "texts[0]"),
        (lambda: docs.store_texts(["a", "b"], ids=["x"]), "1 entries for 2 texts", "ids"),
        (lambda: docs.store_texts(["a"], metadatas=[{}, {}]), "2 entries", "metadatas"),
        (lambda: docs.store_texts(["a"], metadatas=[[1]]), "must be a dict", "items[0].metadata"),
        (lambda: docs.store_texts(["a"], ids=[""]), "is empty", "items[0].id"),
        (lambda: docs.store_texts(["a"], entity_type=""), "blank", "items[0].entity_type"),
        (lambda: docs.search_text(5), "must be a string", "query"),  # type: ignore[arg-type]
        (lambda: docs.search_text("x", limit=0), "limit", "limit"),
    ]:
        with pytest.raises(ValidationError, match=message) as info:
            await call()
        assert info.value.field == field, message
    assert await docs.count() == 0
    for make, field in [
        (lambda: Embedder(42), "embedder"),
        (lambda: Embedder(HashingEmbedder(), batch_size=0), "batch_size"),
        (lambda: Embedder(HashingEmbedder(), concurrency=-1), "concurrency"),
        (lambda: Embedder(HashingEmbedder(), retry_on=ValueError), "retry_on"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ValidationError) as info:
            make()
        assert info.value.field == field
    with pytest.raises(ValidationError, match="not one"):
        await dl.embeddings.create_collection("never", dimension=DIM, embedder="a model name")
    assert "never" not in await dl.embeddings.list_collections()


async def test_cancelling_a_slow_embedding_stores_nothing(dl: DataLayer) -> None:
    slow = AsyncEmbedder(delay=5.0)
    docs = await dl.embeddings.create_collection("slow", dimension=DIM, embedder=slow)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(docs.store_texts(FACTS), 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(docs.search_text("x"), 0.2)
    assert slow.running == 0
    assert await docs.count() == 0
