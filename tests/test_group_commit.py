"""Concurrent single-row creates are committed together: each caller is answered after the
commit, a bad row fails only its own caller, and a transaction's creates stay its own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from uuid import uuid4

import pytest

from agency_data import BackendUnavailable, DataLayer, NotFound, ValidationError
from tests.batching_support import check_gathered, spy, yielding_psycopg
from tests.conftest import DatabaseDsn

pytestmark = pytest.mark.usefixtures(yielding_psycopg.__name__)


async def committed(database: DatabaseDsn, sql: str) -> int:
    """A count read by a connection of its own: only committed rows are seen."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(database.owner) as conn:
        row = await (await conn.execute(sql)).fetchone()
    assert row is not None
    return int(row[0])


async def test_concurrent_task_creates_share_one_commit(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    seen = spy(dl.tasks._creates._calls)
    made = await asyncio.gather(*(dl.tasks.create("job", {"n": i}, priority=i) for i in range(64)))
    assert [t.data for t in made] == [{"n": i} for i in range(64)]
    assert [t.priority for t in made] == list(range(64))
    assert len({t.id for t in made}) == 64
    # The first went alone at once; the other 63, made while it ran, were written together.
    check_gathered(seen, 64)
    assert len(seen["many"]) <= 2, seen
    # Every caller was answered after its row was committed.
    assert await committed(database, "SELECT count(*) FROM tasks") == 64
    assert [t.id for t in await dl.tasks.get_many([t.id for t in made])] != []


async def test_concurrent_agent_creates_share_one_commit(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    seen = spy(dl.agents._creates._calls)
    made = await asyncio.gather(
        *(dl.agents.create(f"a{i}", "worker", {"i": i}, status="inactive") for i in range(40))
    )
    assert [a.name for a in made] == [f"a{i}" for i in range(40)]
    assert [a.capabilities for a in made] == [{"i": i} for i in range(40)]
    assert {a.status.value for a in made} == {"inactive"}
    check_gathered(seen, 40)
    assert await committed(database, "SELECT count(*) FROM agents") == 40
    for agent in made:
        assert await dl.agents.get(agent.id) == agent


async def test_a_lone_create_goes_alone(dl: DataLayer) -> None:
    seen = spy(dl.tasks._creates._calls)
    for _ in range(3):
        await dl.tasks.create("job")
    assert seen == {"one": [1, 1, 1], "many": []}


async def test_a_bad_row_fails_only_its_own_caller(dl: DataLayer, database: DatabaseDsn) -> None:
    agent = await dl.agents.create("real", "worker")
    seen = spy(dl.tasks._creates._calls)
    first = asyncio.create_task(dl.tasks.create("job", agent_id=agent.id))
    await asyncio.sleep(0)
    # One of the gathered rows names an agent that does not exist: the foreign key refuses it.
    results = await asyncio.gather(
        dl.tasks.create("job", {"i": 1}, agent_id=agent.id),
        dl.tasks.create("job", {"i": 2}, agent_id=uuid4()),
        dl.tasks.create("job", {"i": 3}),
        return_exceptions=True,
    )
    assert (await first).agent_id == agent.id
    assert results[0].data == {"i": 1}
    assert isinstance(results[1], NotFound), results[1]
    assert results[2].data == {"i": 3}
    # The group was refused as a whole, then written row by row: the good rows are in.
    assert sum(seen["many"]) >= 2, seen
    assert await committed(database, "SELECT count(*) FROM tasks") == 3


async def test_a_lost_connection_fails_the_group_without_writing_twice(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    calls = dl.tasks._creates._calls
    real_many = calls._many
    written: list[int] = []

    async def many_then_lost(items: list[Any]) -> Any:
        # The rows are written, then the connection is lost before the answer arrives.
        await real_many(items)
        written.append(len(items))
        raise BackendUnavailable("PostgreSQL connection lost", backend="postgresql")

    calls._many = many_then_lost
    first = asyncio.create_task(dl.tasks.create("job"))
    await asyncio.sleep(0)
    results = await asyncio.gather(
        *(dl.tasks.create("job") for _ in range(5)), return_exceptions=True
    )
    await first
    assert all(isinstance(r, BackendUnavailable) for r in results), results
    assert written == [5]
    # Not retried one by one: that could have written each row twice.
    assert await committed(database, "SELECT count(*) FROM tasks") == 6


async def test_creates_in_a_transaction_are_its_own(dl: DataLayer, database: DatabaseDsn) -> None:
    seen = spy(dl.tasks._creates._calls)
    agents_seen = spy(dl.agents._creates._calls)
    with contextlib.suppress(RuntimeError):
        async with dl.transaction():
            await asyncio.gather(*(dl.tasks.create("job") for _ in range(5)))
            await asyncio.gather(*(dl.agents.create(f"a{i}", "t") for i in range(3)))
            raise RuntimeError("roll back")
    assert seen == {"one": [], "many": []}
    assert agents_seen == {"one": [], "many": []}
    assert await committed(database, "SELECT count(*) FROM tasks") == 0
    assert await committed(database, "SELECT count(*) FROM agents") == 0


async def test_a_cancelled_creator_leaves_the_others_their_rows(dl: DataLayer) -> None:
    first = asyncio.create_task(dl.tasks.create("job", {"i": 0}))
    await asyncio.sleep(0)
    cut = asyncio.create_task(asyncio.wait_for(dl.tasks.create("job", {"i": 1}), timeout=0))
    rest = [asyncio.create_task(dl.tasks.create("job", {"i": i})) for i in range(2, 8)]
    with contextlib.suppress(TimeoutError):
        await cut
    assert [(await r).data for r in rest] == [{"i": i} for i in range(2, 8)]
    assert (await first).data == {"i": 0}


@pytest.mark.parametrize("n", [2, 700])
async def test_many_concurrent_creates_all_answered(dl: DataLayer, n: int) -> None:
    made = await asyncio.gather(*(dl.tasks.create("job", {"i": i}) for i in range(n)))
    assert [t.data for t in made] == [{"i": i} for i in range(n)]
    assert await dl.tasks.count() == n


async def test_concurrent_stores_share_one_commit(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("grouped", dimension=3)
    seen = spy(dl.embeddings.collection("grouped")._stores._calls)
    items = [
        {"entity_type": "note", "entity_id": str(i), "vector": [1.0, float(i), 0.5]}
        for i in range(30)
    ]
    # Each caller asks for the collection on its own: they still meet in one.
    ids = await asyncio.gather(*(dl.embeddings.collection("grouped").store(x) for x in items))
    check_gathered(seen, 30)
    got = await asyncio.gather(*(dl.embeddings.collection("grouped").get(i) for i in ids))
    assert [g.entity_id for g in got] == [str(i) for i in range(30)]


async def test_a_bad_store_fails_only_its_own_caller(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("picky", dimension=3)
    col = dl.embeddings.collection("picky")
    first = asyncio.create_task(
        col.store({"entity_type": "n", "entity_id": "0", "vector": [1, 0, 0]})
    )
    await asyncio.sleep(0)
    results = await asyncio.gather(
        col.store({"entity_type": "n", "entity_id": "1", "vector": [0, 1, 0]}),
        col.store({"entity_type": "n", "entity_id": "2", "vector": [0, 1]}),  # wrong dimension
        col.store({"entity_type": "n", "entity_id": "3", "vector": [0, 0, 1]}),
        return_exceptions=True,
    )
    await first
    assert isinstance(results[1], ValidationError), results[1]
    assert results[1].field == "item.vector"
    assert await col.count() == 3
    assert {(await col.get(i)).entity_id for i in (results[0], results[2])} == {"1", "3"}
