"""Data subject rights and the change feed: an erasure leaves no value of the subject in the
feed (the delete stays, its values cleared), and a relay round under way while a tenant is
erased puts nothing back in Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agency_data import DataLayer
from agency_data.config import OutboxConfig
from agency_data.outbox import Relay, redis_sender
from tests.conftest import DatabaseDsn, make_config

SUBJECT = "ann@example.com"


async def test_erasing_a_subject_leaves_no_trace_in_the_change_feed(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        subjects={"tasks": ["user"], "agents": ["owner"]},
        changes={"tables": ["tasks", "agents"]},
        outbox={"relay": False},
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.tasks.create("mail", {"user": SUBJECT})
        await acme.tasks.create("mail", {"user": "bob@example.com"})
        await acme.agents.create("assistant", "w", capabilities={"owner": SUBJECT})
        report = await dl.subjects.erase("acme", SUBJECT)
        assert report.removed == {"tasks": 1, "agents": 1}
        rows = await dl.admin.fetch(
            "SELECT table_name, op, old::text AS old, new::text AS new FROM changes "
            "WHERE tenant_id = 'acme'"
        )
        kept = [r for r in rows if SUBJECT in f"{r['old']} {r['new']}"]
        assert kept == []
        # What the tenant's own feed hands out.
        seen = [c async for c in acme.changes(["tasks", "agents"], since="start", wait=False)]
        assert not [c for c in seen if SUBJECT in f"{c.old} {c.new}"]


async def test_a_relay_round_under_way_puts_nothing_back_after_a_tenant_is_erased(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(config) as dl:
        async with dl.tenant("acme").transaction() as tx:
            await tx.publish("private", {"secret": "acme's"})
        gate, sending = asyncio.Event(), asyncio.Event()
        send = redis_sender(dl.redis)

        async def slow_send(messages: Any) -> list[str | None]:
            # A round that has read its batch and is on its way to Redis (a slow network).
            sending.set()
            await gate.wait()
            return await send(messages)

        relay = Relay(dl.outbox._db, slow_send, OutboxConfig())
        round_under_way = asyncio.create_task(relay.relay())
        await asyncio.wait_for(sending.wait(), 10)
        erasing = asyncio.create_task(dl.subjects.erase_tenant("acme"))
        # Long enough for the erasure to finish unless something makes it wait for the round.
        await asyncio.wait({erasing}, timeout=2)
        gate.set()
        await asyncio.wait_for(round_under_way, 10)
        await asyncio.wait_for(erasing, 10)
        assert [key async for key in dl.redis.scan_iter(match="ad:{acme}:*")] == []
