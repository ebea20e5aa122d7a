"""Edges of forget: its guard against forgetting everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agency_data import DataLayer, ValidationError
from tests.conftest import DatabaseDsn
from tests.memory_support import memory_layer, unit


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with memory_layer(database, redis_url, tmp_path) as dl:
        yield dl


@pytest.mark.parametrize("hard", [False, True])
async def test_an_empty_filter_does_not_forget_every_memory(mem: DataLayer, hard: bool) -> None:
    memory = mem.memory
    for agent in ("a1", "a2", None):
        await memory.remember(agent, unit(1, 0), text=f"kept by {agent}", dedup=False)
    with pytest.raises(ValidationError):
        await memory.forget(filter={}, hard=hard)
    assert len(await memory.list()) == 3
