"""Review of issue 18: forget's guard against forgetting everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from agency_data import DataLayer, ValidationError
from tests.conftest import DatabaseDsn, make_config

DIM = 8


def unit(*values: float) -> list[float]:
    vector = np.zeros(DIM)
    vector[: len(values)] = values
    return list(vector / np.linalg.norm(vector))


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.memory.setup(dimension=DIM)
        yield dl


@pytest.mark.parametrize("hard", [False, True])
async def test_an_empty_filter_does_not_forget_every_memory(mem: DataLayer, hard: bool) -> None:
    memory = mem.memory
    for agent in ("a1", "a2", None):
        await memory.remember(agent, unit(1, 0), text=f"kept by {agent}", dedup=False)
    with pytest.raises(ValidationError):
        await memory.forget(filter={}, hard=hard)
    assert len(await memory.list()) == 3
