"""Field encryption on the real servers: values unreadable in PostgreSQL and Redis, round trips
through the API, bound to their row and tenant, key rotation, online re-encryption under
concurrent writes, and crypto-shredding."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.types.json import Jsonb

from agency_data import DataLayer
from agency_data.errors import ConfigError, DecryptionError, NotFound, ValidationError
from agency_data.security.fields import FieldCipher, sealed_key
from agency_data.security.keys import Keyring, KeyStore, LocalKeyManager
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data

SECRET = {"patient": "Ann Example", "diagnosis": "confidential"}


def new_kek() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def encrypted_config(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str, **encryption: Any
) -> Any:
    fields = encryption.pop(
        "fields",
        ["tasks.data", "tasks.result", "sessions.data", "cache.secrets", "embeddings.content"],
    )
    return make_config(
        database,
        redis_url,
        tmp_path,
        encryption={"fields": fields, "kek": kek, "key_store": tmp_path / "keys", **encryption},
    )


@pytest.fixture
def kek() -> str:
    return new_kek()


@pytest.fixture
async def sealed(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> AsyncIterator[DataLayer]:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        yield dl


def raw(database: DatabaseDsn, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.superuser) as conn:
        return conn.execute(query, params).fetchall()


async def test_task_data_and_results_are_sealed_in_postgresql(
    sealed: DataLayer, database: DatabaseDsn
) -> None:
    acme = sealed.tenant("acme")
    task = await acme.tasks.create("diagnose", SECRET)
    assert task.data == SECRET
    agent = await acme.agents.create("doctor", "worker")
    (claimed,) = await acme.tasks.claim(agent.id, ["diagnose"])
    assert claimed.data == SECRET
    done = await acme.tasks.complete(claimed, {"answer": "rest"})
    assert done.result == {"answer": "rest"}
    assert (await acme.tasks.get(task.id)).data == SECRET
    assert [t.data for t in (await acme.tasks.list()).items] == [SECRET]
    ((data, result),) = raw(database, "SELECT data, result FROM tasks WHERE id = %s", [task.id])
    assert "Ann" not in str(data)
    assert "rest" not in str(result)
    assert sealed_key(data) is not None
    assert sealed_key(result) == sealed_key(data)


async def test_a_value_moved_to_another_row_or_tenant_does_not_decrypt(
    sealed: DataLayer, database: DatabaseDsn
) -> None:
    a = await sealed.tenant("acme").tasks.create("x", SECRET)
    b = await sealed.tenant("acme").tasks.create("x", {"other": 1})
    c = await sealed.tenant("globex").tasks.create("x", {"theirs": 1})
    ((stolen,),) = raw(database, "SELECT data FROM tasks WHERE id = %s", [a.id])
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET data = %s WHERE id = ANY(%s)", [Jsonb(stolen), [b.id, c.id]])
    for tenant, task_id in (("acme", b.id), ("globex", c.id)):
        with pytest.raises(DecryptionError, match=r"copied from another row|not in the key store"):
            await sealed.tenant(tenant).tasks.get(task_id)
    assert (await sealed.tenant("acme").tasks.get(a.id)).data == SECRET


async def test_keyed_replace_reseals_for_the_live_row(sealed: DataLayer) -> None:
    acme = sealed.tenant("acme")
    first = await acme.tasks.create("sync", {"v": 1}, key="nightly")
    (again,) = await acme.tasks.create_many(
        [{"type": "sync", "data": {"v": 2}, "key": "nightly"}], on_conflict="replace"
    )
    assert again.id == first.id
    assert (await acme.tasks.get(first.id)).data == {"v": 2}


async def test_chosen_fields_need_a_key(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="needs a key-encryption key"):
        async with DataLayer(
            make_config(database, redis_url, tmp_path, encryption={"fields": ["tasks.data"]})
        ):
            pass
    for encryption, problem in (
        ({"fields": ["agents.name"]}, "cannot encrypt 'agents.name'"),
        ({"kek": "c2hvcnQ="}, "32 random bytes"),
        ({"kek": new_kek(), "kek_env": "X"}, "one way"),
    ):
        with pytest.raises(ConfigError, match=problem):
            async with DataLayer(make_config(database, redis_url, tmp_path, encryption=encryption)):
                pass


def raw_redis(redis_url: str, pattern: str) -> dict[bytes, bytes]:
    """Every string value under ``pattern``, read straight from Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {
            key: client.get(key) or b""
            for key in client.scan_iter(match=pattern)
            if client.type(key) == b"string"
        }
    finally:
        client.close()


async def test_sessions_cache_and_contents_are_sealed_in_redis_and_postgresql(
    sealed: DataLayer, database: DatabaseDsn, redis_url: str
) -> None:
    acme = sealed.tenant("acme")
    session = await acme.sessions.create("agent-1", {"token": "hunter2"})
    await acme.sessions.update(session.id, {"step": 2})
    assert (await acme.sessions.get(session.id)).data == {"token": "hunter2", "step": 2}
    assert [s.data for s in await acme.sessions.list_by_agent("agent-1")] == [
        {"token": "hunter2", "step": 2}
    ]
    secrets_cache = acme.cache.with_namespace("secrets")
    await secrets_cache.set("api", {"key": "sk-very-secret"})
    await acme.cache.set("public", {"hello": "world"})  # another namespace: left clear
    stored = raw_redis(redis_url, "*acme*")
    assert stored
    assert not any(b"hunter2" in value or b"sk-very-secret" in value for value in stored.values())
    assert any(b"world" in value for value in stored.values())
    fresh = DataLayer(sealed.config)  # another process's view: no L1 of its own yet
    async with fresh:
        assert await fresh.tenant("acme").cache.with_namespace("secrets").get("api") == {
            "key": "sk-very-secret"
        }
    await sealed.admin.create_collection("notes", dimension=2)
    notes = acme.embeddings.collection("notes")
    doc = await notes.store(
        {"entity_type": "doc", "entity_id": "1", "vector": [1.0, 0.0], "content": "Ann's diary"}
    )
    assert (await notes.get(doc)).content == "Ann's diary"
    (hit,) = await notes.find_similar([1.0, 0.0], limit=1)
    assert hit.content == "Ann's diary"
    ((content,),) = raw(database, "SELECT content FROM emb_notes WHERE id = %s", [doc])
    assert content.startswith("$enc:v1:")
    assert "Ann" not in content


async def test_a_destroyed_key_shreds_the_tenant_everywhere(
    sealed: DataLayer, database: DatabaseDsn, tmp_path: Path
) -> None:
    acme, globex = sealed.tenant("acme"), sealed.tenant("globex")
    task = await acme.tasks.create("x", SECRET)
    other = await globex.tasks.create("x", {"kept": True})
    # What a backup holds: the sealed value, copied out before the key goes.
    ((copied,),) = raw(database, "SELECT data FROM tasks WHERE id = %s", [task.id])
    assert await sealed.admin.keys.destroy("acme")
    with pytest.raises(DecryptionError, match="destroyed"):
        await acme.tasks.get(task.id)
    cipher = FieldCipher(
        Keyring(
            KeyStore(tmp_path / "keys"),
            LocalKeyManager(base64.b64decode(sealed.config.encryption.kek.get_secret_value())),
        ),  # type: ignore[union-attr]
        [],
    )
    with pytest.raises(DecryptionError):
        cipher.open("acme", "tasks", "data", task.id, copied)
    assert not (tmp_path / "keys" / "acme.json").exists()
    assert (await globex.tasks.get(other.id)).data == {"kept": True}
    # The tenant goes on: new values get a new key.
    again = await acme.tasks.create("x", {"n": 2})
    assert (await acme.tasks.get(again.id)).data == {"n": 2}
    assert not await sealed.admin.keys.destroy("nobody")


async def test_rotation_rewraps_under_a_new_kek(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        task = await dl.tenant("acme").tasks.create("x", SECRET)
    newer = new_kek()
    rotated = encrypted_config(database, redis_url, tmp_path, newer, previous_keks=[kek])
    async with DataLayer(rotated) as dl:
        assert (await dl.tenant("acme").tasks.get(task.id)).data == SECRET
        assert await dl.admin.keys.rotate() == 1
    # The old KEK is no longer needed; without the new one nothing reads.
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, newer)) as dl:
        assert (await dl.tenant("acme").tasks.get(task.id)).data == SECRET
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        with pytest.raises(DecryptionError, match="do not hold"):
            await dl.tenant("acme").tasks.get(task.id)


async def test_online_reencryption_under_concurrent_writes(
    sealed: DataLayer, database: DatabaseDsn
) -> None:
    acme = sealed.tenant("acme")
    before = [await acme.tasks.create("x", {"i": i}) for i in range(30)]
    (old_key,) = {sealed_key(v) for (v,) in raw(database, "SELECT data FROM tasks")}
    stop = asyncio.Event()
    written: list[Any] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            written.append(await acme.tasks.create("y", {"w": i}))
            i += 1
            await asyncio.sleep(0.01)

    running = asyncio.create_task(writer())
    report = await sealed.admin.keys.reencrypt("acme", batch_size=7)
    stop.set()
    await running
    assert report.rewritten["tasks.data"] >= 30
    keys = {sealed_key(v) for (v,) in raw(database, "SELECT data FROM tasks")}
    assert keys == {report.key_id}
    # The old key stays until retired: then, nothing using it, it goes (after its grace).
    assert await sealed.admin.keys.retire("acme") == []
    assert await sealed.admin.keys.retire("acme", grace=0) == [old_key]
    for task in [*before, *written]:
        assert (await acme.tasks.get(task.id)).data == task.data


async def test_the_command_line_manages_keys(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek)
    async with DataLayer(config) as dl:
        task = await dl.tenant("acme").tasks.create("x", SECRET)
    env = {
        "AGENCY_DATA_ENCRYPTION__KEK": kek,
        "AGENCY_DATA_ENCRYPTION__KEY_STORE": str(tmp_path / "keys"),
        "AGENCY_DATA_ENCRYPTION__FIELDS": '["tasks.data"]',
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data(
            "keys", *args, dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
        )

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["acme"]
    rotated = run("rotate")
    assert (rotated.returncode, rotated.stdout.strip()) == (0, "1 data keys re-wrapped")
    again = run("reencrypt", "--tenant", "acme", "--batch-size", "10")
    assert again.returncode == 0, again.stderr
    assert "tasks.data: 1 rewritten" in again.stdout
    retired = run("retire", "--tenant", "acme", "--grace", "0")
    assert (retired.returncode, retired.stdout.startswith("removed k")) == (0, True)
    refused = run("destroy", "--tenant", "acme")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert kek not in refused.stderr + refused.stdout
    assert run("destroy", "--tenant", "acme", "--yes").returncode == 0
    async with DataLayer(config) as dl:
        with pytest.raises(DecryptionError):
            await dl.tenant("acme").tasks.get(task.id)


class TinyKms:
    """A key manager of the caller's: here an AES key of its own, as a KMS would hold one."""

    def __init__(self) -> None:
        self.key = AESGCM(AESGCM.generate_key(bit_length=256))
        self.calls = 0

    def wrap(self, data_key: bytes, context: Any) -> tuple[str, bytes]:
        self.calls += 1
        nonce = os.urandom(12)
        return "tiny-1", nonce + self.key.encrypt(
            nonce, data_key, repr(sorted(context.items())).encode()
        )

    def unwrap(self, kek_id: str, wrapped: bytes, context: Any) -> bytes:
        self.calls += 1
        aad = repr(sorted(context.items())).encode()
        return self.key.decrypt(wrapped[:12], wrapped[12:], aad)


async def test_a_key_manager_of_the_callers_wraps_the_keys(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    kms = TinyKms()
    config = make_config(
        database,
        redis_url,
        tmp_path,
        encryption={"fields": ["tasks.data"], "key_store": tmp_path / "keys"},
    )
    async with DataLayer(config, key_manager=kms) as dl:
        task = await dl.tenant("acme").tasks.create("x", SECRET)
        assert (await dl.tenant("acme").tasks.get(task.id)).data == SECRET
    assert kms.calls == 1  # wrapped once; unwrapped never (made in this process)
    async with DataLayer(config, key_manager=kms) as dl:
        assert (await dl.tenant("acme").tasks.get(task.id)).data == SECRET
    assert kms.calls == 2
    with pytest.raises(ConfigError, match="key_manager must have wrap"):
        async with DataLayer(config, key_manager=object()):  # type: ignore[arg-type]
            pass


async def test_sealed_metadata_and_sessions_through_a_reencryption(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(
        database,
        redis_url,
        tmp_path,
        kek,
        fields=["sessions.data", "notes.metadata", "notes.content"],
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await dl.admin.create_collection("notes", dimension=2)
        notes = acme.embeddings.collection("notes")
        doc = await notes.store(
            {"entity_type": "d", "entity_id": "1", "vector": [1, 0], "metadata": {"a": 1}}
        )
        updated = await notes.update_metadata(doc, {"b": 2})
        assert updated.metadata == {"a": 1, "b": 2}
        replaced = await notes.update_metadata(doc, {"c": 3}, merge=False)
        assert replaced.metadata == {"c": 3}
        ((stored,),) = raw(database, "SELECT metadata FROM emb_notes WHERE id = %s", [doc])
        assert set(stored) == {"$enc"}
        session = await acme.sessions.create("agent-1", {"step": 1})
        report = await dl.admin.keys.reencrypt("acme", batch_size=1)
        assert report.rewritten == {"emb_notes.metadata": 1, "sessions.data": 1}
        assert (await notes.get(doc)).metadata == {"c": 3}
        assert (await acme.sessions.get(session.id)).data == {"step": 1}
        with pytest.raises(ValidationError, match="batch_size"):
            await dl.admin.keys.reencrypt("acme", batch_size=0)
        with pytest.raises(ValidationError, match="grace"):
            await dl.admin.keys.retire("acme", grace=-1)
        with pytest.raises(ValidationError, match="tenant"):
            await dl.admin.keys.destroy("no such tenant!")


async def test_key_administration_needs_a_key(dl: DataLayer) -> None:
    with pytest.raises(ConfigError, match="no key-encryption key"):
        await dl.admin.keys.rotate()


async def test_exports_give_the_values_not_the_ciphertext(sealed: DataLayer) -> None:
    acme = sealed.tenant("acme")
    await acme.tasks.create("x", {"email": "ann@example.com", "n": 1})
    (plain,) = [row async for row in acme.export("tasks", masked=False)]
    assert plain["data"] == {"email": "ann@example.com", "n": 1}
    (masked,) = [row async for row in acme.export("tasks")]
    assert masked["data"] == {"email": "[email]", "n": 1}


async def test_a_shredded_task_does_not_take_down_the_others_claimed_with_it(
    sealed: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    acme = sealed.tenant("acme")
    agent = await acme.agents.create("w", "worker")
    lost = await acme.tasks.create("mix", {"old": True}, priority=9)
    assert await sealed.admin.keys.destroy("acme")
    kept = [await acme.tasks.create("mix", {"n": i}) for i in range(2)]
    claimed = await acme.tasks.claim(agent.id, ["mix"], n=3)
    assert sorted(t.id for t in claimed) == sorted(t.id for t in kept)
    assert [t.data for t in sorted(claimed, key=lambda t: t.data["n"])] == [{"n": 0}, {"n": 1}]
    ((status, error),) = raw(database, "SELECT status, error FROM tasks WHERE id = %s", [lost.id])
    assert status == "failed"
    assert "cannot be read" in error
    # Key operations are compliance events: in the system trail.
    operations = [r.operation for r in await sealed.admin.system_audit.show(entity_type="keys")]
    assert operations == ["keys.destroy"]
    with pytest.raises(NotFound, match="no data key"):
        await sealed.admin.keys.reencrypt("nobody")
    globex = sealed.tenant("globex")
    await globex.tasks.create("mix", {"n": 1})
    worker = await globex.agents.create("w", "worker")
    (claimed_there,) = await globex.tasks.claim(worker.id, ["mix"])
    assert claimed_there.lease_token is not None
    (row,) = [r async for r in globex.export("tasks", masked=False)]
    assert "lease_token" not in row  # whoever holds it could complete the task


def test_key_commands_say_what_is_wrong_with_the_config(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    for command in (("keys", "list"), ("retention", "run")):
        done = agency_data(
            *command,
            dsn=database,
            redis_url=redis_url,
            tmp_path=tmp_path,
            AGENCY_DATA_ENCRYPTION__FIELDS='["tasks.nope"]',
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert "cannot encrypt 'tasks.nope'" in done.stderr
