"""An erasure while Redis is down fails, and removes nothing, rather than report success."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agency_data import DataLayer
from agency_data.embedded import EmbeddedValkey
from agency_data.errors import AgencyDataError
from tests.conftest import DatabaseDsn, make_config
from tests.test_subjects import SUBJECT


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "own-valkey")
    server.acquire()
    yield server
    if not server.is_running():
        server.start()
    server.release()


async def test_erase_fails_loudly_when_redis_is_down(
    database: DatabaseDsn, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    config = make_config(
        database,
        valkey.url,
        tmp_path,
        subjects={"tasks": ["user"]},
        cache={"retry_after": 0.05},
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.tasks.create("mail", {"user": SUBJECT})
        await acme.cache.set("profile", {"email": SUBJECT}, tags=["subject:" + SUBJECT])
        client = redis.Redis.from_url(valkey.url)
        client.save()  # the entry survives the restart, as it would a network blip
        client.close()
        await asyncio.to_thread(valkey.stop)
        try:
            report = await dl.subjects.erase("acme", SUBJECT)
            failed = False
        except AgencyDataError:
            report, failed = None, True
        await asyncio.to_thread(valkey.start)
        client = redis.Redis.from_url(valkey.url)
        try:
            left = [k for k in client.scan_iter(match="ad:{acme}:c:*")]
        finally:
            client.close()
        # It failed, and said so, before removing anything: run again, it completes.
        assert (failed, report) == (True, None)
        assert len(left) == 1
        assert len((await acme.tasks.list()).items) == 1
        again = await dl.subjects.erase("acme", SUBJECT)
        assert again.removed == {"tasks": 1, "cache": 1}
