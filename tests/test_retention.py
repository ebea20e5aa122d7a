"""Retention on the real servers: exactly what the policies say goes, archived first when asked,
in batches that never hold a writer back for more than one; the audit chain still verifies."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.errors import ConfigError
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data


def backdate(database: DatabaseDsn, statement: str, params: Any = None) -> None:
    """Age rows by hand (as the superuser; the state machine allows no such write)."""
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers
        conn.execute(statement, params)


def config_with(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, *policies: dict[str, Any], **more: Any
) -> Any:
    return make_config(
        database,
        redis_url,
        tmp_path,
        retention={
            "policies": list(policies),
            "archive_dir": tmp_path / "archive",
            **more,
        },
        audit={"tables": ["tasks"]},
    )


async def test_policies_remove_exactly_what_they_say_archiving_first(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = config_with(
        database,
        redis_url,
        tmp_path,
        {"target": "tasks", "older_than": "30d", "status": ["completed"], "archive": True},
        {"target": "notes", "older_than": "7d", "entity_type": "chat"},
        batch_size=3,
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        agent = await acme.agents.create("w", "worker")
        old_done, new_done, old_failed, pending = [], [], [], []
        for i in range(7):
            task = await acme.tasks.create("job", {"i": i})
            (claimed,) = await acme.tasks.claim(agent.id, ["job"])
            if i < 5:
                await acme.tasks.complete(claimed, {"ok": i})
                (old_done if i < 4 else new_done).append(task.id)
            else:
                await acme.tasks.fail(claimed, "boom", retry=False)
                old_failed.append(task.id)
        pending.append((await acme.tasks.create("job")).id)
        backdate(
            database,
            "UPDATE tasks SET finished_at = now() - interval '40 days' WHERE id = ANY(%s)",
            [old_done + old_failed],
        )
        await dl.admin.create_collection("notes", dimension=2)
        notes = acme.embeddings.collection("notes")
        stored = {
            kind: await notes.store({"entity_type": kind, "entity_id": "1", "vector": [1, 0]})
            for kind in ("chat", "doc")
        }
        backdate(database, "UPDATE emb_notes SET created_at = now() - interval '8 days'")

        report = await dl.retention.run()
        by_target = {r.target: r for r in report.results}
        assert by_target["tasks"].removed == 4
        assert by_target["tasks"].batches == 2  # 3, then 1
        assert by_target["notes"].removed == 1
        left = {t.id for t in (await acme.tasks.list(limit=100)).items}
        assert left == {*new_done, *old_failed, *pending}
        assert [e.id for e in await notes.get_many(stored.values())] == [stored["doc"]]
        archive = by_target["tasks"].archive
        assert archive is not None
        assert archive.stat().st_mode & 0o777 == 0o600
        rows = [json.loads(line) for line in gzip.decompress(archive.read_bytes()).splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(str(i) for i in old_done)
        assert all(r["result"]["ok"] < 4 and "search" not in r for r in rows)
        assert by_target["notes"].archive is None
        # Recorded in the system trail, with its counts; the tasks' deletes in acme's chain.
        (run,) = await dl.admin.system_audit.show(entity_type="retention")
        assert run.detail == {"tasks": 4, "notes": 1}
        deletes = await acme.audit.show(limit=1000)
        assert sum(r.operation == "delete" for r in deletes) == 4
        # A second run finds nothing more.
        again = await dl.retention.run()
        assert [r.removed for r in again.results] == [0, 0]


async def test_the_audit_trail_is_pruned_from_its_start_and_still_verifies(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = config_with(
        database,
        redis_url,
        tmp_path,
        {"target": "audit", "older_than": "365d", "archive": True},
        batch_size=4,
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        for i in range(10):
            await acme.tasks.create("job", {"i": i})
        assert (await acme.audit.verify()).records == 10
        # The first six records are over a year old.
        backdate(
            database,
            "UPDATE audit_log SET at = at - interval '400 days' "
            "WHERE tenant_id = 'acme' AND seq <= 6",
        )
        with psycopg.connect(database.superuser, autocommit=True) as conn:
            # Their hashes as they would have been: the test moved time, not the records.
            conn.execute(
                """DO $$ DECLARE r audit_log; link bytea := '\\x'; BEGIN
                FOR r IN SELECT * FROM audit_log WHERE tenant_id = 'acme' ORDER BY seq LOOP
                    r.prev_hash := link; link := agency_data_audit_hash(link, r);
                    UPDATE audit_log SET prev_hash = r.prev_hash, hash = link
                    WHERE tenant_id = 'acme' AND seq = r.seq;
                END LOOP; END $$"""
            )
        report = await dl.retention.run()
        (result,) = report.results
        assert result.removed == 6
        verified = await acme.audit.verify()
        assert (verified.ok, verified.records, verified.head_seq) == (True, 4, 10)
        assert result.archive is not None
        archived = gzip.decompress(result.archive.read_bytes()).splitlines()
        assert [json.loads(line)["seq"] for line in archived] == [1, 2, 3, 4, 5, 6]
        # An edit after the pruned start is still found.
        with psycopg.connect(database.superuser, autocommit=True) as conn:
            conn.execute("UPDATE audit_log SET actor = 'x' WHERE tenant_id = 'acme' AND seq = 7")
        assert (await acme.audit.verify()).broken_at == 7


async def test_batches_neither_wait_for_writers_nor_hold_them(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = config_with(
        database, redis_url, tmp_path, {"target": "notes", "older_than": 60}, batch_size=200
    )
    async with DataLayer(config) as dl:
        await dl.admin.create_collection("notes", dimension=2)
        notes = dl.tenant("acme").embeddings.collection("notes")
        ids = await notes.store_many(
            {"entity_type": "d", "entity_id": str(i), "vector": [1, i]} for i in range(1000)
        )
        backdate(database, "UPDATE emb_notes SET created_at = now() - interval '1 hour'")
        # A writer holds one old row the whole time: the run skips it rather than wait.
        with psycopg.connect(database.superuser) as holder:
            holder.execute("SELECT 1 FROM emb_notes WHERE id = %s FOR UPDATE", [ids[0]])
            # Were it to wait, the holder (in this thread) would never let go: cut short.
            report = await asyncio.wait_for(dl.retention.run(), 30)
            holder.rollback()
        (result,) = report.results
        assert (result.removed, result.batches) == (999, 5)
        assert [e.id for e in await notes.get_many(ids)] == [ids[0]]
        await notes.update_metadata(ids[0], {"kept": True})


async def test_cache_namespaces_and_the_command_line(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = config_with(
        database, redis_url, tmp_path, {"target": "cache.sessions-mirror", "older_than": "1h"}
    )
    async with DataLayer(config) as dl:
        mirror = dl.tenant("acme").cache.with_namespace("sessions-mirror")
        await mirror.set("long", 1, ttl=86400)
        await mirror.set("short", 2, ttl=60)
        await dl.tenant("acme").cache.set("other", 3, ttl=86400)
    env = {
        "AGENCY_DATA_RETENTION__POLICIES": json.dumps(
            [{"target": "cache.sessions-mirror", "older_than": "1h"}]
        )
    }
    done = agency_data(
        "retention", "run", "--json", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"target": "cache.sessions-mirror", "removed": 1, "batches": 0, "archive": None}
    ]


def test_policies_are_checked_at_load(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    for policy, problem in (
        ({"target": "tasks", "older_than": "soon"}, "not a duration"),
        ({"target": "tasks", "older_than": 0}, "more than zero"),
        ({"target": "tasks", "older_than": "1d", "status": ["pending"]}, "finished tasks only"),
        ({"target": "Bad Name", "older_than": "1d"}, "target"),
    ):
        with pytest.raises(ConfigError, match=problem):
            config_with(database, redis_url, tmp_path, policy)
