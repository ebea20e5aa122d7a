"""The audit trail's edges a review found: forgery by the application role, deadlocks and hangs
with concurrent audited transactions, actors named mid-transaction, changes no trigger saw."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, ConfigError, PermissionDenied
from tests.conftest import DatabaseDsn, make_config


@pytest.fixture
async def audited(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path, audit={"tables": ["agents", "tasks"]})
    async with DataLayer(config) as dl:
        yield dl


def owner_sql(database: DatabaseDsn, statement: str) -> None:
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("SELECT agency_data_audit_seal()")
        conn.execute(statement)


@pytest.mark.parametrize("table", ["task_types", "task_schedules", "task_dependencies"])
async def test_tables_without_an_id_cannot_be_audited(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, table: str
) -> None:
    with pytest.raises(ConfigError, match=f"cannot audit {table}"):
        make_config(database, redis_url, tmp_path, audit={"tables": [table]})
    # Nor by hand: the switch refuses them, rather than every later write failing.
    with (
        psycopg.connect(database.owner, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="tenant_id and an id"),
    ):
        conn.execute("SELECT agency_data_audit(%s::regclass, true)", [table])


async def test_an_audited_read_after_an_audited_write_in_a_transaction_returns(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, audit={"tables": ["agents"], "reads": ["agents"]}
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        async with acme.transaction():
            agent = await acme.agents.create("scout", "w")
            got = await asyncio.wait_for(acme.agents.get(agent.id), 5)
        assert got.id == agent.id


async def test_a_session_write_after_an_audited_write_in_a_transaction_returns(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, audit={"tables": ["agents"], "sessions": True}
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        async with acme.transaction():
            await acme.agents.create("scout", "w")
            await asyncio.wait_for(acme.sessions.create("agent-1", {"n": 1}), 5)


async def test_the_actor_named_inside_a_transaction_is_recorded(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    with audited.as_actor("alice"):
        async with acme.transaction():
            await acme.agents.create("by-alice", "w")
            with audited.as_actor("bob"):
                await acme.agents.create("by-bob", "w")
    async with acme.transaction():
        with audited.as_actor("carol"):
            await acme.agents.create("by-carol", "w")
    actors = [r.actor for r in reversed(await acme.audit.show())]
    assert actors == ["alice", "bob", "carol"]


async def crossing_writes(dl: DataLayer) -> list[BaseException]:
    """Two transactions, each writing tenant a then b, the other b then a, in step."""
    both = asyncio.Barrier(2)

    async def write(first: str, second: str) -> None:
        async with dl.tenant(first).transaction():
            await dl.tenant(first).agents.create(f"{first}-1", "w")
            await both.wait()
            await dl.tenant(second).agents.create(f"{second}-2", "w")

    results = await asyncio.gather(write("a", "b"), write("b", "a"), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


async def test_transactions_writing_two_tenants_in_either_order_do_not_deadlock(
    audited: DataLayer,
) -> None:
    assert await crossing_writes(audited) == []


async def overlapping_updates(dl: DataLayer) -> list[BaseException]:
    """One transaction updates x then y; another, meanwhile, y: the second waits for the first."""
    acme = dl.tenant("acme")
    x = await acme.agents.create("x", "w")
    y = await acme.agents.create("y", "w")
    first_done = asyncio.Event()

    async def one() -> None:
        async with acme.transaction():
            await acme.agents.update(x.id, name="x1")
            first_done.set()
            await asyncio.sleep(0.5)  # two is now holding y and waiting
            await acme.agents.update(y.id, name="y1")

    async def two() -> None:
        await first_done.wait()
        async with acme.transaction():
            await acme.agents.update(y.id, name="y2")

    results = await asyncio.gather(one(), two(), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


async def test_audited_transactions_of_one_tenant_wait_rather_than_deadlock(
    audited: DataLayer,
) -> None:
    assert await overlapping_updates(audited) == []


FORGE = """
WITH head AS (SELECT seq FROM audit_heads WHERE tenant_id = 'acme'),
rec AS (
    SELECT ROW('acme', (SELECT seq FROM head) + 1, timestamptz '2001-01-01 00:00:00+00',
               'nobody', 'delete', 'agents', 'forged', '{}'::jsonb,
               (SELECT hash FROM audit_log WHERE tenant_id = 'acme'
                AND seq = (SELECT seq FROM head)), '\\x'::bytea)::audit_log AS r
)
INSERT INTO audit_log
SELECT (r).tenant_id, (r).seq, (r).at, (r).actor, (r).operation, (r).entity_type,
       (r).entity_id, (r).detail, (r).prev_hash, agency_data_audit_hash((r).prev_hash, r)
FROM rec
"""


async def test_the_application_role_cannot_forge_a_record_verify_accepts(
    audited: DataLayer,
) -> None:
    acme = audited.tenant("acme")
    await acme.agents.create("a", "w")
    try:
        await acme.execute(FORGE)
        await acme.execute("UPDATE audit_heads SET seq = seq + 1")
    except PermissionDenied:
        return  # append-only for real: only the chain function writes
    report = await acme.audit.verify()
    forged = (await acme.audit.show())[0]
    assert not report.ok, (report, forged)


async def test_the_application_role_cannot_move_the_chain_head(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    for i in range(3):
        await acme.agents.create(f"a{i}", "w")
    try:
        await acme.execute("UPDATE audit_heads SET seq = 1")
    except PermissionDenied:
        return
    report = await acme.audit.verify()
    errors: list[BaseException] = []
    try:
        await acme.agents.create("after", "w")
    except AgencyDataError as exc:
        errors.append(exc)
    assert (not report.ok, errors) == (True, []), report


async def test_an_update_that_changes_the_id_is_recorded(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    agent = await acme.agents.create("a", "w")
    before = (await acme.audit.verify()).records
    changed = await acme.execute(
        "UPDATE agents SET id = gen_random_uuid() WHERE id = %s", [agent.id]
    )
    assert changed == 1
    assert (await acme.audit.verify()).records > before


async def test_ambiguous_field_edits_are_found(audited: DataLayer, database: DatabaseDsn) -> None:
    acme = audited.tenant("acme")
    with audited.as_actor("svc\x1finsert"):
        await acme.agents.create("a", "w")  # seq 1: actor 'svc<US>insert', operation 'insert'
    await acme.execute("SELECT agency_data_audit_append('acme', 'read', 'thing', NULL, '{}')")
    owner_sql(
        database,
        "UPDATE audit_log SET actor = 'svc', operation = E'insert\\x1finsert' "
        "WHERE tenant_id = 'acme' AND seq = 1",
    )
    owner_sql(database, "UPDATE audit_log SET entity_id = '' WHERE tenant_id = 'acme' AND seq = 2")
    records = {r.seq: r for r in await acme.audit.show()}
    assert (records[1].actor, records[2].entity_id) == ("svc", "")
    report = await acme.audit.verify()
    assert not report.ok


async def test_a_streamed_search_is_recorded_as_a_read(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, audit={"reads": ["embeddings"]})
    async with DataLayer(config) as dl:
        await dl.admin.create_collection("notes", dimension=2)
        notes = dl.tenant("acme").embeddings.collection("notes")
        await notes.store({"entity_type": "doc", "entity_id": "1", "vector": [1.0, 0.0]})
        async with contextlib.aclosing(notes.search_stream([1.0, 0.0])) as stream:
            found = [hit async for hit in stream]
        assert len(found) == 1
        reads = [r for r in await dl.tenant("acme").audit.show() if r.operation == "read"]
        assert len(reads) == 1


async def test_the_application_role_cannot_write_the_system_trail(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    try:
        await acme.execute(
            "SELECT set_config('agency_data.tenant', '(system)', true); "
            "SELECT agency_data_audit_append('(system)', 'audit.off', 'table', 'agents', '{}')"
        )
    except PermissionDenied:
        return
    system = audited.admin.system_audit
    latest = (await system.show())[0]
    assert (latest.operation, latest.actor) == ("audit.off", "agency_app")
    assert not (await system.verify()).ok


async def test_heartbeats_of_a_claim_name_its_actor(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    agent = await acme.agents.create("worker", "w")
    await acme.tasks.create("job")
    with audited.as_actor("worker-7"):
        (task,) = await acme.tasks.claim(agent.id, lease_seconds=0.3, auto_heartbeat=True)
    await asyncio.sleep(0.6)
    with audited.as_actor("worker-7"):
        await acme.tasks.complete(task)
    updates = [
        r.actor
        for r in await acme.audit.show(entity_type="tasks", entity_id=str(task.id))
        if r.operation == "update"
    ]
    assert len(updates) >= 3  # claim, heartbeats, complete
    assert set(updates) == {"worker-7"}, updates


# Controls: the same two-transaction schedules without auditing finish without error.


async def test_control_two_tenants_without_audit_do_not_deadlock(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert await crossing_writes(dl) == []


async def test_control_one_tenant_without_audit_waits(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert await overlapping_updates(dl) == []


async def test_a_truncate_of_an_audited_table_is_recorded(
    audited: DataLayer, database: DatabaseDsn
) -> None:
    acme = audited.tenant("acme")
    await acme.agents.create("a", "w")
    before = {r.tenant: r.seq for r in await audited.admin.audit_anchors()}
    with psycopg.connect(database.owner, autocommit=True) as conn:
        conn.execute("TRUNCATE agents CASCADE")
    assert await acme.agents.count() == 0
    after = {r.tenant: r.seq for r in await audited.admin.audit_anchors()}
    assert after != before


async def test_a_session_digest_does_not_reveal_guessable_data(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, audit={"sessions": True})
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.sessions.create("agent-1", {"approved": True})
        (record,) = await acme.audit.show()
        # No digest_key: no digest at all, only which keys the data had and its size.
        assert record.detail == {"keys": ["approved"], "bytes": 17}


async def test_verify_every_chain_reports_a_chain_cut_at_its_end(
    audited: DataLayer, database: DatabaseDsn
) -> None:
    acme = audited.tenant("acme")
    for i in range(3):
        await acme.agents.create(f"a{i}", "w")
    owner_sql(database, "DELETE FROM audit_log WHERE tenant_id = 'acme' AND seq = 3")
    assert not (await acme.audit.verify()).ok  # the tenant's own verify finds it
    reports = {r.tenant: r for r in await audited.admin.verify_audit()}
    assert "acme" in reports, sorted(reports)
    assert not reports["acme"].ok
