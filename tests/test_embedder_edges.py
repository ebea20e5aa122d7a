"""Text embedders at their edges: the transient errors of the HTTP clients most embedders use
are retried, the concurrency bound holds per embedder (across concurrent calls), and a dropped
collection's embedder goes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx  # the HTTP clients embedders are built on (the dev install has both)
import pytest
import requests

from agency_data import DataLayer, Embedder
from agency_data.errors import EmbedderError, ValidationError
from tests.embedding_support import embed_texts

TRANSIENT: dict[str, Callable[[], Exception]] = {
    "httpx.ReadTimeout": lambda: httpx.ReadTimeout("timed out"),
    "httpx.ConnectError": lambda: httpx.ConnectError("connection refused"),
    "requests.Timeout": lambda: requests.Timeout("read timed out"),
    "requests.ConnectionError": lambda: requests.ConnectionError("connection refused"),
}


@pytest.mark.parametrize("kind", list(TRANSIENT))
async def test_http_clients_timeouts_and_refused_connections_are_retried(
    dl: DataLayer, kind: str
) -> None:
    attempts: list[int] = []

    def flaky(texts: list[str]) -> list[list[float]]:
        attempts.append(len(texts))
        if len(attempts) == 1:
            raise TRANSIENT[kind]()
        return embed_texts(texts, 8)

    await dl.embeddings.create_collection("docs", dimension=8)
    docs = dl.embeddings.collection("docs", embedder=flaky)
    (stored,) = await docs.store_texts(["a note"])
    assert (await docs.get(stored)).content == "a note"
    assert len(attempts) == 2


async def test_a_dropped_collections_embedder_goes_with_it(dl: DataLayer) -> None:
    calls: list[int] = []

    def old_model(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return embed_texts(texts, 8)

    await dl.embeddings.create_collection("docs", dimension=8, embedder=old_model)
    await dl.embeddings.drop_collection("docs")
    await dl.embeddings.create_collection("docs", dimension=8)
    docs = dl.embeddings.collection("docs")
    assert docs.embedder is None
    with pytest.raises(ValidationError, match="embedder"):
        await docs.store_texts(["a note"])
    assert calls == []


class Counting:
    """An async embedder that records how many of its calls run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most_running = 0

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.05)
            return embed_texts(texts, 8)
        finally:
            self.running -= 1


async def test_the_concurrency_bound_holds_across_concurrent_calls(dl: DataLayer) -> None:
    model = Counting()
    embedder = Embedder(model, batch_size=10, concurrency=3)
    docs = await dl.embeddings.create_collection("docs", dimension=8, embedder=embedder)
    texts = [f"text number {n}" for n in range(60)]
    stored = await asyncio.gather(*(docs.store_texts(texts) for _ in range(3)))
    assert [len(ids) for ids in stored] == [60, 60, 60]
    assert model.most_running <= 3


async def test_a_hung_embedder_times_out_and_is_retried(dl: DataLayer) -> None:
    calls = 0

    async def hangs_once(texts: list[str]) -> list[list[float]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(30)
        return [[1.0, 0.0, 0.0] for _ in texts]

    col = await dl.embeddings.create_collection(
        "hangs", dimension=3, embedder=Embedder(hangs_once, timeout=0.2, retries=1)
    )
    assert len(await col.store_texts(["a", "b"])) == 2
    assert calls == 2


async def test_an_api_key_in_a_url_stays_out_of_the_error(dl: DataLayer) -> None:
    def refuses(texts: list[str]) -> list[list[float]]:
        raise ValueError(
            "401 for url 'https://api.example.com/v1/embed?key=sk-secret-123&model=m' (denied)"
        )

    col = await dl.embeddings.create_collection("keyed", dimension=3, embedder=refuses)
    with pytest.raises(EmbedderError) as info:
        await col.store_texts(["a"])
    assert "sk-secret-123" not in str(info.value)
    assert "https://api.example.com/v1/embed?..." in str(info.value)
