"""Edges of agent memory through the synchronous front end (agency_data.sync)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from agency_data.sync import DataLayer as SyncDataLayer
from tests.conftest import DatabaseDsn, make_config
from tests.memory_support import DIM

FLUSH = 0.3


class Boom(Exception):
    pass


def test_recall_counts_survive_a_rolled_back_sync_transaction(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, memory={"access_flush": FLUSH})
    with SyncDataLayer(config) as layer:
        layer.memory.setup(DIM)
        memory = layer.memory
        made = memory.remember("a1", list(np.eye(DIM)[0]), text="x")
        with contextlib.suppress(Boom), layer.transaction():
            memory.recall("a1", list(np.eye(DIM)[0]))
            time.sleep(FLUSH * 4)  # the timer fires in here
            raise Boom
        memory.flush()
        assert memory.get(made.id).access_count == 1
