"""The transactional outbox: a message published in a transaction reaches Redis if and only if
the transaction commits, in order, at least once, and consumers can deduplicate it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agency_data import DataLayer, UsageError, ValidationError
from agency_data.embedded import EmbeddedValkey
from agency_data.models import StreamMessage
from tests.conftest import DatabaseDsn, make_config


async def _read(dl: Any, stream: str, want: int, *, dedupe: bool = False) -> list[Any]:
    """The messages of ``stream`` a fresh consumer group gets, until ``want`` or 10 s."""
    got: list[StreamMessage] = []

    async def collect() -> None:
        async for message in dl.streams.consume(stream, "readers", "r1", block=0.1, dedupe=dedupe):
            got.append(message)
            await dl.streams.ack(stream, "readers", message.id)
            if len(got) >= want:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), 10)
    return [m.data for m in got]


async def test_a_commit_delivers_its_messages_in_order(dl: DataLayer) -> None:
    async with dl.transaction() as tx:
        ids = [await tx.publish("events", {"n": n}) for n in range(5)]
        await dl.agents.create(name="planner", type="coordinator")
    assert len(set(ids)) == 5
    assert await _read(dl, "events", 5) == [{"n": n} for n in range(5)]


async def test_a_rollback_delivers_nothing(dl: DataLayer) -> None:
    async def publish_then_fail() -> None:
        async with dl.transaction() as tx:
            await tx.publish("events", {"n": "never"})
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        await publish_then_fail()
    async with dl.transaction() as tx:
        await tx.publish("events", {"n": "after"})
    assert await _read(dl, "events", 2) == [{"n": "after"}]
    # A savepoint rolled back takes its messages with it; the rest of the transaction goes on.
    async with dl.transaction() as tx:
        await tx.publish("other", {"n": 1})
        with contextlib.suppress(RuntimeError):
            async with dl.transaction() as inner:
                await inner.publish("other", {"n": "rolled back"})
                raise RuntimeError
        await tx.publish("other", {"n": 2})
    assert await _read(dl, "other", 3) == [{"n": 1}, {"n": 2}]


async def test_each_tenant_publishes_to_its_own_streams(dl: DataLayer) -> None:
    acme, globex = dl.tenant("acme"), dl.tenant("globex")
    async with acme.transaction() as tx:
        await tx.publish("events", {"who": "acme"})
    async with globex.transaction() as tx:
        await tx.publish("events", {"who": "globex"})
    assert await _read(acme, "events", 1) == [{"who": "acme"}]
    assert await _read(globex, "events", 1) == [{"who": "globex"}]
    # And the application sees only its own tenant's rows of the outbox.
    assert await acme.fetch_value("SELECT count(*) FROM outbox") == 1


async def test_channels_too(dl: DataLayer) -> None:
    received: list[Any] = []

    async def listen() -> None:
        async for message in dl.pubsub.subscribe("news"):
            received.append(message.data)
            return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)  # subscribed
    async with dl.transaction() as tx:
        await tx.publish("news", {"headline": 1}, kind="channel")
    await asyncio.wait_for(listener, 10)
    assert received == [{"headline": 1}]


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "own-valkey")
    server.acquire()
    yield server
    server.release()


@pytest.fixture
async def own_redis(
    database: DatabaseDsn, valkey: EmbeddedValkey, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    config = make_config(database, valkey.url, tmp_path, outbox={"interval": 0.1})
    async with DataLayer(config) as dl:
        yield dl


async def test_redis_down_at_commit_delivers_once_it_is_back(
    own_redis: DataLayer, valkey: EmbeddedValkey
) -> None:
    dl = own_redis
    valkey.stop()
    async with dl.transaction() as tx:
        for n in range(3):
            await tx.publish("events", {"n": n})
    await asyncio.sleep(0.5)  # rounds fail meanwhile; the messages wait in the outbox
    assert await dl.admin.fetch_value("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 3
    valkey.start()
    assert await _read(dl, "events", 3) == [{"n": n} for n in range(3)]


async def test_a_process_gone_before_relaying_leaves_them_to_the_next(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    quiet = make_config(database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(quiet) as first, first.transaction() as tx:
        await tx.publish("handover", {"n": 1})
        await tx.publish("handover", {"n": 2})
    # Its relay never ran: the messages wait for another process's.
    async with DataLayer(make_config(database, redis_url, tmp_path)) as second:
        assert await _read(second, "handover", 2) == [{"n": 1}, {"n": 2}]
        assert (
            await second.admin.fetch_value("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
        )


async def test_closing_sends_what_was_published_just_before(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl, dl.transaction() as tx:
        for n in range(20):
            await tx.publish("closing", {"n": n})
    # Closed at once after the commit: its relay's last round sent them.
    quiet = make_config(database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(quiet) as after:
        unsent = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
        assert await after.admin.fetch_value(unsent) == 0
        assert await _read(after, "closing", 20) == [{"n": n} for n in range(20)]


async def test_relays_of_several_processes_send_each_message_once(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    quick = make_config(database, redis_url, tmp_path, outbox={"interval": 0.05, "batch": 7})
    async with DataLayer(quick) as a, DataLayer(quick) as b:
        for chunk in range(10):
            async with (a if chunk % 2 else b).transaction() as tx:
                for n in range(10):
                    await tx.publish("shared", {"n": chunk * 10 + n})
        await asyncio.gather(a.outbox.relay(), b.outbox.relay(), a.outbox.relay())
        # Each message once, and in the order the transactions committed (one at a time here).
        assert await _read(a, "shared", 100) == [{"n": n} for n in range(100)]


async def test_copies_are_skipped_by_a_deduplicating_consumer(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # Relayed only when told: no background round (or its pruning) between the steps.
    quiet = make_config(database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(quiet) as dl:
        async with dl.transaction() as tx:
            await tx.publish("events", {"n": 1})
        await dl.outbox.relay()
        # A relay that sent and then died before marking them sent (and moving the relays'
        # mark past their commit: one transaction) sends them again.
        async with dl.admin.transaction():
            await dl.admin.execute("UPDATE outbox SET sent_at = NULL")
            await dl.admin.execute("UPDATE outbox_relay SET seq = 0")
        await dl.outbox.relay()
        copies = await _read(dl, "events", 2)
        assert copies == [{"n": 1}, {"n": 1}]
        assert await _read_again(dl, "events") == [{"n": 1}]


async def _read_again(dl: DataLayer, stream: str) -> list[Any]:
    got: list[StreamMessage] = []

    async def collect() -> None:
        async for message in dl.streams.consume(stream, "deduped", "r1", block=0.1, dedupe=True):
            got.append(message)
            await dl.streams.ack(stream, "deduped", message.id)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), 1.5)
    assert all(m.outbox_id for m in got)
    return [m.data for m in got]


async def test_sent_messages_are_pruned(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, outbox={"keep_sent": 0, "relay": False})
    async with DataLayer(config) as dl:
        async with dl.transaction() as tx:
            await tx.publish("events", {"n": 1})
        await dl.outbox.relay()
        assert await dl.outbox.prune() == 1
        assert await dl.admin.fetch_value("SELECT count(*) FROM outbox") == 0


async def test_bad_input(dl: DataLayer) -> None:
    async with dl.transaction() as tx:
        for args, kwargs, field in [
            (("", {"a": 1}), {}, "destination"),
            (("x" * 257, {}), {}, "destination"),
            ((5, {}), {}, "destination"),
            (("events", {"a": float("nan")}), {}, "message"),
            (("events", {"a": object()}), {}, "message"),
            (("events", {}), {"kind": "queue"}, "kind"),
        ]:
            with pytest.raises(ValidationError) as info:
                await tx.publish(*args, **kwargs)
            assert info.value.field == field
    with pytest.raises(UsageError, match="has ended"):
        await tx.publish("events", {"late": True})
    assert await dl.admin.fetch_value("SELECT count(*) FROM outbox") == 0


async def test_cancelling_a_publish_leaves_nothing(dl: DataLayer) -> None:
    async def publish_slowly() -> None:
        async with dl.transaction() as tx:
            await tx.publish("events", {"n": 1})
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(publish_slowly(), 0.3)
    assert await dl.admin.fetch_value("SELECT count(*) FROM outbox") == 0
