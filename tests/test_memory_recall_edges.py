"""Edges of recall: its score on inputs that would break its arithmetic, and its scopes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agency_data import DataLayer, ValidationError
from tests.conftest import DatabaseDsn
from tests.memory_support import DIM, memory_layer, unit

DAY = 86_400.0


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with memory_layer(
        database, redis_url, tmp_path, memory={"half_lives": {"working": 3600.0}}
    ) as dl:
        yield dl


async def test_a_zero_vector_memory_is_refused(mem: DataLayer) -> None:
    memory = mem.memory
    with pytest.raises(ValidationError):
        await memory.remember("a1", [0.0] * DIM, text="no direction", dedup=False)
    assert await memory.list("a1") == []


async def test_a_zero_query_vector_is_refused(mem: DataLayer) -> None:
    memory = mem.memory
    await memory.remember("a1", unit(1, 0), text="one")
    with pytest.raises(ValidationError):
        await memory.recall("a1", [0.0] * DIM)


async def test_a_summary_of_opposite_memories_is_not_a_perfect_match_for_everything(
    mem: DataLayer,
) -> None:
    memory = mem.memory
    old = datetime.now(UTC) - timedelta(days=30)
    for vector, text in ((unit(1, 0), "up"), (unit(-1, 0), "down")):
        await memory.remember(
            "a1", vector, text=text, subject="s", importance=0.1, at=old, dedup=False
        )
    made = await memory.consolidate("a1", lambda ms: "up and down")
    hits = {h.memory.id: h for h in await memory.recall("a1", unit(0, 1), limit=5)}
    # Orthogonal to both members: whatever the summary's vector is (or if the group is left
    # alone), it is not a perfect match for this query.
    for summary in made:
        assert summary.id not in hits or hits[summary.id].signals.similarity < 0.99
        # And it has a direction of its own: it is recalled by what it summarises.
        norm = await mem.admin.fetch_value(
            "SELECT vector_norm(vector) FROM emb_memories WHERE id = %s", [summary.id]
        )
        assert norm == pytest.approx(1.0, abs=1e-3)


async def test_a_very_old_memory_of_a_short_half_life_decays_to_zero(mem: DataLayer) -> None:
    memory = mem.memory
    old = await memory.remember(
        "a1",
        unit(1, 0),
        text="scratch note",
        kind="working",
        at=datetime.now(UTC) - timedelta(days=60),
        dedup=False,
    )
    fresh = await memory.remember("a1", unit(1, 0.2), text="fresh", dedup=False)
    hits = {h.memory.id: h for h in await memory.recall("a1", unit(1, 0), limit=5)}
    assert set(hits) == {old.id, fresh.id}
    assert hits[old.id].signals.recency == pytest.approx(0.0, abs=1e-12)


async def test_tenant_scope_without_shared_memories(mem: DataLayer) -> None:
    memory = mem.memory
    await memory.remember(None, unit(1, 0), text="shared", dedup=False)
    mine = await memory.remember("a1", unit(1, 0.1), text="mine", dedup=False)
    hits = await memory.recall(None, unit(1, 0), shared=False, limit=5)
    assert [h.memory.id for h in hits] == [mine.id]
