"""The query API and transactions: atomicity, savepoints, on-commit hooks, conflict retries."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from agency_data import (
    Agent,
    DataLayer,
    QueryError,
    QueryTimeout,
    SerializationFailure,
    Transaction,
    ValidationError,
)
from agency_data.sql import SQL, equals_all, identifier, identifiers
from tests.conftest import other_connection


class NameOnly(BaseModel):
    name: str


async def test_execute_and_fetch_forms(dl: DataLayer) -> None:
    inserted = await dl.execute(
        "INSERT INTO agents (name, type) VALUES (%s, %s), (%s, %s)", ["a", "t", "b", "t"]
    )
    assert inserted == 2
    rows = await dl.fetch("SELECT name FROM agents ORDER BY name")
    assert rows == [{"name": "a"}, {"name": "b"}]
    models = await dl.fetch("SELECT name FROM agents ORDER BY name", model=NameOnly)
    assert [m.name for m in models] == ["a", "b"]
    one = await dl.fetch_one(
        "SELECT * FROM agents WHERE name = %(name)s", {"name": "b"}, model=Agent
    )
    assert one is not None
    assert one.name == "b"
    assert await dl.fetch_one("SELECT 1 WHERE false") is None
    assert await dl.fetch_value("SELECT count(*) FROM agents") == 2
    assert await dl.fetch_value("SELECT 1 WHERE false") is None


async def test_parameters_are_never_sql(dl: DataLayer) -> None:
    hostile = "x'); DROP TABLE agents; --"
    await dl.execute("INSERT INTO agents (name, type) VALUES (%s, 't')", [hostile])
    assert await dl.fetch_value("SELECT name FROM agents") == hostile


async def test_per_call_timeout(dl: DataLayer) -> None:
    with pytest.raises(QueryTimeout):
        await dl.fetch("SELECT pg_sleep(2)", timeout=0.05)
    # The pooled connection is healthy afterwards, and the default limit is back.
    assert await dl.fetch_value("SELECT 1") == 1
    assert await dl.fetch_value("SHOW statement_timeout") == "30s"
    assert await dl.fetch_value("SELECT pg_sleep(0.01)::text", timeout=5) == ""
    with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
        await dl.execute("SELECT 1", timeout=0)


async def test_timeout_inside_a_transaction_is_for_one_statement(dl: DataLayer) -> None:
    async with dl.transaction():
        assert await dl.fetch_value("SELECT 1", timeout=1) == 1
        assert await dl.fetch_value("SHOW statement_timeout") == "30s"


async def test_commit_makes_writes_visible(dl: DataLayer) -> None:
    async with dl.transaction():
        await dl.agents.create(name="inside", type="t")
        # Another connection does not see it before the commit.
        other = await asyncio.create_task(_count_elsewhere(dl))
        assert other == 0
    assert await _count_elsewhere(dl) == 1


async def _count_elsewhere(dl: DataLayer) -> int:
    async with other_connection(dl) as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM agents")).fetchone()
    assert row is not None
    return int(row["n"])


async def test_failed_transaction_leaves_nothing_and_runs_no_hook(dl: DataLayer) -> None:
    ran: list[str] = []
    with pytest.raises(ValidationError):  # noqa: PT012 - the whole block is the unit under test
        async with dl.transaction() as tx:
            tx.on_commit(lambda: ran.append("hook"))
            await dl.agents.create(name="first", type="t")
            await dl.tasks.create(type="t", data={"ok": 1})
            await dl.agents.create(name="   ", type="t")  # refused: blank name
    assert ran == []
    assert await dl.agents.count() == 0
    assert await dl.tasks.count() == 0


async def test_hooks_run_after_commit_in_order(dl: DataLayer) -> None:
    seen: list[Any] = []

    async def async_hook() -> None:
        # The write is committed by the time the hook runs: another connection sees it.
        seen.append(("async", await _count_elsewhere(dl)))

    async with dl.transaction() as tx:
        tx.on_commit(lambda: seen.append("sync"))
        tx.on_commit(async_hook)
        await dl.agents.create(name="a", type="t")
        assert seen == []
    assert seen == ["sync", ("async", 1)]


async def test_failing_hook_does_not_undo_the_commit(
    dl: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("hook broke")

    async with dl.transaction() as tx:
        tx.on_commit(broken)
        await dl.agents.create(name="kept", type="t")
    assert await dl.agents.count() == 1
    assert "on-commit hook failed" in caplog.text


async def test_nested_blocks_are_savepoints(dl: DataLayer) -> None:
    ran: list[str] = []
    async with dl.transaction() as outer:
        outer.on_commit(lambda: ran.append("outer"))
        await dl.agents.create(name="kept-outer", type="t")
        with pytest.raises(ValidationError):  # noqa: PT012
            async with dl.transaction() as inner:
                assert inner.nested
                inner.on_commit(lambda: ran.append("rolled-back inner"))
                await dl.agents.create(name="lost-inner", type="t")
                await dl.agents.create(name="", type="t")
        async with dl.transaction() as kept:
            kept.on_commit(lambda: ran.append("kept inner"))
            await dl.agents.create(name="kept-inner", type="t")
    names = {a.name for a in (await dl.agents.list()).items}
    assert names == {"kept-outer", "kept-inner"}
    assert ran == ["outer", "kept inner"]


async def test_execute_transaction_runs_all_or_nothing(dl: DataLayer) -> None:
    async def make_agent(tx: Transaction) -> str:
        agent = await dl.agents.create(name="via-callable", type="t")
        return agent.name

    results = await dl.execute_transaction(
        [
            ("INSERT INTO agents (name, type) VALUES (%s, 't')", ["one"]),
            ("SELECT name FROM agents WHERE name = %s", ["one"]),
            make_agent,
        ]
    )
    assert results == [1, [{"name": "one"}], "via-callable"]

    with pytest.raises(ValidationError):
        await dl.execute_transaction(
            [
                ("INSERT INTO agents (name, type) VALUES ('two', 't')", None),
                ("INSERT INTO tasks (type, priority) VALUES ('t', 5000)", None),
            ]
        )
    assert await dl.agents.count(name_contains="two") == 0


async def test_serialization_conflicts_are_retried(dl: DataLayer) -> None:
    await dl.execute(
        "INSERT INTO agents (name, type, capabilities) VALUES ('counter', 't', '{\"n\": 0}')"
    )
    attempts = 0
    both_read = asyncio.Barrier(2)

    async def increment(tx: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        n = await dl.fetch_value(
            "SELECT (capabilities->>'n')::int FROM agents WHERE name = 'counter'"
        )
        if attempts <= 2:
            # The first attempt of each worker reads before either writes: one must lose.
            await both_read.wait()
        await dl.execute(
            "UPDATE agents SET capabilities = jsonb_build_object('n', %s::int) WHERE name = 'counter'",
            [n + 1],
        )

    await asyncio.gather(
        dl.run_in_transaction(increment, isolation="serializable"),
        dl.run_in_transaction(increment, isolation="serializable"),
    )
    assert (
        await dl.fetch_value("SELECT capabilities->>'n' FROM agents WHERE name = 'counter'") == "2"
    )
    assert attempts == 3  # one conflict, retried once


async def test_conflicts_past_the_bound_raise(dl: DataLayer) -> None:
    await dl.execute("INSERT INTO agents (name, type) VALUES ('contended', 't')")

    async def always_conflicts(tx: Transaction) -> None:
        await dl.fetch_value("SELECT count(*) FROM agents")
        # Another connection commits a conflicting write in between: this one must fail.
        async with other_connection(dl) as other:
            await other.execute("UPDATE agents SET version = version + 1 WHERE name = 'contended'")
        await dl.execute("UPDATE agents SET version = version + 1 WHERE name = 'contended'")

    with pytest.raises(SerializationFailure, match="after 3 attempts"):
        await dl.run_in_transaction(always_conflicts, isolation="serializable", retries=2)


async def test_deadlocks_are_retried(dl: DataLayer) -> None:
    await dl.execute("INSERT INTO agents (name, type) VALUES ('a', 't'), ('b', 't')")
    gate = asyncio.Barrier(2)
    attempts = 0

    def worker(first: str, second: str) -> Any:
        async def body(tx: Transaction) -> None:
            nonlocal attempts
            attempts += 1
            await dl.execute("UPDATE agents SET version = version + 1 WHERE name = %s", [first])
            if attempts <= 2:
                await gate.wait()
            await dl.execute("UPDATE agents SET version = version + 1 WHERE name = %s", [second])

        return body

    await asyncio.gather(
        dl.run_in_transaction(worker("a", "b")), dl.run_in_transaction(worker("b", "a"))
    )
    assert await dl.fetch_value("SELECT sum(version) FROM agents") == 6
    assert attempts == 3


async def test_readonly_transaction_refuses_writes(dl: DataLayer) -> None:
    with pytest.raises(QueryError, match="read-only"):
        async with dl.transaction(readonly=True):
            await dl.agents.create(name="nope", type="t")
    # The pooled connection is back to read-write.
    await dl.agents.create(name="yes", type="t")


async def test_isolation_level_is_applied_and_reset(dl: DataLayer) -> None:
    async with dl.transaction(isolation="repeatable_read"):
        assert await dl.fetch_value("SHOW transaction_isolation") == "repeatable read"
    async with dl.transaction():
        assert await dl.fetch_value("SHOW transaction_isolation") == "read committed"


async def test_raw_driver_errors_never_escape(dl: DataLayer) -> None:
    with pytest.raises(QueryError) as info:
        await dl.execute("SELECT * FROM no_such_table")
    assert info.value.sqlstate == "42P01"
    assert isinstance(info.value.__cause__, psycopg.Error)


async def test_sql_composition_helpers(dl: DataLayer) -> None:
    await dl.agents.create(name="a", type="worker")
    where, params = equals_all({"type": "worker", "status": "active"})
    query = SQL("SELECT {} FROM {} WHERE {}").format(
        identifiers(["name", "type"]), identifier("public", "agents"), where
    )
    assert await dl.fetch(query, params) == [{"name": "a", "type": "worker"}]
    hostile = identifier('name"; DROP TABLE agents; --')
    with pytest.raises(QueryError, match="does not exist"):
        await dl.fetch(SQL("SELECT {} FROM agents").format(hostile))
    assert await dl.agents.count() == 1
    with pytest.raises(ValidationError):
        identifier("")
    with pytest.raises(ValidationError):
        identifiers([])
