"""Tasks: bulk create, filters, search, the status machine, and claiming under concurrency."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agency_data import DataLayer, NotFound, Task, TaskStatus, ValidationError


async def test_create_and_defaults(dl: DataLayer) -> None:
    task = await dl.tasks.create(type="summarize", priority=5, data={"doc": 42})
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert task.agent_id is None
    assert task.result is None
    assert await dl.tasks.get(task.id) == task


async def test_create_many_keeps_order_and_is_atomic(dl: DataLayer) -> None:
    tasks = await dl.tasks.create_many([{"type": "embed", "data": {"i": i}} for i in range(1000)])
    assert [t.data["i"] for t in tasks] == list(range(1000))
    assert await dl.tasks.count() == 1000
    assert await dl.tasks.create_many([]) == []

    items: list[dict[str, Any]] = [{"type": "ok"}] * 5 + [{"type": "bad", "priority": 5000}]
    with pytest.raises(ValidationError, match=r"items\[5\]\.priority") as info:
        await dl.tasks.create_many(items)
    assert info.value.field == "items[5].priority"
    assert await dl.tasks.count() == 1000


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"type": ""}, "items[0].type"),
        ({"type": "t", "priority": -1}, "items[0].priority"),
        ({"type": "t", "priority": "high"}, "items[0].priority"),
        ({"type": "t", "data": [1, 2]}, "items[0].data"),
        ({"type": "t", "data": {"x": float("nan")}}, "items[0].data"),
        ({"type": "t", "agent_id": "not-a-uuid"}, "items[0].agent_id"),
        ({"type": "t", "colour": "red"}, "items[0].colour"),
    ],
)
async def test_bad_tasks_are_refused(dl: DataLayer, item: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await dl.tasks.create_many([item])
    assert info.value.field == field
    assert await dl.tasks.count() == 0


async def test_filters_and_pagination(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    before = datetime.now(UTC)
    await dl.tasks.create_many(
        [
            {"type": "embed", "priority": 1, "data": {"kind": "doc", "n": 1}},
            {"type": "embed", "priority": 9, "data": {"kind": "image"}, "agent_id": agent.id},
            {"type": "summarize", "priority": 5, "data": {"kind": "doc", "n": 2}},
        ]
    )
    after = datetime.now(UTC) + timedelta(seconds=1)

    async def types(**filters: Any) -> list[tuple[str, int]]:
        return [(t.type, t.priority) for t in (await dl.tasks.list(**filters)).items]

    assert await types(type="embed") == [("embed", 1), ("embed", 9)]
    assert await types(agent_id=agent.id) == [("embed", 9)]
    assert await types(priority_min=5) == [("embed", 9), ("summarize", 5)]
    assert await types(priority_min=2, priority_max=8) == [("summarize", 5)]
    assert await types(data_contains={"kind": "doc"}) == [("embed", 1), ("summarize", 5)]
    assert await types(data_contains={"n": 2}) == [("summarize", 5)]
    assert await types(created_after=after) == []
    assert len(await types(created_after=before, created_before=after)) == 3
    assert await types(status=["running", "failed"]) == []
    assert await dl.tasks.count(type=["embed", "summarize"], status="pending") == 3

    first = await dl.tasks.list(limit=2)
    rest = await dl.tasks.list(limit=2, cursor=first.next_cursor)
    assert len(first.items) == 2
    assert len(rest.items) == 1
    assert rest.next_cursor is None


async def test_full_text_search(dl: DataLayer) -> None:
    await dl.tasks.create_many(
        [
            {"type": "summarize", "data": {"doc": "Quarterly planning report for the board"}},
            {"type": "translate", "data": {"text": "Planning the team offsite", "lang": "fr"}},
            {"type": "embed", "data": {"doc": "Release notes"}},
        ]
    )
    hits = await dl.tasks.search("planning")
    assert {t.type for t in hits} == {"summarize", "translate"}
    assert [t.type for t in await dl.tasks.search("summarize")] == ["summarize"]
    assert [t.type for t in await dl.tasks.search("planning -offsite")] == ["summarize"]
    assert [t.type for t in await dl.tasks.search('"release notes"')] == ["embed"]
    assert await dl.tasks.search("planning", type="embed") == []
    assert await dl.tasks.search("") == []
    assert await dl.tasks.search("'); DROP TABLE tasks; --") == []
    assert await dl.tasks.count() == 3


async def test_status_machine(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="worker", type="t")
    task = await dl.tasks.create(type="t")
    with pytest.raises(ValidationError, match="cannot go from pending to completed") as info:
        await dl.tasks.complete(task.id, result={"early": True})
    assert info.value.field == "status"

    (running,) = await dl.tasks.claim(agent.id)
    assert running.status is TaskStatus.RUNNING
    assert running.attempts == 1
    assert running.started_at is not None
    assert running.agent_id == agent.id

    failed = await dl.tasks.fail(task.id, "timed out", retry=False)
    assert failed.status is TaskStatus.FAILED
    assert failed.error == "timed out"
    assert failed.finished_at is not None
    with pytest.raises(ValidationError, match="cannot go from failed to completed"):
        await dl.tasks.complete(task.id)

    retried = await dl.tasks.retry(task.id)
    assert retried.status is TaskStatus.PENDING
    assert retried.finished_at is None
    (again,) = await dl.tasks.claim(agent.id)
    assert again.attempts == 2

    done = await dl.tasks.complete(task.id, result={"summary": "ok"})
    assert done.status is TaskStatus.COMPLETED
    assert done.result == {"summary": "ok"}
    assert done.error is None
    for move in (dl.tasks.cancel, dl.tasks.retry):
        with pytest.raises(ValidationError):
            await move(task.id)

    pending = await dl.tasks.create(type="t")
    assert (await dl.tasks.cancel(pending.id)).status is TaskStatus.CANCELLED
    with pytest.raises(NotFound):
        await dl.tasks.complete("00000000-0000-0000-0000-000000000000")


async def test_the_database_enforces_transitions_for_raw_sql_too(dl: DataLayer) -> None:
    task = await dl.tasks.create(type="t")
    with pytest.raises(ValidationError, match="cannot go from pending to failed"):
        await dl.execute("UPDATE tasks SET status = 'failed' WHERE id = %s", [task.id])


async def test_results_and_errors_are_checked(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="w", type="t")
    task = await dl.tasks.create(type="t")
    await dl.tasks.claim(agent.id)
    with pytest.raises(ValidationError):
        await dl.tasks.complete(task.id, result={"bad": float("inf")})
    with pytest.raises(ValidationError):
        await dl.tasks.fail(task.id, "")
    with pytest.raises(ValidationError):
        await dl.tasks.fail(task.id, "x" * 20_000)
    assert (await dl.tasks.get(task.id)).status is TaskStatus.RUNNING
    # Any JSON value is a result, not only objects.
    assert (await dl.tasks.complete(task.id, result=[1, "two", None])).result == [1, "two", None]


async def test_claim_order_and_types(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="w", type="t")
    await dl.tasks.create_many(
        [
            {"type": "a", "priority": 1, "data": {"n": 1}},
            {"type": "b", "priority": 5, "data": {"n": 2}},
            {"type": "a", "priority": 5, "data": {"n": 3}},
            {"type": "a", "priority": 9, "data": {"n": 4}},
        ]
    )
    claimed = await dl.tasks.claim(agent.id, types=["a"], n=2)
    assert [t.data["n"] for t in claimed] == [4, 3]
    rest = await dl.tasks.claim(agent.id, n=10)
    assert [t.data["n"] for t in rest] == [2, 1]
    assert await dl.tasks.claim(agent.id) == []
    with pytest.raises(ValidationError):
        await dl.tasks.claim(agent.id, n=0)
    await dl.tasks.create(type="x")
    with pytest.raises(NotFound):
        await dl.tasks.claim("00000000-0000-0000-0000-000000000000")


async def test_concurrent_workers_claim_each_task_exactly_once(dl: DataLayer) -> None:
    await dl.tasks.create_many([{"type": "job", "data": {"i": i}} for i in range(1000)])
    agents = [await dl.agents.create(name=f"w{i}", type="worker") for i in range(20)]
    claimed: dict[int, list[Task]] = {i: [] for i in range(20)}

    async def worker(i: int) -> None:
        while batch := await dl.tasks.claim(agents[i].id, n=7):
            claimed[i].extend(batch)
            for task in batch:
                await dl.tasks.complete(task.id, result={"by": i})

    await asyncio.gather(*(worker(i) for i in range(20)))
    ids = [t.id for batch in claimed.values() for t in batch]
    assert len(ids) == 1000
    assert len(set(ids)) == 1000
    assert sum(1 for batch in claimed.values() if batch) > 1, "the work was shared"
    assert await dl.tasks.count(status="completed") == 1000
    assert await dl.tasks.count(status=["pending", "running"]) == 0


async def test_claim_waits_for_new_work_without_polling(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="w", type="t")

    async def producer() -> None:
        await asyncio.sleep(0.3)
        await dl.tasks.create(type="late", data={"x": 1})

    started = time.monotonic()
    claimed, _ = await asyncio.gather(dl.tasks.claim(agent.id, wait=10), producer())
    waited = time.monotonic() - started
    assert [t.type for t in claimed] == ["late"]
    assert waited < 5, "woken by the notification, long before the wait ran out"


async def test_claim_wait_times_out_empty(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="w", type="t")
    # Work for another tenant does not wake this one's workers.
    other = dl.tenant("other")
    started = time.monotonic()
    result, _ = await asyncio.gather(
        dl.tasks.claim(agent.id, wait=0.5), other.tasks.create(type="not-yours")
    )
    assert result == []
    assert time.monotonic() - started >= 0.5


async def test_claim_wait_for_a_type_ignores_other_types(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="w", type="t")

    async def producer() -> None:
        await asyncio.sleep(0.1)
        await dl.tasks.create(type="other")
        await asyncio.sleep(0.2)
        await dl.tasks.create(type="wanted")

    claimed, _ = await asyncio.gather(
        dl.tasks.claim(agent.id, types=["wanted"], wait=10), producer()
    )
    assert [t.type for t in claimed] == ["wanted"]


async def test_delete(dl: DataLayer) -> None:
    task = await dl.tasks.create(type="t")
    await dl.tasks.delete(task.id)
    with pytest.raises(NotFound):
        await dl.tasks.delete(task.id)
