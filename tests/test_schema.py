"""The core schema keeps data valid, and driver errors arrive as typed agency-data errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agency_data import (
    Agent,
    Conflict,
    DataLayer,
    NotFound,
    PermissionDenied,
    QueryError,
    QueryTimeout,
    Task,
    ValidationError,
)
from agency_data.postgres import translate_errors
from agency_data.vectors.compat import vector_to_list


async def run(dl: DataLayer, query: str, params: Any = None) -> list[dict[str, Any]]:
    # Through the layer, so the statement runs as the default tenant (row-level security).
    return await dl.fetch(query, params)  # type: ignore[arg-type]


async def new_agent(dl: DataLayer, **values: Any) -> dict[str, Any]:
    columns = {"name": "planner", "type": "coordinator", **values}
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    rows = await run(
        dl, f"INSERT INTO agents ({names}) VALUES ({marks}) RETURNING *", list(columns.values())
    )
    return rows[0]


async def test_defaults_and_models(dl: DataLayer) -> None:
    agent = Agent.model_validate(await new_agent(dl))
    assert agent.status == "active"
    assert agent.tenant_id == "default"
    assert agent.capabilities == {}
    rows = await run(
        dl, "INSERT INTO tasks (type, agent_id) VALUES ('summarize', %s) RETURNING *", [agent.id]
    )
    task = Task.model_validate(rows[0])
    assert task.status == "pending"
    assert task.priority == 0
    assert task.agent_id == agent.id
    assert task.attempts == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"name": "   "}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"type": ""}, "type"),
        ({"status": "sleeping"}, "status"),
        ({"capabilities": "[1, 2]"}, "capabilities"),
    ],
)
async def test_agent_constraints(dl: DataLayer, values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await new_agent(dl, **values)
    assert info.value.field == field
    assert await run(dl, "SELECT count(*) AS n FROM agents") == [{"n": 0}]


async def test_a_row_of_another_tenant_is_refused(dl: DataLayer) -> None:
    # Row-level security checks the tenant before the column's own constraint.
    for tenant in ("acme", "acme'; DROP TABLE agents; --"):
        with pytest.raises(PermissionDenied):
            await new_agent(dl, tenant_id=tenant)
    assert await run(dl, "SELECT count(*) AS n FROM agents") == [{"n": 0}]


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("priority", 1001, "priority"),
        ("priority", -1, "priority"),
        ("status", "done", "status"),
        ("data", '"text"', "data"),
        ("attempts", -1, "attempts"),
    ],
)
async def test_task_constraints(dl: DataLayer, column: str, value: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        await run(dl, f"INSERT INTO tasks (type, {column}) VALUES ('t', %s)", [value])
    assert info.value.field == field


async def test_task_reference_to_missing_agent(dl: DataLayer) -> None:
    with pytest.raises(NotFound, match="referenced record does not exist"):
        await run(
            dl,
            "INSERT INTO tasks (type, agent_id) VALUES ('t', %s)",
            ["00000000-0000-0000-0000-000000000000"],
        )


async def test_deleting_an_agent_keeps_its_tasks(dl: DataLayer) -> None:
    agent = await new_agent(dl)
    await run(dl, "INSERT INTO tasks (type, agent_id) VALUES ('t', %s)", [agent["id"]])
    await run(dl, "DELETE FROM agents WHERE id = %s", [agent["id"]])
    assert await run(dl, "SELECT agent_id FROM tasks") == [{"agent_id": None}]


async def test_updated_at_is_maintained_by_the_database(dl: DataLayer) -> None:
    agent = await new_agent(dl)
    await asyncio.sleep(0.01)
    rows = await run(
        dl, "UPDATE agents SET status = 'maintenance' WHERE id = %s RETURNING *", [agent["id"]]
    )
    assert rows[0]["updated_at"] > agent["updated_at"]
    assert rows[0]["created_at"] == agent["created_at"]


async def test_pgvector_types_are_registered_on_pooled_connections(dl: DataLayer) -> None:
    rows = await run(dl, "SELECT %s::vector AS v", ["[0.5, -1, 2]"])
    assert vector_to_list(rows[0]["v"]) == [0.5, -1.0, 2.0]


async def test_statement_timeout_is_typed_and_leaves_the_connection_usable(dl: DataLayer) -> None:
    async with dl.pool.connection() as conn:
        await conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(QueryTimeout), translate_errors():
            await conn.execute("SELECT pg_sleep(1)")
        cursor = await conn.execute("SELECT 1 AS one")
        assert await cursor.fetchone() == {"one": 1}


async def test_other_errors_carry_sqlstate(dl: DataLayer) -> None:
    with pytest.raises(QueryError) as info:
        await run(dl, "SELEC 1")
    assert info.value.sqlstate == "42601"
    assert isinstance(info.value.__cause__, Exception)  # the driver's error stays chained


async def test_unique_violation_is_a_conflict_naming_the_constraint(dl: DataLayer) -> None:
    await dl.admin.execute("CREATE UNIQUE INDEX agents_unique_name ON agents (tenant_id, name)")
    await dl.agents.create(name="solo", type="t")
    with pytest.raises(Conflict) as info:
        await dl.agents.create(name="solo", type="t")
    assert info.value.field == "agents_unique_name"
    assert "agents_unique_name" in str(info.value)  # row-level security hides the key values
    assert await dl.agents.count() == 1
