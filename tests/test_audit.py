"""The audit trail on the real servers: records in the change's transaction, chained per tenant,
attributed to the actor, and any edit or removal found at its record."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.errors import ConfigError, PermissionDenied
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data


@pytest.fixture
async def audited(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        for table in ("agents", "tasks"):
            await dl.admin.fetch("SELECT agency_data_audit(%s, true)", [table])
        yield dl


def tamper(database: DatabaseDsn, statement: str) -> None:
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute(statement)


async def test_every_change_is_recorded_in_its_own_transaction(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    agent = await acme.agents.create("scout", "search")
    await acme.agents.update(agent.id, name="scout-2")
    await acme.tasks.create("job", {"n": 1})

    async def rolled_back() -> None:
        async with acme.transaction():
            await acme.agents.create("rolled-back", "search")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await rolled_back()
    await acme.agents.delete(agent.id)
    records = list(reversed(await acme.audit.show()))
    assert [(r.seq, r.operation, r.entity_type) for r in records] == [
        (1, "insert", "agents"),
        (2, "update", "agents"),
        (3, "insert", "tasks"),
        (4, "delete", "agents"),
    ]
    assert records[0].entity_id == str(agent.id)
    # Digests only: the update's "after" is the delete's "before"; no value appears.
    assert records[1].detail["after"] == records[3].detail["before"]
    assert "scout" not in str([r.detail for r in records])
    report = await acme.audit.verify()
    assert report.ok
    assert (report.records, report.head_seq) == (4, 4)
    assert await audited.tenant("other").audit.show() == []


async def test_records_name_the_actor_even_for_gathered_writes(audited: DataLayer) -> None:
    acme = audited.tenant("acme")

    async def make(actor: str, n: int) -> None:
        with audited.as_actor(actor):
            await asyncio.gather(*(acme.agents.create(f"{actor}-{i}", "w") for i in range(n)))

    await asyncio.gather(make("alice", 40), make("bob", 40))
    await acme.agents.create("anonymous", "w")
    records = await acme.audit.show(limit=1000)
    by_actor = {actor: len([r for r in records if r.actor == actor]) for actor in ("alice", "bob")}
    assert by_actor == {"alice": 40, "bob": 40}
    assert records[0].actor == "agency_app"  # no actor named: the database role
    assert len(await acme.audit.show(actor="alice", limit=1000)) == 40
    assert (await acme.audit.verify()).ok


async def test_an_edit_or_a_removal_is_found_at_its_record(
    audited: DataLayer, database: DatabaseDsn
) -> None:
    acme = audited.tenant("acme")
    for i in range(8):
        await acme.agents.create(f"a{i}", "w")
    tamper(database, "UPDATE audit_log SET actor = 'mallory' WHERE tenant_id = 'acme' AND seq = 4")
    report = await acme.audit.verify()
    assert (report.ok, report.broken_at) == (False, 4)
    assert report.problem is not None
    assert "edited" in report.problem
    tamper(
        database, "UPDATE audit_log SET actor = 'agency_app' WHERE tenant_id = 'acme' AND seq = 4"
    )
    assert (await acme.audit.verify()).ok
    tamper(database, "DELETE FROM audit_log WHERE tenant_id = 'acme' AND seq = 6")
    report = await acme.audit.verify()
    assert (report.ok, report.broken_at) == (False, 7)
    assert report.problem is not None
    assert "expected seq 6" in report.problem


async def test_the_application_only_ever_adds_records(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    await acme.agents.create("a", "w")
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(PermissionDenied):
            await acme.execute(statement)
    assert (await acme.audit.verify()).records == 1


async def test_configured_tables_are_audited_from_the_start(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, audit={"tables": ["agents", "embeddings"]})
    async with DataLayer(config) as dl:
        await dl.embeddings.create_collection("notes", dimension=2)
        notes = dl.tenant("acme").embeddings.collection("notes")
        await notes.store({"entity_type": "doc", "entity_id": "1", "vector": [1.0, 0.0]})
        await dl.tenant("acme").agents.create("a", "w")
        await dl.tenant("acme").tasks.create("not-audited")
        kinds = [r.entity_type for r in reversed(await dl.tenant("acme").audit.show())]
        assert kinds == ["emb_notes", "agents"]
    # A second start finds the triggers in place and leaves them (no lock, no change).
    async with DataLayer(config) as dl:
        assert (await dl.tenant("acme").audit.verify()).records == 2
        assert await dl.admin.audit("agents", False) == ["agents"]
        await dl.tenant("acme").agents.create("b", "w")
        assert (await dl.tenant("acme").audit.verify()).records == 2


def test_unknown_tables_are_refused(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot audit secrets"):
        make_config(database, redis_url, tmp_path, audit={"tables": ["agents", "secrets"]})


async def test_the_command_line_verifies_and_shows(
    audited: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    acme = audited.tenant("acme")
    with audited.as_actor("cli-check"):
        for i in range(3):
            await acme.agents.create(f"a{i}", "w")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data("audit", *args, dsn=database, redis_url=redis_url, tmp_path=tmp_path)

    good = run("verify", "--tenant", "acme")
    assert good.returncode == 0, good.stderr
    assert "3 records, intact" in good.stdout
    assert "head: record 3, hash " in good.stdout
    shown = json.loads(run("show", "--tenant", "acme", "--actor", "cli-check", "--json").stdout)
    assert [r["seq"] for r in shown] == [3, 2, 1]
    tamper(database, "UPDATE audit_log SET detail = '{}' WHERE tenant_id = 'acme' AND seq = 2")
    bad = run("verify", "--tenant", "acme", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["broken_at"] == 2
    refused = run("show", "--limit", "0")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr


async def test_chosen_tables_keep_changed_fields_or_values(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        audit={"tables": ["agents", "tasks"], "detail": {"agents": "values", "tasks": "fields"}},
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        agent = await acme.agents.create("scout", "search")
        await acme.agents.update(agent.id, name="scout-2")
        task = await acme.tasks.create("job", {"n": 1})
        await acme.tasks.cancel(task.id)
        agents = list(reversed(await acme.audit.show(entity_type="agents")))
        assert agents[0].detail["after"]["name"] == "scout"
        assert "before" not in agents[0].detail
        assert (agents[1].detail["before"]["name"], agents[1].detail["after"]["name"]) == (
            "scout",
            "scout-2",
        )
        cancelled = (await acme.audit.show(entity_type="tasks"))[0]
        assert "status" in cancelled.detail["changed"]
        assert "data" not in cancelled.detail["changed"]  # unchanged columns are not named
        assert (await acme.audit.verify()).ok
        # Switching a table's detail replaces its triggers; the chain goes on.
        await dl.admin.audit("agents", detail="digest")
        await acme.agents.update(agent.id, name="scout-3")
        latest = (await acme.audit.show(entity_type="agents"))[0]
        assert set(latest.detail) == {"before", "after"}
        assert isinstance(latest.detail["after"], str)
        assert (await acme.audit.verify()).ok
    with pytest.raises(ConfigError, match="choose digest, fields or values"):
        make_config(database, redis_url, tmp_path, audit={"detail": {"agents": "everything"}})
