"""Sealed values at their edges, on the real servers: readers without a key, values that only
look sealed, fields switched off, failures and schedules that would have leaked data in clear,
and a traceback masked in the logs."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from agency_data import DataLayer
from agency_data.errors import DecryptionError
from agency_data.models import Task
from tests.conftest import DatabaseDsn, make_config
from tests.test_encryption import SECRET, TinyKms, encrypted_config, new_kek, raw


@pytest.fixture
def kek() -> str:
    return new_kek()


async def test_plain_data_that_looks_sealed_stays_readable(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    # Encryption on (tasks.result), tasks.data not chosen: data is the caller's, as given.
    config = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.result"])
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.tasks.create("x", {"ok": 1})
        odd = await acme.tasks.create("x", {"$enc": "hello"})
        assert [t.data for t in (await acme.tasks.list()).items] == [{"ok": 1}, {"$enc": "hello"}]
        assert (await acme.tasks.get(odd.id)).data == {"$enc": "hello"}


async def test_an_entity_id_starting_with_the_text_tag_stays_readable(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(database, redis_url, tmp_path, kek, fields=["tasks.data"])
    async with DataLayer(config) as dl:
        await dl.admin.create_collection("notes", dimension=2)
        notes = dl.tenant("acme").embeddings.collection("notes")
        doc = await notes.store({"entity_type": "d", "entity_id": "$enc:1", "vector": [1, 0]})
        assert (await notes.get(doc)).entity_id == "$enc:1"


async def test_a_layer_without_a_key_refuses_sealed_task_data(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        task = await dl.tenant("acme").tasks.create("x", SECRET)
    async with DataLayer(make_config(database, redis_url, tmp_path)) as keyless:
        with pytest.raises(DecryptionError):
            await keyless.tenant("acme").tasks.get(task.id)


async def test_a_layer_without_a_key_refuses_sealed_session_data(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        session = await dl.tenant("acme").sessions.create("agent-1", {"token": "hunter2"})
    async with DataLayer(make_config(database, redis_url, tmp_path)) as keyless:
        with pytest.raises(DecryptionError):
            await keyless.tenant("acme").sessions.get(session.id)


async def test_a_layer_without_a_key_misses_a_sealed_cache_entry(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        await dl.tenant("acme").cache.with_namespace("secrets").set("api", {"key": "sk"})
    async with DataLayer(make_config(database, redis_url, tmp_path)) as keyless:
        cache = keyless.tenant("acme").cache.with_namespace("secrets")
        assert await cache.get("api", "MISS") == "MISS"


async def test_scheduled_task_data_is_not_in_clear(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    async with DataLayer(encrypted_config(database, redis_url, tmp_path, kek)) as dl:
        await dl.tenant("acme").tasks.schedule("nightly", type="x", every=3600, data=SECRET)
    stored = raw(database, "SELECT data::text FROM task_schedules")
    assert "Ann Example" not in str(stored)


async def test_a_failure_does_not_store_the_sealed_data_in_clear(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, kek: str
) -> None:
    config = encrypted_config(
        database, redis_url, tmp_path, kek, fields=["tasks.data", "tasks.error"]
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        agent = await acme.agents.create("doctor", "worker")
        made = await acme.tasks.create("diagnose", SECRET)

        async def handler(task: Task) -> Any:
            raise ValueError(f"no such patient: {task.data['patient']}")

        worker = acme.tasks.worker(handler, agent_id=agent.id)
        await asyncio.wait_for(worker.run(max_tasks=1), timeout=30)
        failed = await acme.tasks.get(made.id)
        assert failed.error is not None
        assert "Ann Example" in failed.error  # opened for the layer's reader
    stored = raw(database, "SELECT error, traceback FROM tasks")
    assert "Ann Example" not in str(stored)


async def test_a_logged_traceback_is_masked(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("agency_data")
    logger.addHandler(handler)
    try:
        async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
            agent = await dl.agents.create("mailer", "worker")
            await dl.tasks.create("mail", {"to": "alice@example.com"})

            async def failing(task: Task) -> Any:
                raise ValueError(f"bounced: {task.data['to']}")

            worker = dl.tasks.worker(failing, agent_id=agent.id)
            await asyncio.wait_for(worker.run(max_tasks=1), timeout=30)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "failed" in text  # the record was written
    assert "alice@example.com" not in text


class SlowKms(TinyKms):
    """A KMS one network round trip away (0.5 s)."""

    def wrap(self, data_key: bytes, context: Any) -> tuple[str, bytes]:
        time.sleep(0.5)
        return super().wrap(data_key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, context: Any) -> bytes:
        time.sleep(0.5)
        return super().unwrap(kek_id, wrapped, context)


async def test_a_kms_round_trip_does_not_block_the_event_loop(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        encryption={"fields": ["tasks.data"], "key_store": tmp_path / "keys"},
    )
    async with DataLayer(config, key_manager=SlowKms()) as dl:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        await dl.tenant("fresh").tasks.create("x", SECRET)  # the tenant's first key: a wrap
        stop.set()
        await ticking
        assert max(gaps) < 0.25
