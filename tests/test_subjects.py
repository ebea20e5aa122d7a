"""Data subject rights on the real servers: export returns every planted item; after erase, a
scan of every table, every Redis key and another process's L1 finds no trace of the subject."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from agency_data import DataLayer
from agency_data.errors import ValidationError
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data

SUBJECT = "ann@example.com"
MARK = "ann-is-here"  # planted in every value about the subject, searched for afterwards


def no_trace(text: str) -> bool:
    """Neither the subject's id nor the mark planted with it."""
    return SUBJECT not in text and MARK not in text


def subject_config(database: DatabaseDsn, redis_url: str, tmp_path: Path, **more: Any) -> Any:
    return make_config(
        database,
        redis_url,
        tmp_path,
        subjects={
            "tasks": ["user"],
            "agents": ["owner"],
            "collections": ["person.email"],
            "entity_types": ["user"],
            "sessions": ["user"],
            "streams": ["user"],
        },
        audit={"tables": ["tasks", "agents"], "digest_key": "k" * 32},
        **more,
    )


async def plant(dl: DataLayer) -> dict[str, Any]:
    """One item about the subject in every store, one about someone else beside it."""
    acme = dl.tenant("acme")
    about = {"user": SUBJECT, "note": MARK}
    other = {"user": "bob@example.com", "note": "bob"}
    planted: dict[str, Any] = {}
    planted["task"] = await acme.tasks.create("mail", about)
    await acme.tasks.create("mail", other)
    planted["agent"] = await acme.agents.create(
        "assistant", "w", capabilities={"owner": SUBJECT, "x": MARK}
    )
    await acme.agents.create("other", "w", capabilities={"owner": "bob"})
    await dl.admin.create_collection("notes", dimension=2)
    notes = acme.embeddings.collection("notes")
    planted["by_metadata"] = await notes.store(
        {"entity_type": "doc", "entity_id": "1", "vector": [1, 0],
         "metadata": {"person": {"email": SUBJECT}}, "content": MARK}
    )  # fmt: skip
    planted["by_entity"] = await notes.store(
        {"entity_type": "user", "entity_id": SUBJECT, "vector": [0, 1], "content": MARK}
    )
    await notes.store({"entity_type": "user", "entity_id": "bob", "vector": [1, 1]})
    planted["session"] = await acme.sessions.create("agent-1", about)
    await acme.sessions.create("agent-1", other)
    planted["message"] = await acme.streams.publish("events", about)
    await acme.streams.publish("events", other)
    await acme.cache.set(
        "profile:ann", {"email": SUBJECT, "note": MARK}, tags=["subject:" + SUBJECT]
    )
    await acme.cache.set("profile:bob", {"email": "bob"}, tags=["subject:bob"])
    # Another tenant's item about the same person: not this tenant's to export or erase.
    await dl.tenant("globex").tasks.create("mail", about)
    return planted


async def test_export_returns_every_planted_item(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(subject_config(database, redis_url, tmp_path)) as dl:
        planted = await plant(dl)
        document = await dl.subjects.export("acme", SUBJECT)
        assert [t["id"] for t in document["tasks"]["tasks"]] == [str(planted["task"].id)]
        assert [a["id"] for a in document["agents"]["agents"]] == [str(planted["agent"].id)]
        notes = document["embeddings"]["notes"]
        assert sorted(n["id"] for n in notes) == sorted(
            str(planted[k]) for k in ("by_metadata", "by_entity")
        )
        assert [s["id"] for s in document["sessions"]] == [planted["session"].id]
        (messages,) = document["streams"].values()
        assert messages == [{"user": SUBJECT, "note": MARK}]
        assert document["cache"] == [{"email": SUBJECT, "note": MARK}]
        for bad in ("", " ", 5):
            with pytest.raises(ValidationError):
                await dl.subjects.export("acme", bad)  # type: ignore[arg-type]


async def test_erase_leaves_no_trace_in_any_store_or_process(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = subject_config(
        database,
        redis_url,
        tmp_path,
        encryption={
            "fields": ["tasks.data", "sessions.data"],
            "kek": base64.b64encode(os.urandom(32)).decode(),
            "key_store": tmp_path / "keys",
        },
    )
    async with DataLayer(config) as dl, DataLayer(config) as other_process:
        await plant(dl)
        # The other process has the subject's cache entry in its L1.
        reader = other_process.tenant("acme").cache
        assert await reader.get("profile:ann") == {"email": SUBJECT, "note": MARK}
        report = await dl.subjects.erase("acme", SUBJECT)
        assert report.removed == {
            "tasks": 1,
            "agents": 1,
            "embeddings.notes": 2,
            "sessions": 1,
            "streams.events": 1,
            "cache": 1,
        }
        # Every table: no row of acme holds the subject or the mark (sealed ones opened).
        document = await dl.subjects.export("acme", SUBJECT)
        assert (document["sessions"], document["cache"], document["streams"]) == ([], [], {})
        assert not {"tasks", "agents", "embeddings"} & set(document)
        with psycopg.connect(database.superuser) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'tenant_id'"
            ).fetchall()
            for (table,) in tables:
                rows = conn.execute(
                    f"SELECT to_jsonb(t)::text FROM {table} t WHERE tenant_id = 'acme'"
                ).fetchall()
                assert no_trace(str(rows)), table
        # Every Redis key of the tenant.
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(match="ad:{acme}:*"):
                kind = client.type(key)
                if kind == b"string":
                    value = client.get(key) or b""
                elif kind == b"stream":
                    value = str(client.xrange(key)).encode()
                elif kind == b"set":
                    value = str(client.smembers(key)).encode()
                else:
                    value = b""
                assert no_trace(value.decode(errors="replace")), key
        finally:
            client.close()
        # And the other process's L1.
        assert await reader.get("profile:ann") is None
        # Bob and the other tenant are untouched; the erasure is in the audit trail, by an
        # HMAC of the subject, without the values.
        assert len((await dl.tenant("acme").tasks.list()).items) == 1
        assert len((await dl.tenant("globex").tasks.list()).items) == 1
        (record,) = await dl.tenant("acme").audit.show(entity_type="subject")
        assert record.operation == "subject.erase"
        assert record.entity_id == report.subject_digest
        assert SUBJECT not in str(record)


async def test_erasing_a_whole_tenant(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = subject_config(
        database,
        redis_url,
        tmp_path,
        encryption={
            "fields": ["tasks.data"],
            "kek": base64.b64encode(os.urandom(32)).decode(),
            "key_store": tmp_path / "keys",
        },
    )
    async with DataLayer(config) as dl, DataLayer(config) as other_process:
        await plant(dl)
        await dl.tenant("acme").tasks.schedule("nightly", type="mail", every=3600)
        # A LangGraph store's memory (agency_data.integrations.langgraph) goes too.
        await dl.tenant("acme").execute(
            "INSERT INTO langgraph_store (tenant_id, store, prefix, key, value) "
            "VALUES ('acme', 'lg_store', 'memories', 'k', '{\"email\": \"bob\"}')"
        )
        reader = other_process.tenant("acme").cache
        assert await reader.get("profile:bob") == {"email": "bob"}
        report = await dl.subjects.erase_tenant("acme")
        assert report.removed["tasks"] == 2
        assert report.removed["langgraph_store"] == 1
        assert report.removed["data keys"] == 1
        assert report.removed["redis keys"] > 0
        assert await reader.get("profile:bob") is None  # the other process's L1 too
        with psycopg.connect(database.superuser) as conn:
            for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = "
                "'public' AND column_name = 'tenant_id' AND table_name NOT LIKE 'audit%%'"
            ).fetchall():
                count = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = 'acme'"
                ).fetchone()
                assert count == (0,), table
        client = redis.Redis.from_url(redis_url)
        try:
            assert list(client.scan_iter(match="ad:{acme}:*")) == []
        finally:
            client.close()
        assert not (tmp_path / "keys" / "acme.json").exists()
        assert len((await dl.tenant("globex").tasks.list()).items) == 1
        (record,) = await dl.admin.system_audit.show(entity_type="tenant")
        assert (record.operation, record.entity_id) == ("tenant.erase", "acme")
        with pytest.raises(ValidationError):
            await dl.subjects.erase_tenant("not a tenant!")


async def test_the_command_line_exports_and_erases(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = subject_config(database, redis_url, tmp_path)
    async with DataLayer(config) as dl:
        await dl.tenant("acme").tasks.create("mail", {"user": SUBJECT})
    env = {"AGENCY_DATA_SUBJECTS__TASKS": '["user"]'}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data(
            "subjects", *args, dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
        )

    exported = run("export", SUBJECT, "--tenant", "acme")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["tasks"]["tasks"][0]["data"] == {"user": SUBJECT}
    refused = run("erase", SUBJECT, "--tenant", "acme")
    assert (refused.returncode, "--yes" in refused.stderr) == (2, True)
    erased = run("erase", SUBJECT, "--tenant", "acme", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert "tasks: 1 removed" in erased.stdout
    assert json.loads(run("export", SUBJECT, "--tenant", "acme").stdout).get("tasks") is None
