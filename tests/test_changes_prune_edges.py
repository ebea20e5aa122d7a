"""The change feed's pruning at its edges: ChangesLost is raised exactly when a change was
missed (never a silent skip, never a reader refused that missed nothing), and changes.max_rows
counts changes kept (not ids, not commits that only published)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agency_data import ChangesLost, DataLayer, DataLayerConfig
from agency_data.outbox import Change
from tests.conftest import DatabaseDsn, make_config


def _config(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, **changes: Any
) -> DataLayerConfig:
    # No background relay: nothing prunes but the test.
    return make_config(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"], "keep": 3600, **changes},
        outbox={"relay": False},
    )


async def _drain(stream: Any) -> list[Change]:
    return [change async for change in stream]


def _seq(cursor: str) -> int:
    return int(cursor.partition("-")[0])


async def _three_then_ten(dl: DataLayer) -> list[Change]:
    """One commit of three changes, then one of ten: with max_rows = 9 the cap prunes exactly
    the first commit. The first commit's changes."""
    async with dl.transaction():
        for n in range(3):
            await dl.agents.create(name=f"a{n}", type="worker")
    first = await _drain(dl.changes(["agents"], since="start", wait=False))
    assert len({_seq(c.cursor) for c in first}) == 1
    return first


async def _ten_more(dl: DataLayer) -> None:
    async with dl.transaction():
        for n in range(10):
            await dl.agents.create(name=f"b{n}", type="worker")


async def test_a_cursor_inside_a_pruned_commit_is_refused_not_skipped(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path, max_rows=9)) as dl:
        first = await _three_then_ten(dl)
        await _ten_more(dl)
        await dl.changes.prune()
        pruned = await dl.admin.fetch_value("SELECT pruned_seq FROM change_feed")
        assert pruned >= _seq(first[0].cursor)  # the cursor's commit went
        try:
            rest = await _drain(dl.changes(["agents"], since=first[0].cursor, wait=False))
        except ChangesLost:
            return
        # Not refused: then the two changes after the cursor must come first.
        assert [c.cursor for c in rest[:2]] == [c.cursor for c in first[1:]]


async def test_a_consumer_inside_the_capped_commit_is_told_it_lost_changes(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path, max_rows=9)) as dl:
        first = await _three_then_ten(dl)
        # A consumer that dealt with the first change only (batch 1: asking for the second
        # saved the first; closing keeps that).
        reading = dl.changes(["agents"], since="start", consumer="mid", batch=1, wait=False)
        await anext(reading)
        await anext(reading)
        await reading.aclose()
        [saved] = await dl.changes.consumers()
        assert saved.cursor == first[0].cursor
        await _ten_more(dl)
        await dl.changes.prune()
        try:
            rest = await _drain(dl.changes(["agents"], consumer="mid", wait=False))
        except ChangesLost:
            return
        assert [c.cursor for c in rest[:2]] == [c.cursor for c in first[1:]]


async def test_since_now_on_a_feed_quiet_past_keep_reads_on(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path, keep=0)) as dl:
        await dl.agents.create(name="old", type="worker")
        await asyncio.sleep(0.05)
        assert await dl.changes.prune() == 1
        await dl.outbox.relay()  # the relays' mark passes the commit (it had no message)
        await dl.outbox.prune()  # and its commit_order row goes: the feed is quiet and empty
        assert await dl.admin.fetch_value("SELECT count(*) FROM commit_order") == 0
        assert await _drain(dl.changes(["agents"], since="now", wait=False)) == []
        now = await dl.changes.position()
        later = await dl.agents.create(name="later", type="worker")
        seen = await _drain(dl.changes(["agents"], since=now, wait=False))
        assert [c.id for c in seen] == [str(later.id)]


async def _slow_consumer(dl: DataLayer) -> None:
    """A named consumer that stopped before the first change (it holds every change back)."""
    await dl.agents.create(name="first", type="worker")
    reading = dl.changes(["agents"], since="start", consumer="slow", batch=1)
    await anext(reading)
    await reading.aclose()


async def test_rolled_back_writes_do_not_count_toward_max_rows(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path, max_rows=20)) as dl:
        await _slow_consumer(dl)
        for n in range(4):
            await dl.agents.create(name=f"a{n}", type="worker")
        with contextlib.suppress(RuntimeError):
            async with dl.transaction():
                for n in range(30):
                    await dl.agents.create(name=f"gone{n}", type="worker")
                raise RuntimeError("roll back")
        await dl.agents.create(name="last", type="worker")
        assert await dl.admin.fetch_value("SELECT count(*) FROM changes") == 6  # < 20
        await dl.changes.prune()
        assert (await dl.changes.status()).lost == 0
        seen = await _drain(dl.changes(["agents"], consumer="slow", wait=False))
        assert len(seen) == 6


async def test_outbox_commits_do_not_count_toward_max_rows(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_config(database, redis_url, tmp_path, max_rows=20)) as dl:
        await _slow_consumer(dl)
        await dl.agents.create(name="second", type="worker")
        for n in range(30):
            async with dl.transaction() as tx:
                await tx.publish("events", {"n": n})
        await dl.changes.prune()
        assert (await dl.changes.status()).lost == 0
        seen = await _drain(dl.changes(["agents"], consumer="slow", wait=False))
        assert [c.new["name"] for c in seen if c.new] == ["first", "second"]
