"""The LangChain adapters at their edges: a tenant's erasure takes its ByteStore values; keys
and prompts Python cannot encode are refused by name; msets of the same keys in different
orders do not deadlock; key lengths are checked in bytes, as the primary key needs; an LLM
cache entry that cannot be read back is a miss, and only generations are cached; relevance
scores stay within [0, 1] and fall as similarity does; a filter key that cannot be encoded is
a ValidationError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

try:
    from langchain_core.embeddings import Embeddings
    from langchain_core.outputs import Generation
except ImportError:  # pragma: no cover - the extra is part of the dev install
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("langchain-core is not installed", allow_module_level=True)

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, SerializationFailure, ValidationError
from agency_data.integrations.langchain import AgencyByteStore, AgencyLLMCache, AgencyVectorStore
from tests.conftest import other_connection
from tests.embedding_support import embed_texts

# A lone surrogate: a Python str that UTF-8 (and so PostgreSQL and Redis) cannot hold. It
# arrives from JSON ("\ud800" escapes) and from file names read with surrogateescape.
LONE = "\ud800"


def cjk(count: int, seed: int) -> str:
    """``count`` random CJK characters (three UTF-8 bytes each, and they do not compress)."""
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(count))


class Coordinates(Embeddings):
    """Texts are their vectors written out ("0.5,0.866"): the test chooses every distance."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in text.split(",")]


class Words(Embeddings):
    """tests.embedding_support's hashing embedder as a LangChain Embeddings."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(texts, 8)

    def embed_query(self, text: str) -> list[float]:
        return embed_texts([text], 8)[0]


# -- AgencyByteStore ----------------------------------------------------------------------------


async def test_erasing_a_tenant_removes_its_byte_store_values(dl: DataLayer) -> None:
    erased = AgencyByteStore(dl.tenant("gone"), namespace="parents")
    kept = AgencyByteStore(dl.tenant("stays"), namespace="parents")
    await erased.amset([("doc-1", b"the erased tenant's document")])
    await kept.amset([("doc-1", b"another tenant's document")])

    await dl.subjects.erase_tenant("gone")

    async with other_connection(dl, "gone") as conn:
        left = await (await conn.execute("SELECT count(*) AS n FROM kv_items")).fetchone()
    assert left is not None
    assert left["n"] == 0, "the erased tenant's kv_items rows are still there"
    assert await erased.amget(["doc-1"]) == [None]
    assert await kept.amget(["doc-1"]) == [b"another tenant's document"]


async def test_keys_python_cannot_encode_never_raise_raw_errors(dl: DataLayer) -> None:
    store = AgencyByteStore(dl, namespace="n")
    calls: dict[str, Any] = {
        "mset": lambda: store.amset([(LONE, b"v")]),
        "mget": lambda: store.amget([LONE]),
        "mdelete": lambda: store.amdelete([LONE]),
        "yield_keys": lambda: anext(store.ayield_keys(prefix=LONE), None),
    }
    raw: dict[str, str] = {}
    for name, call in calls.items():
        try:
            await call()
        except AgencyDataError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            raw[name] = f"{type(exc).__name__}: {exc}"
    assert raw == {}, f"raw exceptions: {raw}"
    async with other_connection(dl) as conn:
        left = await (await conn.execute("SELECT count(*) AS n FROM kv_items")).fetchone()
    assert left is not None
    assert left["n"] == 0


async def test_concurrent_msets_of_the_same_keys_do_not_deadlock(dl: DataLayer) -> None:
    store = AgencyByteStore(dl, namespace="embeddings-cache")
    keys = [f"key-{n:04d}" for n in range(300)]
    failures: list[str] = []

    async def mset(order: list[str]) -> None:
        try:
            await store.amset([(key, b"vector bytes") for key in order])
        except SerializationFailure as exc:
            failures.append(str(exc))

    # Two writers (say two CacheBackedEmbeddings workers) storing the same batch, one of
    # them in reverse; a deadlock shows within a few rounds (each costs deadlock_timeout).
    for _ in range(20):
        await asyncio.gather(mset(keys), mset(keys[::-1]))
        if failures:
            break
    assert failures == [], f"{len(failures)} mset(s) failed: {failures[0][:200]}"


async def test_keys_within_the_documented_length_are_stored_or_refused_by_name(
    dl: DataLayer,
) -> None:
    key = cjk(1024, 2)
    refused: ValidationError | None = None
    try:
        store = AgencyByteStore(dl, namespace=cjk(200, 1))
        await store.amset([(key, b"v")])
    except ValidationError as exc:
        refused = exc
    if refused is not None:
        # Refused up front, naming what is too long: fine.
        assert refused.field is not None
        assert "key" in refused.field or refused.field == "namespace"
        return
    assert await store.amget([key]) == [b"v"]


# -- AgencyLLMCache -----------------------------------------------------------------------------


class _Unserializable:
    """What a model integration may leave in generation_info (a client object, a set)."""


async def test_an_entry_that_cannot_be_read_back_never_breaks_a_lookup(dl: DataLayer) -> None:
    cache = AgencyLLMCache(dl.cache)
    for n, info in enumerate(({"tokens": {1, 2}}, {"client": _Unserializable()})):
        prompt = f"prompt {n}"
        try:
            await cache.aupdate(prompt, "llm", [Generation(text="answer", generation_info=info)])
        except ValidationError:
            continue  # refused at once: fine too
        try:
            found = await cache.alookup(prompt, "llm")
        except AgencyDataError:
            found = None
        except Exception as exc:
            raise AssertionError(f"lookup raised {type(exc).__name__}: {exc}") from exc
        assert found is None or [g.text for g in found] == ["answer"]


async def test_update_refuses_what_is_not_a_list_of_generations(dl: DataLayer) -> None:
    cache = AgencyLLMCache(dl.cache)
    for n, bad in enumerate(("not a list", [1, 2], [None])):
        with pytest.raises(ValidationError):
            await cache.aupdate(f"p{n}", "llm", bad)  # type: ignore[arg-type]
        assert await cache.alookup(f"p{n}", "llm") is None


async def test_prompts_python_cannot_encode_never_raise_raw_errors(dl: DataLayer) -> None:
    cache = AgencyLLMCache(dl.cache)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: cache.alookup(f"say {LONE}", "llm"),
        lambda: cache.aupdate(f"say {LONE}", "llm", [Generation(text="x")]),
    ]
    for call in calls:
        with contextlib.suppress(AgencyDataError):
            await call()


# -- AgencyVectorStore --------------------------------------------------------------------------


async def _scored(dl: DataLayer, metric: str) -> dict[str, float]:
    """Relevance of three unit vectors to the query (1, 0): cosine similarity 0.5, -0.1, -1."""
    await dl.embeddings.create_collection(metric, dimension=2, metric=metric)
    store = AgencyVectorStore(dl.embeddings.collection(metric), Coordinates())
    await store.aadd_texts(
        ["0.5,0.8660254", "-0.1,0.9949874", "-1,0"], ids=["half", "nearly-orthogonal", "opposite"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = await store.asimilarity_search_with_relevance_scores("1,0", k=3)
    assert not caught, [str(w.message)[:120] for w in caught]
    return {doc.id or "": score for doc, score in found}


async def test_inner_product_relevance_follows_similarity(dl: DataLayer) -> None:
    scores = await _scored(dl, "inner_product")
    # Held within [0, 1]: what points away from the query is equally irrelevant (0).
    assert scores["half"] > scores["nearly-orthogonal"] >= scores["opposite"], scores


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
async def test_relevance_stays_between_zero_and_one(dl: DataLayer, metric: str) -> None:
    scores = await _scored(dl, metric)
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores
    assert scores["half"] > scores["nearly-orthogonal"] >= scores["opposite"], scores


async def test_a_filter_key_python_cannot_encode_is_a_validation_error(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("docs", dimension=8)
    store = AgencyVectorStore(dl.embeddings.collection("docs"), Words())
    await store.aadd_texts(["a note"], ids=["1"])
    with pytest.raises(ValidationError):
        await store.asimilarity_search("note", filter={f"source{LONE}": "chat"})
