"""Edges of memory.changes(): what it says of memories that are gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agency_data import DataLayer
from tests.conftest import DatabaseDsn
from tests.memory_support import DIM, memory_layer


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with memory_layer(database, redis_url, tmp_path) as dl:
        yield dl


async def test_a_truncate_is_reported_as_forgetting(mem: DataLayer) -> None:
    memory = mem.memory
    await memory.remember("a1", list(np.eye(DIM)[0]), text="x")
    await mem.admin.execute("TRUNCATE memories CASCADE")
    changes = [c async for c in memory.changes(since="start", wait=False)]
    assert [c.op for c in changes] == ["insert", "truncate"]
    assert changes[-1].forgotten
