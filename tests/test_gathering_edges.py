"""Edges of gathered calls: a broken ``many``, and closing the layer while calls are gathered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from agency_data import DataLayer
from agency_data.batching import Coalescer
from tests.batching_support import yielding_psycopg
from tests.conftest import make_config

pytestmark = pytest.mark.usefixtures(yielding_psycopg.__name__)


def _item(i: int) -> dict[str, Any]:
    return {"entity_type": "note", "entity_id": str(i), "vector": [1.0, float(i), 0.5]}


async def test_too_few_results_reach_every_caller_as_an_error() -> None:
    release = asyncio.Event()

    async def one(item: int) -> int:
        await release.wait()
        return item

    async def many(items: list[int]) -> Sequence[int | Exception]:
        return items[:-1]  # one result short

    calls: Coalescer[int, int] = Coalescer(one, many)
    first = asyncio.create_task(calls.submit(0))  # goes alone, keeps the rest gathering
    await asyncio.sleep(0)
    rest = [asyncio.create_task(calls.submit(i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert await first == 0
    # No result can be matched to its caller: each gets an error, not a cancellation it never
    # asked for, nor someone else's value.
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert "returned 2 results for 3" in str(results[0])


async def test_aclose_answers_gathered_task_creates(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    # The control for the test below: tasks' gathered creates are waited for by aclose.
    dl = DataLayer(make_config(database, redis_url, tmp_path))
    await dl.connect()
    first = asyncio.create_task(dl.tasks.create("job", {"i": 0}))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(dl.tasks.create("job", {"i": i})) for i in range(1, 6)]
    await asyncio.sleep(0)
    await dl.aclose()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert [r.data for r in results] == [{"i": i} for i in range(6)], results


async def test_aclose_answers_gathered_embedding_stores(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    dl = DataLayer(make_config(database, redis_url, tmp_path))
    await dl.connect()
    await dl.embeddings.create_collection("closing", dimension=3)
    col = dl.embeddings.collection("closing")
    first = asyncio.create_task(col.store(_item(0)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(col.store(_item(i))) for i in range(1, 6)]
    await asyncio.sleep(0)
    await dl.aclose()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, str) and UUID(r).version == 4 for r in results), results
