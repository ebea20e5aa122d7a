"""String embedding ids at their edges: ``$ilike`` on ``id`` folds case as on every other text
column and in the Python evaluator, and upserts of the same ids in different orders (two
workers re-indexing the same documents) do not deadlock.
"""

from __future__ import annotations

import asyncio

from agency_data import DataLayer
from agency_data.errors import SerializationFailure
from agency_data.vectors import matches
from agency_data.vectors.filter_ast import parse_filter
from tests.embedding_support import embed_texts


async def test_ilike_on_ids_folds_case_as_on_other_text_columns(dl: DataLayer) -> None:
    docs = await dl.embeddings.create_collection("docs", dimension=3)
    await docs.store({"id": "É-1", "entity_type": "t", "entity_id": "É-1", "vector": [1, 0, 0]})
    stored = (await docs.get("É-1")).model_dump()
    for column in ("entity_id", "id"):
        condition = {column: {"$ilike": "é%"}}
        in_python = matches(parse_filter(condition), stored)
        assert in_python, column
        assert await docs.count(condition) == 1, f"SQL and Python disagree on {column}"


async def test_concurrent_upserts_of_the_same_ids_do_not_deadlock(dl: DataLayer) -> None:
    docs = await dl.embeddings.create_collection("docs", dimension=32, embedder=embed_texts)
    ids = [f"doc-{n:04d}" for n in range(300)]
    texts = [f"document number {n}" for n in range(300)]
    await docs.store_texts(texts, ids=ids)
    failures: list[str] = []

    async def reindex(reverse: bool) -> None:
        step = -1 if reverse else 1
        try:
            await docs.store_texts(texts[::step], ids=ids[::step])
        except SerializationFailure as exc:
            failures.append(str(exc))

    for _ in range(20):
        await asyncio.gather(reindex(False), reindex(True))
        if failures:
            break
    assert failures == [], f"{len(failures)} store_texts failed: {failures[0][:200]}"
    assert await docs.count() == 300
