"""Agents: CRUD, partial and optimistic updates, filters, keyset pagination, bad input."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from agency_data import Agent, AgentStatus, Conflict, DataLayer, NotFound, ValidationError


async def test_create_get_update_delete(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="planner", type="coordinator", capabilities={"plan": True})
    assert agent.status is AgentStatus.ACTIVE
    assert agent.version == 1
    assert await dl.agents.get(agent.id) == agent
    assert await dl.agents.get(str(agent.id)) == agent

    updated = await dl.agents.update(agent.id, status="maintenance")
    assert updated.status is AgentStatus.MAINTENANCE
    assert updated.name == "planner"  # untouched fields stay
    assert updated.capabilities == {"plan": True}
    assert updated.version == 2
    assert updated.updated_at > agent.updated_at

    await dl.agents.delete(agent.id)
    with pytest.raises(NotFound):
        await dl.agents.get(agent.id)
    with pytest.raises(NotFound):
        await dl.agents.delete(agent.id)
    with pytest.raises(NotFound):
        await dl.agents.update(agent.id, name="ghost")


async def test_get_many(dl: DataLayer) -> None:
    a = await dl.agents.create(name="a", type="t")
    b = await dl.agents.create(name="b", type="t")
    found = await dl.agents.get_many([a.id, b.id, uuid.uuid4()])
    assert {x.id for x in found} == {a.id, b.id}
    assert await dl.agents.get_many([]) == []


async def test_optimistic_concurrency(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="shared", type="t")
    first = await dl.agents.update(agent.id, name="first", expected_version=agent.version)
    with pytest.raises(Conflict, match="changed by someone else") as info:
        await dl.agents.update(agent.id, name="second", expected_version=agent.version)
    assert info.value.field == "version"
    with pytest.raises(Conflict):
        await dl.agents.update(agent.id, name="third", expected_updated_at=agent.updated_at)
    assert (await dl.agents.get(agent.id)).name == "first"
    again = await dl.agents.update(agent.id, name="fourth", expected_updated_at=first.updated_at)
    assert again.name == "fourth"


async def test_concurrent_optimistic_updates_one_wins(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="race", type="t")

    async def attempt(i: int) -> str:
        try:
            await dl.agents.update(agent.id, name=f"w{i}", expected_version=agent.version)
            return "won"
        except Conflict:
            return "lost"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert outcomes.count("won") == 1
    assert (await dl.agents.get(agent.id)).version == 2


async def test_list_filters(dl: DataLayer) -> None:
    await dl.agents.create(
        name="Planner One", type="coordinator", capabilities={"plan": True, "lang": "en"}
    )
    await dl.agents.create(name="Coder", type="worker", capabilities={"code": True, "lang": "py"})
    await dl.agents.create(
        name="Planner Two", type="coordinator", capabilities={"plan": False}, status="inactive"
    )

    def names(page: Any) -> set[str]:
        return {a.name for a in page.items}

    assert names(await dl.agents.list(type="coordinator")) == {"Planner One", "Planner Two"}
    assert names(await dl.agents.list(type=["worker", "none"])) == {"Coder"}
    assert names(await dl.agents.list(status="inactive")) == {"Planner Two"}
    assert names(await dl.agents.list(status=[AgentStatus.ACTIVE])) == {"Planner One", "Coder"}
    assert names(await dl.agents.list(capabilities={"plan": True})) == {"Planner One"}
    assert names(await dl.agents.list(has_capabilities=["plan"])) == {"Planner One", "Planner Two"}
    assert names(await dl.agents.list(has_capabilities=["plan", "lang"])) == {"Planner One"}
    assert names(await dl.agents.list(name_contains="planner")) == {"Planner One", "Planner Two"}
    assert names(await dl.agents.list(type="coordinator", status="active")) == {"Planner One"}
    assert names(await dl.agents.list(type="nobody")) == set()
    assert await dl.agents.count() == 3
    assert await dl.agents.count(type="coordinator", capabilities={"plan": False}) == 1


async def test_name_search_treats_wildcards_as_text(dl: DataLayer) -> None:
    await dl.agents.create(name="100% sure", type="t")
    await dl.agents.create(name="1000 sure", type="t")
    await dl.agents.create(name="under_score", type="t")
    await dl.agents.create(name="underXscore", type="t")
    assert {a.name for a in (await dl.agents.list(name_contains="0%")).items} == {"100% sure"}
    assert {a.name for a in (await dl.agents.list(name_contains="r_s")).items} == {"under_score"}
    assert (await dl.agents.list(name_contains="%")).items[0].name == "100% sure"


async def test_keyset_pagination_is_complete_and_stable(dl: DataLayer) -> None:
    created = [await dl.agents.create(name=f"a{i:02}", type="t") for i in range(25)]
    seen: list[Agent] = []
    cursor = None
    pages = 0
    while True:
        page = await dl.agents.list(limit=10, cursor=cursor)
        seen.extend(page.items)
        pages += 1
        if pages == 1:
            # Rows inserted while paging land after the cursor, never shift earlier pages.
            await dl.agents.create(name="late", type="t")
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [a.id for a in seen[:25]] == [a.id for a in created]
    assert [a.name for a in seen[25:]] == ["late"]
    assert len({a.id for a in seen}) == len(seen)
    assert pages == 3


async def test_empty_and_exact_pages(dl: DataLayer) -> None:
    empty = await dl.agents.list()
    assert empty.items == []
    assert empty.next_cursor is None
    for i in range(5):
        await dl.agents.create(name=f"a{i}", type="t")
    exact = await dl.agents.list(limit=5)
    assert len(exact.items) == 5
    assert exact.next_cursor is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "type": "t"}, "name"),
        ({"name": "  ", "type": "t"}, "name"),
        ({"name": "x" * 256, "type": "t"}, "name"),
        ({"name": 42, "type": "t"}, "name"),
        ({"name": "a", "type": None}, "type"),
        ({"name": "a", "type": "t", "status": "sleeping"}, "status"),
        ({"name": "a", "type": "t", "capabilities": ["not", "a", "dict"]}, "capabilities"),
        ({"name": "a", "type": "t", "capabilities": {"x": math.nan}}, "capabilities"),
        ({"name": "a", "type": "t", "capabilities": {"x": math.inf}}, "capabilities"),
        ({"name": "a", "type": "t", "capabilities": {"x": object()}}, "capabilities"),
        ({"name": "a", "type": "t", "capabilities": {"x": "y" * (1 << 20)}}, "capabilities"),
        ({"name": "a", "type": "t", "capabilities": {"x": "nul\x00"}}, "capabilities"),
        ({"name": "a", "type": "t", "extra": 1}, None),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(
    dl: DataLayer, kwargs: dict[str, Any], field: str | None
) -> None:
    with pytest.raises((ValidationError, TypeError)) as info:
        await dl.agents.create(**kwargs)
    if field is not None:
        assert isinstance(info.value, ValidationError)
        assert info.value.field == field
    assert await dl.agents.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "sleeping"}, "status"),
        ({"type": 7}, "type"),
        ({"capabilities": "plan"}, "capabilities"),
        ({"name_contains": 5}, "name_contains"),
    ],
)
async def test_bad_filters(dl: DataLayer, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await dl.agents.list(**kwargs)
    assert info.value.field == field


async def test_bad_updates(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    with pytest.raises(ValidationError, match="at least one field"):
        await dl.agents.update(agent.id)
    with pytest.raises(ValidationError):
        await dl.agents.update(agent.id, name=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await dl.agents.update(agent.id, status="gone")
    with pytest.raises(ValidationError):
        await dl.agents.update("not-a-uuid", name="x")
    assert await dl.agents.get(agent.id) == agent


async def test_hostile_strings_are_stored_as_text(dl: DataLayer) -> None:
    hostile = "'; DROP TABLE agents; --"
    agent = await dl.agents.create(name=hostile, type=hostile, capabilities={hostile: hostile})
    assert (await dl.agents.get(agent.id)).capabilities == {hostile: hostile}
    assert (await dl.agents.list(name_contains=hostile)).items == [agent]
    assert (await dl.agents.list(capabilities={hostile: hostile})).items == [agent]
    assert await dl.agents.count(has_capabilities=[hostile]) == 1
