"""Store events: task, agent and embedding changes published through the outbox by triggers in
the changes' own transactions (``events`` config), and ``dl.events.subscribe`` reading them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agency_data import DataLayer, Event, ValidationError
from agency_data.redis.keys import Keys
from tests.conftest import DatabaseDsn, make_config
from tests.test_outbox_edges import single_role_database  # noqa: F401 - a fixture

ALL_ON = {"tasks": True, "agents": True, "embeddings": True}


@pytest.fixture
async def edl(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A DataLayer publishing every store's events, relaying often."""
    config = make_config(
        database,
        redis_url,
        tmp_path,
        events=ALL_ON,
        outbox={"interval": 0.1},
        vector={"dimension": 3},
    )
    async with DataLayer(config) as layer:
        yield layer


class Listening:
    """A subscription stepped in the background: ``await listening.next()`` the next event."""

    def __init__(self, events: AsyncIterator[Event]) -> None:
        self.events = events
        self.got: asyncio.Queue[Event] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.events:
            await self.got.put(event)

    async def next(self, wait: float = 10.0) -> Event:
        return await asyncio.wait_for(self.got.get(), wait)

    async def nothing_more(self, dl: DataLayer, wait: float = 0.5) -> None:
        """Everything committed relayed, and no event beyond what was taken."""
        await dl.outbox.relay()
        await asyncio.sleep(wait)
        assert self.got.empty(), self.got.get_nowait()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.events.aclose()  # type: ignore[attr-defined]


async def _readers(dl: DataLayer) -> int:
    """Clients waiting in a blocking read now (flag b; cmd would name an idle one's last)."""
    clients = await dl.redis.client_list()
    return sum(1 for c in clients if "b" in c.get("flags", ""))


async def _first_read(dl: DataLayer, events: AsyncIterator[Event]) -> asyncio.Future[Event]:
    """``anext(events)`` under way, once its read waits in Redis."""
    before = await _readers(dl)
    step = asyncio.ensure_future(anext(events))
    async with asyncio.timeout(10):
        while await _readers(dl) <= before:
            assert not step.done(), step.result()
            await asyncio.sleep(0.01)
    return step


@contextlib.asynccontextmanager
async def listening(dl: DataLayer, events: AsyncIterator[Event]) -> AsyncIterator[Listening]:
    """``events`` read in the background, from once its first read waits in Redis."""
    before = await _readers(dl)
    subscription = Listening(events)
    try:
        async with asyncio.timeout(10):
            while await _readers(dl) <= before:
                assert not subscription.task.done(), subscription.task.result()
                await asyncio.sleep(0.01)
        yield subscription
    finally:
        await subscription.stop()


async def _outbox_rows(dl: DataLayer) -> int:
    count: int = await dl.admin.fetch_value("SELECT count(*) FROM outbox")
    return count


# -- tasks --------------------------------------------------------------------------------------


async def test_a_completed_task_of_the_type_asked_for_is_delivered_and_no_other(
    edl: DataLayer,
) -> None:
    agent = await edl.agents.create(name="worker", type="w")
    async with listening(edl, edl.events.subscribe("task.completed", type="X")) as sub:
        other = await edl.tasks.create("Y")
        wanted = await edl.tasks.create("X", priority=7)
        (claimed_other,) = await edl.tasks.claim(agent.id, types=["Y"])
        await edl.tasks.complete(claimed_other, {"big": "x" * 1000})
        (claimed,) = await edl.tasks.claim(agent.id, types=["X"])
        await edl.tasks.complete(claimed, {"secret": "result"})
        event = await sub.next()
        # Y's completion was relayed first (same stream, earlier commit): filtered out.
        assert event.event == "task.completed"
        assert event.id == str(wanted.id)
        assert event.fields["type"] == "X"
        assert event.fields["status"] == "completed"
        assert event.fields["previous"] == "running"
        assert event.fields["agent"] == str(agent.id)
        assert event.fields["priority"] == 7
        assert event.fields["attempts"] == 1
        # Never the payload or the result.
        assert "data" not in event.fields
        assert "result" not in event.fields
        assert event.at is not None
        assert event.at.utcoffset() is not None
        assert event.outbox_id is not None
        assert uuid.UUID(event.outbox_id)
        await sub.nothing_more(edl)
    assert other.id != wanted.id


async def test_every_status_change_is_an_event_in_order(edl: DataLayer) -> None:
    agent = await edl.agents.create(name="worker", type="w")
    async with listening(edl, edl.events.subscribe("task.*")) as sub:
        task = await edl.tasks.create("job")
        async with edl.transaction():
            (claimed,) = await edl.tasks.claim(agent.id)
            await edl.tasks.fail(claimed, "boom", retry=False)
        seen = [(await sub.next()).event for _ in range(3)]
        assert seen == ["task.created", "task.running", "task.failed"]
        # A raw UPDATE is a status change like any other.
        await edl.execute("UPDATE tasks SET status = 'pending' WHERE id = %s", [task.id])
        back = await sub.next()
        assert (back.event, back.fields["previous"]) == ("task.pending", "failed")
        await sub.nothing_more(edl)


async def test_a_rollback_publishes_nothing(edl: DataLayer) -> None:
    async def fail_inside() -> None:
        async with edl.transaction():
            await edl.tasks.create("never")
            await edl.agents.create(name="ghost", type="g")
            await edl.execute("INSERT INTO tasks (type) VALUES ('raw-never')")
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        await fail_inside()
    assert await _outbox_rows(edl) == 0
    # A savepoint rolled back takes its events; the rest of the transaction keeps its own.
    async with listening(edl, edl.events.subscribe("task.created")) as sub:
        async with edl.transaction():
            kept = await edl.tasks.create("kept")
            with contextlib.suppress(RuntimeError):
                async with edl.transaction():
                    await edl.tasks.create("dropped")
                    raise RuntimeError
        assert (await sub.next()).id == str(kept.id)
        await sub.nothing_more(edl)
    assert await _outbox_rows(edl) == 1


async def test_with_events_off_a_write_leaves_no_outbox_row(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="worker", type="w")
    await dl.tasks.create("job")
    (claimed,) = await dl.tasks.claim(agent.id)
    await dl.tasks.complete(claimed)
    await dl.agents.update(agent.id, status="inactive")
    await dl.agents.delete(agent.id)
    notes = await dl.embeddings.create_collection("notes", dimension=3)
    (stored,) = await notes.store_many(
        [{"entity_type": "n", "entity_id": "1", "vector": [1, 0, 0]}]
    )
    await notes.delete([stored])
    assert await _outbox_rows(dl) == 0


async def test_one_store_on_publishes_only_that_stores_events(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, events={"agents": True})
    async with DataLayer(config) as dl:
        await dl.tasks.create("job")
        agent = await dl.agents.create(name="a", type="t")
        rows = await dl.admin.fetch("SELECT destination, message FROM outbox")
    assert [r["destination"] for r in rows] == ["events:agent.created"]
    assert rows[0]["message"]["id"] == str(agent.id)


async def test_a_transaction_can_turn_its_events_off(edl: DataLayer) -> None:
    async with edl.transaction() as tx:
        await tx.conn.execute("SET LOCAL agency_data.events = ''")
        await edl.tasks.create("bulk")
    assert await _outbox_rows(edl) == 0


# -- agents -------------------------------------------------------------------------------------


async def test_an_agents_life_is_published(edl: DataLayer) -> None:
    async with listening(edl, edl.events.subscribe("agent.*")) as sub:
        agent = await edl.agents.create(name="planner", type="coordinator")
        await edl.agents.update(agent.id, name="renamed")  # no status change: no event
        await edl.agents.update(agent.id, status="maintenance")
        await edl.agents.delete(agent.id)
        created, paused, deleted = [await sub.next() for _ in range(3)]
        await sub.nothing_more(edl)
    assert (created.event, created.fields["status"], created.fields["previous"]) == (
        "agent.created",
        "active",
        None,
    )
    assert (paused.event, paused.fields["previous"], paused.fields["name"]) == (
        "agent.maintenance",
        "active",
        "renamed",
    )
    assert (deleted.event, deleted.id, deleted.fields["type"]) == (
        "agent.deleted",
        str(agent.id),
        "coordinator",
    )


# -- embeddings ---------------------------------------------------------------------------------


async def test_embedding_writes_are_one_event_per_statement(edl: DataLayer) -> None:
    notes = await edl.embeddings.create_collection("notes", dimension=3)
    items = [
        {"id": f"n{i}", "entity_type": "note", "entity_id": str(i), "vector": [1, i, 0]}
        for i in range(5)
    ]
    async with listening(edl, edl.events.subscribe("embedding.*", collection="notes")) as sub:
        await notes.store_many(items)
        stored = await sub.next()
        assert (stored.event, stored.id) == ("embedding.stored", None)
        assert stored.fields["count"] == 5
        assert sorted(stored.fields["ids"]) == [f"n{i}" for i in range(5)]
        # Replacing is storing too (the upsert's UPDATE side).
        await notes.store({**items[0], "vector": [0, 0, 1]})
        again = await sub.next()
        assert (again.event, again.fields["count"], again.fields["ids"]) == (
            "embedding.stored",
            1,
            ["n0"],
        )
        assert await notes.delete(["n1", "n2", "absent"]) == 2
        gone = await sub.next()
        assert (gone.event, gone.fields["count"], sorted(gone.fields["ids"])) == (
            "embedding.deleted",
            2,
            ["n1", "n2"],
        )
        # A delete that finds nothing publishes nothing; raw SQL publishes like the store.
        assert await notes.delete(["absent"]) == 0
        await edl.execute("DELETE FROM emb_notes WHERE id = 'n3'")
        raw = await sub.next()
        assert (raw.event, raw.fields["ids"]) == ("embedding.deleted", ["n3"])
        await sub.nothing_more(edl)


async def test_a_big_write_lists_a_thousand_ids_and_counts_them_all(edl: DataLayer) -> None:
    notes = await edl.embeddings.create_collection("bulk", dimension=3)
    await notes.store_many(
        {"entity_type": "n", "entity_id": str(i), "vector": [1, i, 0]} for i in range(1500)
    )
    rows = await edl.admin.fetch("SELECT message FROM outbox ORDER BY id")
    assert sum(r["message"]["count"] for r in rows) == 1500
    assert all(len(r["message"]["ids"]) == min(1000, r["message"]["count"]) for r in rows)
    # One message per INSERT statement (the store sends a slice of rows each).
    assert len(rows) <= 2


# -- subscriptions ------------------------------------------------------------------------------


async def test_a_live_tail_starts_at_now(edl: DataLayer) -> None:
    before = await edl.tasks.create("job")
    await edl.outbox.relay()
    async with listening(edl, edl.events.subscribe("task.created")) as sub:
        after = await edl.tasks.create("job")
        assert (await sub.next()).id == str(after.id)
        await sub.nothing_more(edl)
    assert before.id != after.id


async def test_a_tenant_sees_only_its_own_events(edl: DataLayer) -> None:
    a, b = edl.tenant("a"), edl.tenant("b")
    async with listening(edl, a.events.subscribe("task.created")) as sub:
        await b.tasks.create("job")
        await b.execute("INSERT INTO tasks (tenant_id, type) VALUES ('b', 'raw')")
        mine = await a.tasks.create("job")
        event = await sub.next()
        assert event.id == str(mine.id)
        await sub.nothing_more(edl)
    # b's events went to b's stream.
    key = Keys("b").stream("events:task.created")
    assert await edl.redis.xlen(key) == 2


async def test_a_durable_group_resumes_where_it_left_off(edl: DataLayer) -> None:
    first = await edl.tasks.create("job")  # before the group: not its
    await edl.outbox.relay()
    subscription = edl.events.subscribe("task.created", group="mailer", consumer="m1")
    waiting = await _first_read(edl, subscription)
    one = await edl.tasks.create("job")
    two = await edl.tasks.create("job")
    assert (await asyncio.wait_for(waiting, 10)).id == str(one.id)
    assert (await asyncio.wait_for(anext(subscription), 10)).id == str(two.id)
    await subscription.aclose()
    # Asking for the second acknowledged the first; the second was being handled.
    assert await edl.streams.pending("events:task.created", "mailer") == 1
    # Events relayed while nobody listened wait for the group.
    three = await edl.tasks.create("job")
    await edl.outbox.relay()
    again = edl.events.subscribe("task.created", group="mailer", consumer="m1")
    assert (await asyncio.wait_for(anext(again), 10)).id == str(three.id)
    await again.aclose()
    assert first.id not in {one.id, two.id, three.id}


async def test_copies_from_a_relay_that_sent_twice_are_skipped(edl: DataLayer) -> None:
    key = Keys("default").stream("events:task.created")
    async with (
        listening(edl, edl.events.subscribe("task.created")) as deduped,
        listening(edl, edl.events.subscribe("task.created", dedupe=False)) as everything,
    ):
        task = await edl.tasks.create("job")
        original = await deduped.next()
        assert (await everything.next()).entry == original.entry
        # What a relay that sent and died before marking the row sent would send again.
        (entry,) = await edl.redis.xrange(key)
        await edl.redis.xadd(key, entry[1])
        copy = await everything.next()
        assert (copy.outbox_id, copy.id) == (original.outbox_id, str(task.id))
        assert copy.entry != original.entry
        await deduped.nothing_more(edl)


async def test_an_entry_that_is_not_an_event_is_skipped(edl: DataLayer) -> None:
    async with listening(edl, edl.events.subscribe("task.created")) as sub:
        await edl.streams.publish("events:task.created", {"hand": "made"})
        task = await edl.tasks.create("job")
        assert (await sub.next()).id == str(task.id)


@pytest.mark.parametrize("group", [None, "waiters"])
async def test_a_waiting_subscription_can_be_cancelled(edl: DataLayer, group: str | None) -> None:
    subscription = edl.events.subscribe("task.completed", group=group)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(subscription), 0.5)
    await subscription.aclose()
    # The client is fine afterwards, and a new subscription works.
    async with listening(edl, edl.events.subscribe("task.created", group=group)) as sub:
        task = await edl.tasks.create("job")
        assert (await sub.next()).id == str(task.id)


BAD: list[tuple[Callable[[DataLayer], Any], str]] = [
    (lambda dl: dl.events.subscribe("task.finished"), "event"),
    (lambda dl: dl.events.subscribe("task"), "event"),
    (lambda dl: dl.events.subscribe("*"), "event"),
    (lambda dl: dl.events.subscribe("tasks.*"), "event"),
    (lambda dl: dl.events.subscribe(5), "event"),
    (lambda dl: dl.events.subscribe("task.completed", typ="X"), "typ"),
    (lambda dl: dl.events.subscribe("task.completed", name="X"), "name"),
    (lambda dl: dl.events.subscribe("embedding.stored", type="X"), "type"),
    (lambda dl: dl.events.subscribe("task.completed", **{"": 1}), "match"),
    (lambda dl: dl.events.subscribe("task.completed", type=["X"]), "type"),
    (lambda dl: dl.events.subscribe("task.completed", priority=float("nan")), "priority"),
    (lambda dl: dl.events.subscribe("task.completed", dedupe="yes"), "dedupe"),
    (lambda dl: dl.events.subscribe("task.completed", consumer="c1"), "consumer"),
    (lambda dl: dl.events.subscribe("task.completed", group=""), "group"),
    (lambda dl: dl.events.subscribe("task.completed", group="g", consumer=5), "consumer"),
    (lambda dl: dl.events.subscribe("task.*", group="g"), "event"),
]


@pytest.mark.parametrize(("call", "field"), BAD)
async def test_bad_subscriptions_are_refused(
    dl: DataLayer, call: Callable[[DataLayer], Any], field: str
) -> None:
    subscription = call(dl)
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(anext(subscription), 5)
    assert info.value.field == field, str(info.value)
    await subscription.aclose()


async def test_match_takes_uuids_and_enums(edl: DataLayer) -> None:
    from agency_data import TaskStatus

    agent = await edl.agents.create(name="worker", type="w")
    mine = edl.events.subscribe("task.running", agent=agent.id, status=TaskStatus.RUNNING)
    async with listening(edl, mine) as sub:
        await edl.tasks.create("job")
        (claimed,) = await edl.tasks.claim(agent.id)
        assert (await sub.next()).id == str(claimed.id)


async def test_the_layers_own_sweeps_publish_too(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # Retention runs as the owner, on the admin pool; lease rescue on the application's.
    config = make_config(
        database,
        redis_url,
        tmp_path,
        events=ALL_ON,
        outbox={"relay": False},
        retention={"policies": [{"target": "notes", "older_than": 0.01}]},
    )
    async with DataLayer(config) as dl:
        notes = await dl.embeddings.create_collection("notes", dimension=3)
        await notes.store_many(
            {"entity_type": "n", "entity_id": str(i), "vector": [1, i, 0]} for i in range(3)
        )
        agent = await dl.agents.create(name="worker", type="w")
        await dl.tasks.create("job")
        await dl.tasks.claim(agent.id, lease_seconds=0.05)
        await asyncio.sleep(0.2)
        assert await dl.tasks.sweep() == {"pending": 1, "dead": 0}
        await dl.retention.run()
        rows = await dl.admin.fetch("SELECT message FROM outbox ORDER BY id")
    events = [r["message"]["event"] for r in rows]
    assert events[-2:] == ["task.pending", "embedding.deleted"]
    assert rows[-1]["message"]["count"] == 3


async def test_events_are_written_where_one_role_does_everything(
    single_role_database: str,  # noqa: F811 - the fixture imported above
    redis_url: str,
    tmp_path: Path,
) -> None:
    # No BYPASSRLS anywhere: the triggers' outbox rows pass the tenant's own policy.
    config = make_config(
        single_role_database, redis_url, tmp_path, events=ALL_ON, outbox={"relay": False}
    )
    async with DataLayer(config) as dl:
        a, b = dl.tenant("a"), dl.tenant("b")
        await a.agents.create(name="a-agent", type="w")
        await b.tasks.create("b-job")
        await a.embeddings.store({"entity_type": "n", "entity_id": "1", "vector": [0.1] * 768})
        rows = await dl.admin.fetch("SELECT tenant_id, destination FROM outbox ORDER BY id")
        assert await b.fetch_value("SELECT count(*) FROM outbox") == 1
    assert [(r["tenant_id"], r["destination"]) for r in rows] == [
        ("a", "events:agent.created"),
        ("b", "events:task.created"),
        ("a", "events:embedding.stored"),
    ]
