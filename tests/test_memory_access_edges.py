"""Edges of agent memory's recall counts (AccessLog): never written in, or lost with, a caller's transaction.

The counts are gathered in memory and written later, by a timer task or ``flush()``. Both
write through ``Database.execute``, which joins whatever transaction the calling context has
open: the caller's (so a rollback takes the counts, already removed from the pending ones,
with it), or, for the timer task (which copied the context of the recall that started it),
a transaction that has since ended, whose connection the pool may have lent to someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agency_data import DataLayer
from tests.conftest import DatabaseDsn, make_config
from tests.memory_support import DIM, memory_layer, unit

FLUSH = 0.3


class Boom(Exception):
    pass


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with memory_layer(database, redis_url, tmp_path, memory={"access_flush": FLUSH}) as dl:
        yield dl


async def test_flush_inside_a_rolled_back_transaction_keeps_the_counts(mem: DataLayer) -> None:
    memory = mem.memory
    made = await memory.remember("a1", unit(1, 0), text="x")
    await memory.recall("a1", unit(1, 0))
    with contextlib.suppress(Boom):
        async with mem.transaction():
            await memory.flush()
            raise Boom
    await memory.flush()
    assert (await memory.get(made.id)).access_count == 1


async def test_the_timer_does_not_write_in_the_callers_transaction(mem: DataLayer) -> None:
    memory = mem.memory
    made = await memory.remember("a1", unit(1, 0), text="x")
    with contextlib.suppress(Boom):
        async with mem.transaction():
            await memory.recall("a1", unit(1, 0))
            await asyncio.sleep(FLUSH * 4)  # the timer fires in here
            raise Boom
    await memory.flush()
    assert (await memory.get(made.id)).access_count == 1


async def test_the_timer_does_not_join_another_tasks_transaction(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        memory={"access_flush": FLUSH},
        # One connection: the transaction that ended and the next one share it.
        postgresql={"pool_min_size": 1, "pool_max_size": 1},
    )
    async with DataLayer(config) as mem:
        await mem.memory.setup(dimension=DIM)
        await _timer_and_someone_else(mem)


async def _timer_and_someone_else(mem: DataLayer) -> None:
    memory = mem.memory
    made = await memory.remember("a1", unit(1, 0), text="x")
    async with mem.transaction():
        await memory.recall("a1", unit(1, 0))

    async def someone_else() -> None:
        with contextlib.suppress(Boom):
            async with mem.tenant("acme").transaction() as tx:
                await tx.conn.execute("SELECT 1")
                await asyncio.sleep(FLUSH * 4)  # the timer fires in here
                raise Boom

    await asyncio.create_task(someone_else())
    await memory.flush()
    assert (await memory.get(made.id)).access_count == 1
