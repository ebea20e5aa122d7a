"""Field encryption on the real servers: values unreadable in PostgreSQL and Redis, round trips
through the API, bound to their row and tenant, key rotation, online re-encryption under
concurrent writes, and crypto-shredding."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from agency_data import DataLayer
from agency_data.errors import ConfigError, DecryptionError
from agency_data.security.fields import sealed_key
from tests.conftest import DatabaseDsn, make_config

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
