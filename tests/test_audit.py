"""The audit trail on the real servers: records in the change's transaction, chained per tenant,
attributed to the actor, and any edit or removal found at its record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.audit import Anchor
from agency_data.audit.notes import digest
from agency_data.errors import ConfigError, Conflict, PermissionDenied, ValidationError
from tests.conftest import DatabaseDsn, holding_connections, make_config
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
    """Run ``statement`` as the superuser, once every committed record is chained."""
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("SELECT agency_data_audit_seal()")
        conn.execute(statement)


def rehash(database: DatabaseDsn, tenant: str) -> None:
    """What an owner covering an edit would do: recompute every hash from the first record."""
    tamper(
        database,
        f"""DO $$
        DECLARE r audit_log; link bytea := '\\x';
        BEGIN
            FOR r IN SELECT * FROM audit_log WHERE tenant_id = '{tenant}' ORDER BY seq LOOP
                r.prev_hash := link;
                link := agency_data_audit_hash(link, r);
                UPDATE audit_log SET prev_hash = r.prev_hash, hash = link
                WHERE tenant_id = r.tenant_id AND seq = r.seq;
            END LOOP;
        END $$""",
    )


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
    assert "acme: 3 records, intact, head 3:" in good.stdout
    head = good.stdout.split("head ")[1].split()[0]
    # Without --tenant: every chain, the system trail's (migrations) among them.
    every = run("verify")
    assert every.returncode == 0, every.stderr
    assert "acme: 3 records, intact" in every.stdout
    assert "(system): " in every.stdout
    assert "migration.up" in run("show", "--system").stdout
    shown = json.loads(run("show", "--tenant", "acme", "--actor", "cli-check", "--json").stdout)
    assert [r["seq"] for r in shown] == [3, 2, 1]
    tamper(database, "UPDATE audit_log SET detail = '{}' WHERE tenant_id = 'acme' AND seq = 2")
    bad = run("verify", "--tenant", "acme", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)[0]["broken_at"] == 2
    # Rewritten with fresh hashes, the chain passes on its own, but not against its anchor.
    rehash(database, "acme")
    assert run("verify", "--tenant", "acme").returncode == 0
    anchored = run("verify", "--tenant", "acme", "--anchor", head)
    assert anchored.returncode == 1
    assert "BROKEN at record 3: its hash is not the anchor's" in anchored.stdout
    for args in (("--anchor", head), ("--tenant", "acme", "--anchor", "3:nothex")):
        wrong = run("verify", *args)
        assert wrong.returncode == 2
        assert "Traceback" not in wrong.stderr
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


async def test_records_removed_from_the_end_are_found(
    audited: DataLayer, database: DatabaseDsn
) -> None:
    acme = audited.tenant("acme")
    for i in range(3):
        await acme.agents.create(f"a{i}", "w")
    tamper(database, "DELETE FROM audit_log WHERE tenant_id = 'acme' AND seq = 3")
    report = await acme.audit.verify()
    assert (report.ok, report.broken_at, report.records) == (False, 3, 2)
    assert report.problem == "it is missing: the chain has 3 records"


async def test_the_layers_own_actions_go_to_the_system_trail(audited: DataLayer) -> None:
    await audited.admin.create_collection("notes", dimension=2)
    await audited.admin.create_index("notes", "hnsw")
    await audited.admin.drop_index("notes")
    await audited.admin.audit("agents", False)
    await audited.admin.audit("agents", False)  # already off: nothing changed, no record
    await audited.admin.drop_collection("notes")
    system = audited.admin.system_audit
    actions = [(r.operation, r.entity_id) for r in reversed(await system.show(limit=1000))]
    # The template database's migrations, then this test's actions (the fixture switched
    # auditing on by raw SQL, which the layer does not see).
    assert actions == [
        ("migration.up", "agency_data:0010_audit"),
        ("migration.up", "agency_data:0011_string_ids"),
        ("migration.up", "agency_data:0012_langgraph_checkpoints"),
        ("migration.up", "agency_data:0013_langgraph_store"),
        ("migration.up", "agency_data:0014_kv_items"),
        ("migration.up", "agency_data:0015_outbox"),
        ("migration.up", "agency_data:0016_change_feed"),
        ("migration.up", "agency_data:0017_store_events"),
        ("migration.up", "agency_data:0018_agent_memory"),
        ("migration.up", "agency_data:0019_knowledge_graph"),
        ("migration.up", "agency_data:0020_api_keys"),
        ("collection.create", "notes"),
        ("index.create", "notes"),
        ("index.drop", "notes"),
        ("audit.off", "agents"),
        ("collection.drop", "notes"),
    ]
    assert (await system.verify()).ok
    await audited.tenant("acme").agents.create("not-audited-any-more", "w")
    await audited.tenant("acme").tasks.create("job")
    reports = {r.tenant: r for r in await audited.admin.verify_audit()}
    assert set(reports) == {"(system)", "acme"}
    assert reports["acme"].records == 1
    assert all(r.ok for r in reports.values())


async def test_admin_actions_roll_back_with_their_records(audited: DataLayer) -> None:
    system = audited.admin.system_audit
    before = (await system.verify()).records
    await audited.admin.create_collection("notes", dimension=2)
    with pytest.raises(Conflict):
        await audited.admin.create_collection("notes", dimension=3)
    assert (await system.verify()).records == before + 1


async def test_session_writes_are_recorded_before_they_are_sent(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, audit={"sessions": True})
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        with dl.as_actor("planner"):
            session = await acme.sessions.create("agent-1", {"secret": "hunter2"})
            await acme.sessions.update(session.id, {"step": 2})
            await acme.sessions.touch(session.id)  # the expiry only: not recorded
            await acme.sessions.delete(session.id)
        records = list(reversed(await acme.audit.show()))
        assert [(r.operation, r.entity_type, r.entity_id, r.actor) for r in records] == [
            ("session.create", "session", session.id, "planner"),
            ("session.update", "session", session.id, "planner"),
            ("session.delete", "session", session.id, "planner"),
        ]
        assert "hunter2" not in str([r.detail for r in records])
        # Without audit.digest_key: which keys, and how much, never a digest to guess at.
        assert records[0].detail == {"keys": ["secret"], "bytes": 20}
        assert records[1].detail["keys"] == ["secret", "step"]

        # Written ahead, in a transaction of its own: a rolled-back transaction keeps it.
        async def rolled_back() -> None:
            async with acme.transaction():
                await acme.sessions.create("agent-1", {"n": 1})
                raise RuntimeError

        with pytest.raises(RuntimeError):
            await rolled_back()
        assert (await acme.audit.verify()).records == 4
    keyed = make_config(
        database, redis_url, tmp_path, audit={"sessions": True, "digest_key": "k" * 32}
    )
    async with DataLayer(keyed) as dl:
        acme = dl.tenant("acme")
        session = await acme.sessions.create("agent-1", {"approved": True})
        record = (await acme.audit.show(limit=1))[0]
        assert record.detail == {"after": digest({"approved": True}, b"k" * 32)}
        assert record.detail["after"] != hashlib.sha256(b'{"approved":true}').hexdigest()
        await acme.sessions.delete(session.id)


async def test_reads_of_chosen_tables_are_recorded(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, audit={"reads": ["agents", "embeddings"]})
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        agent = await acme.agents.create("scout", "w")
        await acme.agents.get(agent.id)
        await acme.agents.get(agent.id)  # served by the cache: still a read
        await acme.agents.list()
        await acme.agents.get_many([agent.id])
        await acme.tasks.list()  # tasks' reads are not chosen
        await dl.admin.create_collection("notes", dimension=2)
        notes = acme.embeddings.collection("notes")
        stored = await notes.store({"entity_type": "doc", "entity_id": "1", "vector": [1.0, 0]})
        await notes.find_similar([1.0, 0.0], limit=5)
        await notes.get(stored)

        async def rolled_back() -> None:
            async with acme.transaction():
                await acme.agents.get(agent.id)
                raise RuntimeError

        with pytest.raises(RuntimeError):
            await rolled_back()
        records = list(reversed(await acme.audit.show()))
        assert [(r.operation, r.entity_type, r.entity_id) for r in records] == [
            ("read", "agents", str(agent.id)),
            ("read", "agents", str(agent.id)),
            ("read", "agents", str(agent.id)),
            ("read", "agents", str(agent.id)),
            ("read", "emb_notes", str(stored)),
            ("read", "emb_notes", str(stored)),
            ("read", "agents", str(agent.id)),  # the rolled-back transaction's read
        ]
        assert records[2].detail == {"rows": 1, "ids": [str(agent.id)]}
        assert (await acme.audit.verify()).ok
    with pytest.raises(ConfigError, match="cannot audit"):
        make_config(database, redis_url, tmp_path, audit={"reads": ["passwords"]})


async def test_anchors_are_logged_and_exported(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        audit={"tables": ["agents"], "anchor_interval": 0.05},
        monitoring={"tenant_labels": True},
    )
    caplog.set_level(logging.INFO, logger="agency_data.audit")
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        for i in range(3):
            await acme.agents.create(f"a{i}", "w")
        head = (await acme.audit.verify()).head_hash
        for _ in range(100):
            if f"tenant acme, record 3, hash {head}" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert f"tenant acme, record 3, hash {head}" in caplog.text
        text = await dl.metrics_text()
        assert 'agency_data_audit_records{tenant="acme"} 3.0' in text
        assert "agency_data_audit_anchor_timestamp_seconds " in text
        anchors = {a.tenant: a for a in await dl.admin.audit_anchors()}
        assert (anchors["acme"].seq, anchors["acme"].hash) == (3, head)
        assert (await acme.audit.verify([anchors["acme"]])).ok
        with pytest.raises(ValidationError, match="cannot check"):
            await dl.tenant("other").audit.verify([anchors["acme"]])
        for wrong in ("3:abc", ["3:abc"], [None]):
            with pytest.raises(ValidationError, match="anchors must be"):
                await acme.audit.verify(wrong)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="SEQ:HASH"):
            Anchor.parse("acme", "three:" + "0" * 64)
        with pytest.raises(ValidationError, match="limit"):
            await acme.audit.show(limit=0)
        with pytest.raises(ValidationError, match="actor"):
            await acme.audit.show(actor=5)  # type: ignore[arg-type]


async def test_a_cancelled_verify_leaves_the_pool_usable(audited: DataLayer) -> None:
    acme = audited.tenant("acme")
    await asyncio.gather(*(acme.agents.create(f"a{i}", "w") for i in range(20)))
    # Every connection busy: verify waits for one, and is cut short while it waits.
    async with holding_connections(audited, audited.config.postgresql.pool_max_size):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(acme.audit.verify(), 0.2)
    report = await acme.audit.verify()
    assert (report.ok, report.records) == (True, 20)
