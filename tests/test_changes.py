"""The change feed (dl.changes), against the real servers: row changes of tracked tables in
commit order, per tenant, resumable by cursor or by a named consumer (also after SIGKILL),
bounded by keep and max_rows with lost consumers told so; and the outbox's delivery of
messages committed by a process killed before it relayed them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from agency_data import (
    ChangesLost,
    ConfigError,
    DataLayer,
    DataLayerConfig,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.outbox import Change
from agency_data.redis.keys import Keys
from tests.conftest import DatabaseDsn, make_config

SCRIPT = Path(__file__).with_name("feed_process.py")


async def _drain(stream: Any) -> list[Change]:
    return [change async for change in stream]


async def _until(stream: Any, count: int, timeout: float = 10.0) -> list[Change]:
    got: list[Change] = []
    async with asyncio.timeout(timeout):
        async for change in stream:
            got.append(change)
            if len(got) == count:
                break
    return got


async def test_inserts_updates_and_deletes_arrive_with_old_and_new_values(dl: DataLayer) -> None:
    assert await dl.changes.track("agents", columns=["name", "status"]) == ["name", "status"]
    assert await dl.changes.tracked() == {"agents": ["name", "status"]}
    stream = dl.changes(["agents"], since="now")
    reader = asyncio.create_task(_until(stream, 3))
    await asyncio.sleep(0.2)  # reading (and waiting) before the writes
    agent = await dl.agents.create(name="a", type="worker")
    await dl.agents.update(agent.id, name="b")
    await dl.execute("UPDATE agents SET capabilities = '{\"x\": 1}' WHERE id = %s", [agent.id])
    await dl.agents.delete(agent.id)
    changes = await reader
    assert [(c.op, c.table, c.id, c.tenant_id) for c in changes] == [
        ("insert", "agents", str(agent.id), "default"),
        ("update", "agents", str(agent.id), "default"),
        ("delete", "agents", str(agent.id), "default"),  # the capabilities update is not tracked
    ]
    assert changes[0].old is None
    assert changes[0].new == {"name": "a", "status": "active"}
    assert changes[1].old == {"name": "a", "status": "active"}
    assert changes[1].new == {"name": "b", "status": "active"}
    assert changes[2].old == {"name": "b", "status": "active"}
    assert changes[2].new is None
    # From a position taken now: only what commits after.
    now = await dl.changes.position()
    later = await dl.agents.create(name="later", type="worker")
    after = await _drain(dl.changes(["agents"], since=now, wait=False))
    assert [(c.op, c.id) for c in after] == [("insert", str(later.id))]
    # Resumed from a cursor: only what came after it.
    rest = await _drain(dl.changes(["agents"], since=changes[0].cursor, wait=False))
    assert [c.cursor for c in rest] == [c.cursor for c in changes[1:]] + [after[0].cursor]


async def test_a_rolled_back_change_is_never_seen(dl: DataLayer) -> None:
    await dl.changes.track("agents")
    start = dl.changes(["agents"], since="now", wait=False)
    assert await _drain(start) == []

    async def rolled_back() -> None:
        async with dl.transaction():
            await dl.agents.create(name="gone", type="worker")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await rolled_back()
    kept = await dl.agents.create(name="kept", type="worker")
    seen = await _drain(dl.changes(["agents"], since="start", wait=False))
    assert [c.id for c in seen] == [str(kept.id)]


async def test_a_rows_changes_come_in_the_order_they_committed(dl: DataLayer) -> None:
    """The second transaction writes first but commits last: its change comes last."""
    await dl.changes.track("agents", columns=["name"])
    agent = await dl.agents.create(name="start", type="worker")
    other = await dl.agents.create(name="other", type="worker")
    first_wrote = asyncio.Event()

    async def late() -> None:
        async with dl.transaction():
            await dl.execute("UPDATE agents SET name = 'late' WHERE id = %s", [other.id])
            first_wrote.set()
            await asyncio.sleep(0.3)
            await dl.execute("UPDATE agents SET name = 'late' WHERE id = %s", [agent.id])

    async def early() -> None:
        await first_wrote.wait()
        await dl.execute("UPDATE agents SET name = 'early' WHERE id = %s", [agent.id])

    await asyncio.gather(late(), early())
    seen = await _drain(dl.changes(["agents"], since="start", wait=False))
    names = [c.new["name"] for c in seen if c.op == "update" and c.new is not None]
    assert names == ["early", "late", "late"]


async def test_each_tenant_reads_only_its_own_changes(dl: DataLayer) -> None:
    await dl.changes.track("agents")
    acme, other = dl.tenant("acme"), dl.tenant("other")
    await acme.agents.create(name="a1", type="worker")
    await other.agents.create(name="o1", type="worker")
    await acme.agents.create(name="a2", type="worker")
    mine = await _drain(acme.changes(["agents"], since="start", wait=False))
    assert [c.new["name"] for c in mine if c.new] == ["a1", "a2"]
    assert {c.tenant_id for c in mine} == {"acme"}
    via_root = await _drain(dl.changes(["agents"], tenant="other", since="start", wait=False))
    assert [c.new["name"] for c in via_root if c.new] == ["o1"]
    # Raw SQL as a tenant sees only its own rows of the feed's table.
    assert await acme.fetch_value("SELECT count(*) FROM changes") == 2
    with pytest.raises(ValidationError):
        acme.changes(["agents"], tenant="other")


async def test_a_reader_walks_past_commits_that_are_not_its_own(dl: DataLayer) -> None:
    """A page walks at most 4 x batch commits: a tenant's change after many of another's
    commits is still found, with and without waiting, and a named consumer's cursor moves
    past the others' commits."""
    await dl.changes.track("agents")
    acme, other = dl.tenant("acme"), dl.tenant("other")
    start = await acme.changes.position()
    for n in range(30):
        await other.agents.create(name=f"o{n}", type="worker")
    mine = await acme.agents.create(name="mine", type="worker")
    quick = await _drain(acme.changes(["agents"], since=start, batch=2, wait=False))
    assert [c.id for c in quick] == [str(mine.id)]
    waiting = await _until(acme.changes(["agents"], since=start, batch=2), 1, timeout=5)
    assert [c.id for c in waiting] == [str(mine.id)]
    reading = acme.changes(["agents"], since=start, consumer="walker", batch=2, wait=False)
    assert len(await _drain(reading)) == 1
    [walker] = await acme.changes.consumers()
    assert _key(walker.cursor) > _key(quick[0].cursor)


async def test_a_named_consumer_resumes_where_it_stopped(dl: DataLayer) -> None:
    await dl.changes.track("tasks", columns=["status"])
    for n in range(5):
        await dl.tasks.create("t", {"n": n})
    reading = dl.changes(["tasks"], since="start", consumer="worker", batch=2)
    async with contextlib.aclosing(reading) as stream:
        first = await _until(stream, 3)
    # Closed after three were handed out: the third may not have been dealt with (the caller
    # may have broken out of its loop on an error), so the cursor saved is the second's.
    [saved] = await dl.changes.consumers()
    assert (saved.name, saved.cursor, saved.behind) == ("worker", first[1].cursor, 3)
    rest = await _drain(dl.changes(["tasks"], consumer="worker", wait=False))
    assert [c.cursor for c in rest][:1] == [first[2].cursor]
    assert len(rest) == 3
    # A since given to a consumer that exists is where a new one would start: it resumes.
    await dl.tasks.create("t", {"n": 5})
    [later] = await _drain(dl.changes(["tasks"], since="now", consumer="worker", wait=False))
    assert later.new is not None
    await dl.changes.drop("worker")
    assert await dl.changes.consumers() == []
    with pytest.raises(NotFound):
        await dl.changes.drop("worker")


async def test_the_cap_prunes_the_oldest_marks_the_laggard_lost_and_says_so(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"], "max_rows": 20, "keep": 3600},
        outbox={"relay": False},
    )
    async with DataLayer(config) as dl:
        await dl.agents.create(name="first", type="worker")
        # A consumer that reads one change and stops: it holds the rest back...
        await _until(dl.changes(["agents"], since="start", consumer="slow"), 1, timeout=2)
        for n in range(14):
            await dl.agents.create(name=f"a{n}", type="worker")
        await dl.changes.prune()
        assert (await dl.changes.status()).retained == 15  # keep is an hour: all kept
        # ...until the feed passes its cap.
        for n in range(30):
            await dl.agents.create(name=f"b{n}", type="worker")
        await dl.changes.prune()
        status = await dl.changes.status()
        assert status.retained <= 21
        assert status.lost == 1
        assert "changes.max_rows = 20" in caplog.text
        with pytest.raises(ChangesLost) as lost:
            await _drain(dl.changes(["agents"], consumer="slow", wait=False))
        assert "dl.changes.drop('slow')" in str(lost.value)
        await dl.changes.drop("slow")
        # The newest changes are still there for a new reader.
        fresh = await _drain(dl.changes(["agents"], since="start", wait=False))
        assert fresh[-1].new == {**fresh[-1].new, "name": "b29"}


async def test_changes_older_than_keep_are_pruned_and_their_cursors_refused(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, changes={"tables": ["agents"], "keep": 0})
    async with DataLayer(config) as dl:
        await dl.outbox.aclose()  # prune only when told
        await dl.agents.create(name="old", type="worker")
        [old] = await _drain(dl.changes(["agents"], since="start", wait=False))
        await dl.agents.create(name="new", type="worker")
        await asyncio.sleep(0.05)
        assert await dl.changes.prune() == 2
        with pytest.raises(ChangesLost):
            await _drain(dl.changes(["agents"], since=old.cursor, wait=False))
        await dl.outbox.relay()  # the relays' mark passes the commits: none had messages
        await dl.outbox.prune()
        assert await dl.fetch_value("SELECT count(*) FROM commit_order") == 0


async def test_bad_input(dl: DataLayer) -> None:
    await dl.changes.track("agents")
    for tables in (None, "agents", [], ["Agents"], ["agents; drop"], [1]):
        with pytest.raises(ValidationError):
            dl.changes(tables)
    for since in ("yesterday", "1-", "-1", 5, "99999999999999999999-1"):
        with pytest.raises(ValidationError):
            dl.changes(["agents"], since=since)
    for kwargs in ({"consumer": ""}, {"consumer": "a b"}, {"batch": 0}, {"wait": "yes"}):
        with pytest.raises(ValidationError):
            dl.changes(["agents"], **kwargs)
    with pytest.raises(ValidationError):
        dl.changes(["agents"], tenant="bad tenant")
    ahead = f"{int((await dl.changes.position()).partition('-')[0]) + 1000}-0"
    with pytest.raises(ValidationError, match="ahead of this feed"):
        await _drain(dl.changes(["agents"], since=ahead, wait=False))
    with pytest.raises(NotFound):
        await dl.changes.track("no_such_table")
    with pytest.raises(ValidationError, match="at least one column"):
        await dl.changes.track("agents", columns=[])
    with pytest.raises(ConfigError, match="not a table name"):
        DataLayerConfig(changes={"tables": ["Tasks"]})
    with pytest.raises(UsageError, match="track it first"):
        await _drain(dl.changes(["tasks"], wait=False))
    for table in ("changes", "commit_order", "embedding_collections"):
        with pytest.raises(ValidationError):
            await dl.changes.track(table)
    with pytest.raises(ValidationError, match="no column"):
        await dl.changes.track("agents", columns=["name", "colour"])
    assert await dl.changes.untrack("tasks") is False
    assert await dl.changes.untrack("agents") is True
    assert await dl.changes.tracked() == {}


async def test_status_counts_changes_not_the_ids_rollbacks_used(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database, redis_url, tmp_path, changes={"tables": ["agents"], "max_rows": 20}
    )
    async with DataLayer(config) as dl:
        agent = await dl.agents.create(name="a", type="worker")

        async def rolled_back() -> None:
            async with dl.transaction():
                for _ in range(30):  # thirty ids of changes, none kept
                    await dl.execute(
                        "UPDATE agents SET version = version + 1 WHERE id = %s", [agent.id]
                    )
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await rolled_back()
        await dl.agents.update(agent.id, name="b")
        assert (await dl.changes.status()).retained == 2


async def test_cancelling_a_waiting_read(dl: DataLayer) -> None:
    await dl.changes.track("agents")
    await dl.agents.create(name="early", type="worker")
    stream = dl.changes(["agents"], since="start", consumer="waiter")
    assert (await anext(stream)).new["name"] == "early"  # type: ignore[index]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.5)
    # The cancelled read ended the iteration, its place saved: a new one goes on from there.
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    await dl.agents.create(name="late", type="worker")
    again = dl.changes(["agents"], consumer="waiter")
    # Asking for the next one had marked "early" dealt with.
    names = [c.new["name"] for c in await _until(again, 1, timeout=5) if c.new]
    assert names == ["late"]


# -- ten writers, a consumer killed twice -------------------------------------------------------


async def _consumer(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with (log.parent / "consumer.stderr").open("ab") as errors:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            str(SCRIPT),
            "consume",
            str(log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, **env},
        )


def _key(cursor: str) -> tuple[int, int]:
    seq, _, change_id = cursor.partition("-")
    return int(seq), int(change_id)


async def test_ten_writers_and_a_consumer_killed_twice_miss_and_repeat_nothing(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    await dl.changes.track("agents", columns=["version"])
    acme, other = dl.tenant("acme"), dl.tenant("other")
    agents = [await acme.agents.create(name=f"r{n}", type="worker") for n in range(6)]
    await other.agents.create(name="elsewhere", type="worker")
    env = {
        "FEED_DSN": str(database),
        "FEED_ADMIN_DSN": database.owner,
        "FEED_REDIS_URL": redis_url,
    }
    log = tmp_path / "changes.jsonl"
    writing = True

    async def writer(w: int) -> None:
        rng = random.Random(w)
        while writing:
            # Several rows per transaction, in no fixed order: commits interleave.
            async with acme.transaction():
                # Rows locked in one order by every writer: no deadlocks.
                for agent in sorted(rng.sample(agents, 2), key=lambda a: a.id):
                    await acme.execute(
                        "UPDATE agents SET version = version + 1 WHERE id = %s", [agent.id]
                    )
            await other.execute("UPDATE agents SET version = version + 1")
            await asyncio.sleep(rng.random() * 0.02)

    writers = [asyncio.create_task(writer(w)) for w in range(10)]
    try:
        for _ in range(2):
            process = await _consumer(env, log)
            await asyncio.sleep(2.0)
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
    finally:
        writing = False
        await asyncio.gather(*writers)
    # The third run reads to the end (of what is committed by now) and is stopped too.
    process = await _consumer(env, log)
    final = {str(a.id): v for a, v in await _versions(acme, agents)}
    async with asyncio.timeout(60):
        while _latest_versions(log) != final:
            assert process.returncode is None, (tmp_path / "consumer.stderr").read_text()
            await asyncio.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    await process.wait()

    runs: list[tuple[str | None, list[dict[str, Any]]]] = []
    for line in log.read_bytes().splitlines():
        record = orjson.loads(line)
        if "start" in record:
            runs.append((record["start"], []))
        else:
            runs[-1][1].append(record)
    assert len(runs) == 3
    assert all(changes for _, changes in runs)
    seen: dict[str, dict[str, Any]] = {}
    for start, changes in runs:
        cursors = [_key(c["cursor"]) for c in changes]
        assert cursors == sorted(set(cursors)), "out of order or repeated within a run"
        if start is not None:
            assert cursors[0] > _key(start), "a change at or before the resumed cursor came again"
        for change in changes:
            assert change["tenant_id"] == "acme"
            seen[change["cursor"]] = change
    # Every row's versions, in commit order, one after another from 1: none missed, none twice.
    by_row: dict[str, list[int]] = defaultdict(list)
    for cursor in sorted(seen, key=_key):
        change = seen[cursor]
        by_row[change["id"]].append(change["new"]["version"])
    assert set(by_row) == set(final)
    for row, versions in by_row.items():
        assert versions == list(range(1, final[row] + 1)), row
    assert sum(final.values()) > 100  # the writers did write while it was killed


async def _versions(scope: Any, agents: list[Any]) -> list[tuple[Any, int]]:
    rows = await scope.fetch(
        "SELECT id, version FROM agents WHERE id = ANY(%s)", [[a.id for a in agents]]
    )
    by_id = {r["id"]: r["version"] for r in rows}
    return [(a, by_id[a.id]) for a in agents]


def _latest_versions(log: Path) -> dict[str, int]:
    latest: dict[str, int] = {}
    if not log.exists():
        return latest
    for line in log.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut short by the kill
        if "id" in record and record["new"]:
            latest[record["id"]] = max(latest.get(record["id"], 0), record["new"]["version"])
    return latest


async def test_messages_committed_by_a_process_killed_before_relaying_arrive_once(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    env = {"FEED_DSN": str(database), "FEED_ADMIN_DSN": database.owner, "FEED_REDIS_URL": redis_url}
    # This process relays only when told (a running relay would be woken by the commit).
    config = make_config(database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(config) as dl:
        with (tmp_path / "publisher.stderr").open("ab") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-u",
                str(SCRIPT),
                "publish",
                "50",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                env={**os.environ, **env},
            )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line.strip() == b"committed", (tmp_path / "publisher.stderr").read_text()
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        # Nothing was relayed by the killed process (it had no relay); this one sends them.
        assert await dl.fetch_value("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 50
        await dl.outbox.relay()
        stream = Keys("default").stream("kill")
        entries = await dl.redis.xrange(stream)
        assert [orjson.loads(fields[b"d"])["n"] for _, fields in entries] == list(range(50))
        await dl.outbox.relay()
        assert len(await dl.redis.xrange(stream)) == 50
