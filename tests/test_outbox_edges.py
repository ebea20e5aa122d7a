"""The transactional outbox at its edges: publish from a task outside the transaction is
refused; one message Redis refuses is set aside without holding back or resending the others;
a tenant's view never reaches another tenant's rows even where one role does everything; a
message arrives byte for byte; a commit wakes the relay even during its backoff; savepoints,
retries and killed connections; commit order across transactions relayed late, and no stall
from a transaction in another database (both fixed by migration 0016's commit order).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql

from agency_data import AgencyDataError, BackendUnavailable, DataLayer
from agency_data.config import OutboxConfig
from agency_data.errors import SerializationFailure, UsageError
from agency_data.models import StreamMessage
from agency_data.outbox import Relay
from tests.conftest import DatabaseDsn, ServerSet, make_config


async def _read(
    scope: Any, stream: str, want: int, *, wait: float = 5.0, dedupe: bool = False
) -> list[Any]:
    """What a fresh consumer group of ``stream`` gets, until ``want`` messages or ``wait`` s."""
    got: list[StreamMessage] = []

    async def collect() -> None:
        reading = scope.streams.consume(stream, "review", "r1", block=0.1, dedupe=dedupe)
        async for message in reading:
            got.append(message)
            await scope.streams.ack(stream, "review", message.id)
            if len(got) >= want:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), wait)
    return [m.data for m in got]


def _quiet(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> Any:
    """A config whose DataLayer runs no background relay: the test relays when it says so."""
    return make_config(database, redis_url, tmp_path, outbox={"relay": False})


async def test_a_rolled_back_transactions_message_is_never_relayed_whoever_calls_publish(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_quiet(database, redis_url, tmp_path)) as dl:
        handed: asyncio.Queue[Any] = asyncio.Queue()

        async def helper() -> None:
            # A helper task (started before the transaction) publishing through the tx it is
            # given: refused, since its statement would not be the transaction's.
            tx = await handed.get()
            with pytest.raises(UsageError, match="not running this transaction"):
                await tx.publish("events", {"n": "ghost"})

        worker = asyncio.create_task(helper())
        with contextlib.suppress(RuntimeError):
            async with dl.transaction() as tx:
                await handed.put(tx)
                await worker
                raise RuntimeError("the work failed: roll back")
        await dl.outbox.relay()
        assert await dl.admin.fetch_value("SELECT count(*) FROM outbox") == 0
        assert await _read(dl, "events", 1, wait=1.0) == []


async def test_a_rows_changes_arrive_in_the_order_they_committed_even_when_relayed_late(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_quiet(database, redis_url, tmp_path)) as dl:
        agent = await dl.agents.create(name="start", type="worker")
        locked, late_published = asyncio.Event(), asyncio.Event()

        async def early() -> None:
            async with dl.transaction() as tx:
                await dl.execute("UPDATE agents SET name = 'early' WHERE id = %s", [agent.id])
                locked.set()
                await late_published.wait()
                await tx.publish("agent", {"name": "early"})

        async def late() -> None:
            await locked.wait()
            async with dl.transaction() as tx:
                await tx.publish("agent", {"name": "late"})
                late_published.set()
                # Waits for early's row lock: this transaction commits second.
                await dl.execute("UPDATE agents SET name = 'late' WHERE id = %s", [agent.id])

        await asyncio.wait_for(asyncio.gather(early(), late()), 10)
        final = await dl.fetch_value("SELECT name FROM agents WHERE id = %s", [agent.id])
        assert final == "late"
        await dl.outbox.relay()
        assert await _read(dl, "agent", 2) == [{"name": "early"}, {"name": "late"}]


async def test_a_transaction_in_another_database_does_not_stall_the_outbox(
    dl: DataLayer, servers: ServerSet
) -> None:
    with psycopg.connect(servers.admin_dsn) as elsewhere:  # the 'postgres' database
        elsewhere.execute("SELECT pg_current_xact_id()")  # holds an xid, touches nothing
        try:
            async with dl.transaction() as tx:
                await tx.publish("events", {"n": 1})
            await dl.outbox.relay()
            assert await _read(dl, "events", 1, wait=3.0) == [{"n": 1}]
        finally:
            elsewhere.rollback()


async def test_one_tenants_undeliverable_message_neither_blocks_nor_duplicates_others(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_quiet(database, redis_url, tmp_path)) as dl:
        mallory, acme = dl.tenant("mallory"), dl.tenant("acme")
        async with mallory.transaction() as tx:
            await tx.publish("events", {"n": 1})
        await dl.outbox.relay()
        first: list[StreamMessage] = []

        async def one() -> None:
            async for message in mallory.streams.consume("events", "g", "c", dedupe=True):
                first.append(message)
                return

        await asyncio.wait_for(one(), 5)
        # A stream name that lands on the dedupe marker's (string) key.
        async with mallory.transaction() as tx:
            await tx.publish(f"events:seen:g:{first[0].outbox_id}", {"n": 2})
        async with acme.transaction() as tx:
            await tx.publish("jobs", {"n": 1})
        raised: list[BaseException] = []
        for _ in range(3):
            try:
                await dl.outbox.relay()
            except Exception as exc:  # noqa: BLE001 - looked at below
                raised.append(exc)
        client = aioredis.Redis.from_url(redis_url)
        try:
            copies = await client.xlen("ad:{acme}:stream:jobs")
        finally:
            await client.aclose()
        unsent = "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND tenant_id = 'acme'"
        assert (await dl.admin.fetch_value(unsent), copies, raised) == (0, 1, [])


@pytest.fixture
def single_role_database(servers: ServerSet) -> Iterator[str]:
    """A database owned, migrated and used by one role without BYPASSRLS (no admin_dsn): the
    'single role for everything' setup that 0010's comment provides for."""
    role = f"r17_{uuid.uuid4().hex[:10]}"
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(servers.admin_dsn, autocommit=True) as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN NOBYPASSRLS").format(sql.Identifier(role)))
        su.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
    with psycopg.connect(servers.dsn(name), autocommit=True) as su:
        su.execute("CREATE EXTENSION vector")
    try:
        yield servers.dsn(name, role)
    finally:
        servers.drop_database(name)
        with psycopg.connect(servers.admin_dsn, autocommit=True) as su:
            su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def test_a_tenant_neither_sees_nor_writes_anothers_outbox_with_a_single_role(
    single_role_database: str, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(single_role_database, redis_url, tmp_path, outbox={"relay": False})
    async with DataLayer(config) as dl:
        a, b = dl.tenant("a"), dl.tenant("b")
        await a.agents.create(name="a-agent", type="worker")
        async with a.transaction() as tx:
            await tx.publish("events", {"secret": "a's"})
        # The rest of the schema keeps b out of a's rows in this setup ...
        assert await b.fetch_value("SELECT count(*) FROM agents") == 0
        # ... and so must the outbox.
        with pytest.raises(AgencyDataError):  # row-level security refuses; nothing does today
            await b.execute(
                "INSERT INTO outbox (tenant_id, kind, destination, message) "
                "VALUES ('a', 'stream', 'events', '{\"forged\": true}')"
            )
        assert await b.fetch_value("SELECT count(*) FROM outbox") == 0


async def test_a_message_arrives_as_it_was_published(dl: DataLayer) -> None:
    message = {"big": 1.2345678901234567e19, "round": 1e16}
    await dl.streams.publish("direct", message)
    async with dl.transaction() as tx:
        await tx.publish("relayed", message)
    await dl.outbox.relay()
    (direct,) = await _read(dl, "direct", 1)
    assert direct == message  # the baseline holds
    assert type(direct["round"]) is float
    (relayed,) = await _read(dl, "relayed", 1)
    assert relayed == message
    assert type(relayed["round"]) is float


async def test_a_savepoint_rolled_back_and_a_retried_attempt_leave_only_committed_messages(
    dl: DataLayer,
) -> None:
    # Passes today: kept as a guard for the cases the brief named (savepoints, retries).
    attempts = 0

    async def work(tx: Any) -> None:
        nonlocal attempts
        attempts += 1
        await tx.publish("retried", {"attempt": attempts})
        with contextlib.suppress(RuntimeError):
            async with dl.transaction() as inner:
                await inner.publish("retried", {"inner": attempts})
                raise RuntimeError
        if attempts == 1:
            raise SerializationFailure("simulated conflict", sqlstate="40001")

    await dl.run_in_transaction(work)
    assert attempts == 2
    await dl.outbox.relay()
    assert await _read(dl, "retried", 3, wait=1.5) == [{"attempt": 2}]


async def test_the_relay_comes_back_after_its_postgres_connections_are_killed(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    # The background relay survives its sessions being terminated.
    async with dl.transaction() as tx:
        await tx.publish("events", {"n": 0})
    assert await _read(dl, "events", 1, dedupe=True) == [{"n": 0}]
    with psycopg.connect(database.superuser, autocommit=True) as su:
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    await asyncio.sleep(0.2)
    for n in (1, 2):
        # A terminated session may fail a publish once (its transaction, with its message, is
        # then rolled back): each is published again until its transaction commits.
        # The pools reconnect with backoff of their own: a publish may fail for a few seconds.
        async with asyncio.timeout(30):
            while True:
                try:
                    async with dl.transaction() as tx:
                        await tx.publish("events", {"n": n})
                    break
                except BackendUnavailable:
                    await asyncio.sleep(0.2)
    # A round cut off between sending and committing sends its messages again (n=0, say):
    # at least once, deduplicated by the consumer.
    got = await _read(dl, "events", 2, wait=15.0, dedupe=True)
    assert {"n": 2} in got


async def test_a_wake_after_redis_comes_back_is_not_lost_in_the_backoff(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(_quiet(database, redis_url, tmp_path)) as dl:
        sent: list[Any] = []
        failures = 0
        down_long_enough = asyncio.Event()

        async def flaky_send(messages: Any) -> list[str | None]:
            nonlocal failures
            if not down_long_enough.is_set():
                failures += 1
                if failures == 7:  # the backoff's step is now 3.2 s (1.6 s at least)
                    down_long_enough.set()
                raise ConnectionError("Redis is down")
            sent.extend(messages)
            return [None] * len(messages)

        # The DataLayer's own relay is off; this one sends through a Redis that fails at will.
        relay = Relay(dl.outbox._db, flaky_send, OutboxConfig(interval=0.05))
        async with dl.transaction() as tx:
            await tx.publish("events", {"n": 1})
        relay.start()
        try:
            await asyncio.wait_for(down_long_enough.wait(), 20)
            # Redis is back; a commit wakes the relay, as tx.publish's on-commit hook does.
            relay.wake()
            await asyncio.sleep(0.5)
            assert len(sent) == 1
        finally:
            await relay.aclose()
