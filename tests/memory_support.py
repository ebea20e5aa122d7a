"""What the agent-memory tests share: small vectors and a layer with memory set up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from agency_data import DataLayer
from tests.conftest import DatabaseDsn, make_config

DIM = 8


def unit(*values: float) -> list[float]:
    """A unit vector of DIM dimensions pointing along ``values`` (the rest zeros)."""
    vector = np.zeros(DIM, dtype=np.float64)
    vector[: len(values)] = values
    return list(vector / np.linalg.norm(vector))


@asynccontextmanager
async def memory_layer(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, **sections: Any
) -> AsyncIterator[DataLayer]:
    """A connected DataLayer (config ``sections`` over the test defaults) whose memory
    collection exists, DIM dimensions."""
    async with DataLayer(make_config(database, redis_url, tmp_path, **sections)) as dl:
        await dl.memory.setup(dimension=DIM)
        yield dl
