"""Field encryption's keys at their edges, on the real servers: re-encryption against long
transactions, concurrent runs and odd values; retiring keys; a destroy seen by every process;
damaged key stores and key managers that fail."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, Conflict
from agency_data.security.fields import sealed_key
from agency_data.security.rekey import ReencryptReport
from tests.conftest import DatabaseDsn
from tests.test_encryption import SECRET, encrypted_config, new_kek, raw


@pytest.fixture
def kek() -> str:
    return new_kek()


def superuser(database: DatabaseDsn, query: str, params: Any = None) -> None:
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute(query, params)


async def test_reencrypt_keeps_a_value_sealed_in_a_longer_transaction(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek)
    async with DataLayer(config) as writer, DataLayer(config) as operator:
        acme = writer.tenant("acme")
        await acme.tasks.create("warm", {"w": 1})  # the tenant's key exists
        async with acme.transaction():
            task = await acme.tasks.create("x", SECRET)  # sealed under the old key
            # Another process re-encrypts meanwhile (a CLI run): it cannot see this row.
            await operator.admin.keys.reencrypt("acme")
            # Retiring keeps a key replaced less than its grace ago: this row still needs it.
            assert await operator.admin.keys.retire("acme") == []
        # Committed now, sealed under a key no key store holds any more.
    async with DataLayer(config) as later:  # any other process, or this one restarted
        assert (await later.tenant("acme").tasks.get(task.id)).data == SECRET


async def test_reencrypt_rewrites_sessions_sealed_before_the_field_was_switched_off(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    on = encrypted_config(database, redis_url, tmp_path, kek, fields=["sessions.data"])
    async with DataLayer(on) as dl:
        session = await dl.tenant("acme").sessions.create("agent-1", {"token": "hunter2"})
    # sessions.data no longer chosen; the KEK stays (another field is still encrypted).
    off = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.data"])
    async with DataLayer(off) as dl:
        await dl.admin.keys.reencrypt("acme")
        assert (await dl.tenant("acme").sessions.get(session.id)).data == {"token": "hunter2"}


async def test_reencrypt_terminates_on_a_value_python_cannot_round_trip(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.data"])
    async with DataLayer(config) as dl:
        task = await dl.tenant("acme").tasks.create("x", {"a": 1})
        # Written before tasks.data was chosen, by another client (plain, a precise number).
        superuser(
            database,
            "UPDATE tasks SET data = '{\"amount\": 0.1000000000000000055511151231257827}'::jsonb "
            "WHERE id = %s",
            [task.id],
        )
        await asyncio.wait_for(dl.admin.keys.reencrypt("acme", batch_size=1), timeout=20)
        ((stored,),) = raw(database, "SELECT data FROM tasks WHERE id = %s", [task.id])
        assert sealed_key(stored) is not None


async def test_a_destroyed_key_stops_reading_in_another_process(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek)
    async with DataLayer(config) as admin, DataLayer(config) as reader:
        task = await admin.tenant("acme").tasks.create("x", SECRET)
        assert (await reader.tenant("acme").tasks.get(task.id)).data == SECRET
        assert await admin.admin.keys.destroy("acme")
        await asyncio.sleep(1.5)  # longer than any recheck interval
        with pytest.raises(AgencyDataError):
            await reader.tenant("acme").tasks.get(task.id)


async def test_writes_right_after_a_destroy_elsewhere_are_not_lost(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek)
    async with DataLayer(config) as admin, DataLayer(config) as writer:
        await writer.tenant("acme").tasks.create("x", {"before": 1})
        assert await admin.admin.keys.destroy("acme")
        task = await writer.tenant("acme").tasks.create("x", SECRET)  # a new write
    async with DataLayer(config) as later:
        assert (await later.tenant("acme").tasks.get(task.id)).data == SECRET


async def test_update_metadata_after_switching_the_field_off_keeps_the_old_values(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    on = encrypted_config(database, redis_url, tmp_path, kek, fields=["notes.metadata"])
    async with DataLayer(on) as dl:
        await dl.admin.create_collection("notes", dimension=2)
        notes = dl.tenant("acme").embeddings.collection("notes")
        doc = await notes.store(
            {"entity_type": "d", "entity_id": "1", "vector": [1, 0], "metadata": {"a": 1}}
        )
    off = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.data"])
    async with DataLayer(off) as dl:
        notes = dl.tenant("acme").embeddings.collection("notes")
        assert (await notes.get(doc)).metadata == {"a": 1}  # still reads while switched off
        updated = await notes.update_metadata(doc, {"b": 2})
        assert updated.metadata == {"a": 1, "b": 2}


def _binary_kek(tmp_path: Path) -> Path:
    path = tmp_path / "kek.bin"
    # `openssl rand 32 > kek` (raw bytes, not base64): an easy mistake.
    path.write_bytes(b"\xff" + os.urandom(31))
    path.chmod(0o600)
    return path


async def test_a_binary_kek_file_is_a_config_error(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    from agency_data.errors import ConfigError
    from tests.conftest import make_config

    config = make_config(
        database,
        redis_url,
        tmp_path,
        encryption={"fields": ["tasks.data"], "kek_file": _binary_kek(tmp_path)},
    )
    with pytest.raises(ConfigError):
        async with DataLayer(config):
            pass


async def test_a_damaged_key_store_file_is_an_agency_data_error(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek)
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "acme.json").write_text('{"tenant": "acme", "keys": [')  # torn copy
    async with DataLayer(config) as dl:
        with pytest.raises(AgencyDataError):
            await dl.tenant("acme").tasks.create("x", SECRET)


class _Kms:
    def wrap(self, data_key: bytes, context: Any) -> tuple[str, bytes]:
        return "k", data_key

    def unwrap(self, kek_id: str, wrapped: bytes, context: Any) -> bytes:
        return wrapped


async def test_a_key_manager_class_is_refused_at_connect(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    from agency_data.errors import ConfigError
    from tests.conftest import make_config

    config = make_config(
        database,
        redis_url,
        tmp_path,
        encryption={"fields": ["tasks.data"], "key_store": tmp_path / "keys"},
    )
    try:
        async with DataLayer(config, key_manager=_Kms) as dl:  # type: ignore[arg-type]
            await dl.tenant("acme").tasks.create("x", SECRET)
    except ConfigError:
        return
    pytest.fail("accepted a class as key_manager")


async def test_a_second_reencryption_is_refused_while_one_runs(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.data"])
    async with DataLayer(config) as first, DataLayer(config) as second:
        acme = first.tenant("acme")
        tasks = [await acme.tasks.create("x", {"i": i}) for i in range(5)]

        async def later() -> Any:
            await asyncio.sleep(0.5)
            return await second.admin.keys.reencrypt("acme")

        done = await asyncio.wait_for(
            asyncio.gather(first.admin.keys.reencrypt("acme"), later(), return_exceptions=True),
            timeout=30,
        )
        # One at a time: the second is refused while the first runs, and the first ends.
        assert isinstance(done[0], ReencryptReport)
        assert isinstance(done[1], Conflict)
        for task in tasks:
            assert (await acme.tasks.get(task.id)).data == task.data
