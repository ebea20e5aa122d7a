"""Concurrent point reads share one query; a lone read and a transaction's reads go alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest

from agency_data import AgencyDataError, DataLayer, NotFound
from tests.batching_support import check_gathered, spy, yielding_psycopg

pytestmark = pytest.mark.usefixtures(yielding_psycopg.__name__)


async def test_concurrent_gets_share_one_query(dl: DataLayer) -> None:
    agents = [await dl.agents.create(name=f"a{i}", type="t") for i in range(64)]
    seen = spy(dl.agents._reads._calls)
    got = await asyncio.gather(*(dl.agents.get(a.id) for a in agents))
    assert [a.id for a in got] == [a.id for a in agents]
    assert got == agents
    # The first goes out alone at once; the others, made while it ran, share a query. (Now and
    # then the first query is answered before the second caller runs, which then goes alone.)
    check_gathered(seen, 64)
    assert len(seen["many"]) <= 2, seen


async def test_each_caller_gets_its_own_row_or_not_found(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="there", type="t")
    task = await dl.tasks.create("job")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: dl.agents.get(agent.id),
        lambda: dl.agents.get(uuid4()),
        lambda: dl.agents.get(agent.id),
        lambda: dl.tasks.get(task.id),
        lambda: dl.tasks.get(uuid4()),
        lambda: dl.tenant("other").agents.get(agent.id),  # another tenant: not found
    ]
    results = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
    assert results[0] == agent
    assert isinstance(results[1], NotFound)
    assert results[2] == agent
    assert results[3].id == task.id
    assert isinstance(results[4], NotFound)
    assert isinstance(results[5], NotFound)


async def test_a_lone_get_goes_alone(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    seen = spy(dl.agents._reads._calls)
    for _ in range(3):
        assert await dl.agents.get(agent.id) == agent
    assert seen == {"one": [1, 1, 1], "many": []}


async def test_reads_in_a_transaction_are_its_own(dl: DataLayer) -> None:
    seen = spy(dl.agents._reads._calls)
    async with dl.transaction():
        made = await dl.agents.create(name="uncommitted", type="t")
        # Another connection could not see this row yet; the transaction's own read does.
        found = await asyncio.gather(*(dl.agents.get(made.id) for _ in range(3)))
        assert found == [made] * 3
    assert seen == {"one": [], "many": []}


async def test_a_cancelled_reader_leaves_the_others_their_rows(dl: DataLayer) -> None:
    agents = [await dl.agents.create(name=f"a{i}", type="t") for i in range(10)]
    busy = asyncio.create_task(dl.agents.get(agents[0].id))  # in flight: the rest gather
    await asyncio.sleep(0)
    cut = asyncio.create_task(asyncio.wait_for(dl.agents.get(agents[1].id), timeout=0))
    rest = [asyncio.create_task(dl.agents.get(a.id)) for a in agents[2:]]
    with contextlib.suppress(TimeoutError):
        await cut
    assert [(await r).id for r in rest] == [a.id for a in agents[2:]]
    assert (await busy).id == agents[0].id


async def test_a_failed_shared_query_fails_each_caller_with_its_error(dl: DataLayer) -> None:
    agents = [await dl.agents.create(name=f"a{i}", type="t") for i in range(5)]
    reads = dl.agents._reads

    async def broken(keys: Sequence[UUID]) -> Any:
        await dl.fetch("SELECT 1/0")

    reads._calls._many = broken
    results = await asyncio.gather(*(dl.agents.get(a.id) for a in agents), return_exceptions=True)
    assert results[0] == agents[0], "the first went alone, by the single-row path"
    # Those that went alone (at most one more, see above) got their rows; the rest the error.
    errors = [r for r in results[1:] if not isinstance(r, type(agents[0]))]
    assert len(errors) >= 3, results
    assert all(isinstance(r, AgencyDataError) for r in errors), errors
    assert len({id(r) for r in errors}) == 1, "the one shared query's error"


@pytest.mark.parametrize("n", [1, 2, 700])
async def test_many_concurrent_gets_all_answered(dl: DataLayer, n: int) -> None:
    agents = [await dl.agents.create(name=f"a{i}", type="t") for i in range(min(n, 50))]
    ids = [agents[i % len(agents)].id for i in range(n)]
    got = await asyncio.gather(*(dl.agents.get(i) for i in ids))
    assert [a.id for a in got] == ids


async def test_readers_woken_together_read_again_together(dl: DataLayer) -> None:
    agents = [await dl.agents.create(name=f"a{i}", type="t") for i in range(20)]
    seen = spy(dl.agents._reads._calls)

    async def reader(agent_id: UUID) -> None:
        for _ in range(5):
            assert (await dl.agents.get(agent_id)).id == agent_id

    await asyncio.gather(*(reader(a.id) for a in agents))
    # 100 reads: the first alone, then the readers a query answered ask again as one group.
    # Without that, the first of each answered group would go alone, round after round.
    assert sum(seen["one"]) + sum(seen["many"]) == 100
    assert len(seen["one"]) <= 2, seen


async def test_concurrent_embedding_gets_share_one_query(dl: DataLayer) -> None:
    await dl.embeddings.create_collection("shared_reads", dimension=2)
    col = dl.embeddings.collection("shared_reads")
    ids = await col.store_many(
        [{"entity_type": "n", "entity_id": str(i), "vector": [1, i]} for i in range(20)]
    )
    seen = spy(col._reads._calls)
    wanted = [*ids, uuid4()]
    got = await asyncio.gather(
        *(dl.embeddings.collection("shared_reads").get(i) for i in wanted), return_exceptions=True
    )
    assert [g.entity_id for g in got[:-1]] == [str(i) for i in range(20)]
    assert isinstance(got[-1], NotFound)
    check_gathered(seen, 21)
