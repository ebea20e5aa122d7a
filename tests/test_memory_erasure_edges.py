"""Edges of erasure: no memory's text left behind, whatever versions, forgettings and
consolidations came before.

``dl.subjects.erase`` finds memories through their collection rows (their current metadata
only); a memory that was forgotten (soft), consolidated, or whose current version no longer
names the subject has every older version's text left in ``memory_history``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agency_data import DataLayer
from tests.conftest import DatabaseDsn
from tests.memory_support import memory_layer, unit

ANN = {"person": "ann@example.com"}


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with memory_layer(
        database, redis_url, tmp_path, subjects={"collections": ["person"]}
    ) as dl:
        yield dl


async def traces(dl: DataLayer, needle: str) -> dict[str, int]:
    """Rows of each memory table holding ``needle`` anywhere, any tenant."""
    found = {}
    for table in ("emb_memories", "memory_history", "memories", "memory_links"):
        found[table] = await dl.admin.fetch_value(
            f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s",
            [f"%{needle}%"],
        )
    return {t: n for t, n in found.items() if n}


async def test_erasing_a_subject_takes_memories_forgotten_before(mem: DataLayer) -> None:
    memory = mem.tenant("acme").memory
    made = await memory.remember("a1", unit(1, 0), text="ann-mark: diagnosis", metadata=ANN)
    await memory.forget(made.id)
    await mem.subjects.erase("acme", "ann@example.com")
    assert await traces(mem, "ann-mark") == {}


async def test_erasing_a_subject_takes_consolidated_memories_and_their_summary(
    mem: DataLayer,
) -> None:
    memory = mem.tenant("acme").memory
    old = datetime.now(UTC) - timedelta(days=30)
    for n in range(2):
        await memory.remember(
            "a1",
            unit(1, n),
            text=f"ann-mark visit {n}",
            metadata=ANN,
            subject="ann.visits",
            importance=0.1,
            at=old,
            dedup=False,
        )
    await memory.consolidate("a1", lambda members: " / ".join(m.text or "" for m in members))
    await mem.subjects.erase("acme", "ann@example.com")
    assert await traces(mem, "ann-mark") == {}


async def test_erasing_a_subject_takes_older_versions_that_named_it(mem: DataLayer) -> None:
    memory = mem.tenant("acme").memory
    first = await memory.remember(
        "a1", unit(1, 0), text="ann-mark booked room 4", metadata=ANN, subject="room.4"
    )
    second = await memory.remember(
        "a1",
        unit(1, 0.01),
        text="bob booked room 4",
        metadata={"person": "bob@example.com"},
        subject="room.4",
    )
    assert (second.id, second.event) == (first.id, "updated")
    await mem.subjects.erase("acme", "ann@example.com")
    assert await traces(mem, "ann-mark") == {}
    assert await traces(mem, "ann@example.com") == {}


async def test_hard_forget_by_filter_takes_memories_forgotten_before(mem: DataLayer) -> None:
    memory = mem.memory
    made = await memory.remember("a1", unit(1, 0), text="ann-mark: address", metadata=ANN)
    await memory.forget(made.id)
    assert await memory.forget(filter=ANN, hard=True) == 1
    assert await traces(mem, "ann-mark") == {}
