"""The change feed's and the outbox's shared bookkeeping (migration 0016): commit_order,
outbox_relay and change_feed hold no tenant_id, and only the owner writes them (security/roles.py
leaves the application role SELECT): one tenant's raw SQL cannot stop another tenant's messages
or changes from being delivered."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from agency_data import AgencyDataError, DataLayer, DataLayerConfig
from agency_data.redis.keys import Keys
from tests.conftest import DatabaseDsn, make_config

SABOTAGE = [
    # The relays' mark moved past every commit there will be for a while.
    "UPDATE outbox_relay SET seq = seq + 1000000",
    # A commit row far ahead: the relays' mark follows it, and readers' "now" too.
    "INSERT INTO commit_order (seq, xid) VALUES (1000000, '3')",
    # Every commit row gone: what they numbered is never walked again.
    "DELETE FROM commit_order",
]


def _config(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> DataLayerConfig:
    return make_config(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"]},
        outbox={"relay": False},
    )


async def _entries(dl: DataLayer, tenant: str, stream: str) -> list[Any]:
    found = await dl.redis.xrange(Keys(tenant).stream(stream))
    return [orjson.loads(fields[b"d"]) for _, fields in found]


@pytest.mark.parametrize("statement", SABOTAGE)
async def test_one_tenants_sql_cannot_stop_anothers_messages(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, statement: str
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path)) as dl:
        acme, mallory = dl.tenant("acme"), dl.tenant("mallory")
        async with acme.transaction() as tx:
            await tx.publish("orders", {"n": "before"})
        with contextlib.suppress(AgencyDataError):  # refused: the fix
            await mallory.execute(statement)
        await dl.outbox.relay()
        async with acme.transaction() as tx:
            await tx.publish("orders", {"n": "after"})
        await dl.outbox.relay()
        assert await _entries(dl, "acme", "orders") == [{"n": "before"}, {"n": "after"}]


@pytest.mark.parametrize(
    "statement", ["UPDATE change_feed SET pruned_seq = pruned_seq + 1000000", *SABOTAGE[1:]]
)
async def test_one_tenants_sql_cannot_hide_anothers_changes(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, statement: str
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path)) as dl:
        acme, mallory = dl.tenant("acme"), dl.tenant("mallory")
        await acme.agents.create(name="before", type="worker")
        with contextlib.suppress(AgencyDataError):  # refused: the fix
            await mallory.execute(statement)
        now = await acme.changes.position()
        await acme.agents.create(name="after", type="worker")
        seen = [c async for c in acme.changes(["agents"], since="start", wait=False)]
        assert [c.new["name"] for c in seen if c.new] == ["before", "after"]
        later = [c async for c in acme.changes(["agents"], since=now, wait=False)]
        assert [c.new["name"] for c in later if c.new] == ["after"]
