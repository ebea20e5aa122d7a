"""Through a real PgBouncer in transaction mode: the layer's work, its settings, tenants, and
a thousand client connections on a handful of server connections.

PgBouncer lends each transaction whichever server connection is free, shared by all its
clients: what a session would keep (prepared statements, settings, the tenant) must travel
with every transaction. These tests run a PgBouncer (Debian's package; ``.ci/run`` installs it)
in front of the session's PostgreSQL; without the binary they fail on CI and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from agency_data import DataLayer, DataLayerConfig, NotFound, QueryTimeout, TaskStatus
from tests.conftest import ROLES, DatabaseDsn, ServerSet, make_config
from tests.pgbouncer_server import PgBouncer, find_pgbouncer

SERVER_CONNECTIONS = 20
CLIENTS = 1000


@pytest.fixture(scope="module")
def bouncer(servers: ServerSet) -> Iterator[PgBouncer]:
    """A PgBouncer (transaction pooling, 20 server connections a database) for the module."""
    if find_pgbouncer() is None:
        message = "pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    running = PgBouncer(
        servers.admin_dsn,
        [ROLES.app],
        passwords=servers.passwords,
        max_client_conn=CLIENTS + 200,
        default_pool_size=SERVER_CONNECTIONS,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _name(database: str) -> str:
    return str(conninfo_to_dict(database)["dbname"])


def bouncer_config(
    bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    *,
    direct: bool = True,
    **postgresql: Any,
) -> DataLayerConfig:
    """The layer on ``database`` through PgBouncer; migrations (and LISTEN) go direct."""
    section: dict[str, Any] = {
        "pgbouncer": True,
        "admin_dsn": database.owner,
        "pool_min_size": 1,
        "pool_max_size": 8,
        **postgresql,
    }
    if direct:
        section["direct_dsn"] = str(database)
    return make_config(
        bouncer.dsn(_name(database), ROLES.app), redis_url, tmp_path, postgresql=section
    )


@pytest.fixture
async def bounced(
    bouncer: PgBouncer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    """A DataLayer through PgBouncer, with a direct connection for wake-ups."""
    async with DataLayer(bouncer_config(bouncer, database, redis_url, tmp_path)) as layer:
        yield layer


async def _soil_every_server_connection(bouncer: PgBouncer, database: str) -> None:
    # As many clients as PgBouncer has server connections, each holding one at the same time,
    # leave session-level settings behind on all of them (SET without LOCAL outlives COMMIT).
    async def soil(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SET statement_timeout = '1h'")
            await conn.execute("SET search_path = pg_catalog")
            await conn.execute("SELECT set_config('agency_data.tenant', 'intruder', false)")
            await conn.execute("SELECT pg_sleep(0.3)")

    dsn = bouncer.dsn(database, ROLES.app)
    conns = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None)
        for _ in range(SERVER_CONNECTIONS)
    ]
    try:
        await asyncio.gather(*(soil(conn) for conn in conns))
        # Any server connection now answers a client that sets nothing with what was left.
        shown = await (await conns[0].execute("SHOW statement_timeout")).fetchone()
        assert shown == ("1h",)
    finally:
        for conn in conns:
            await conn.close()


async def test_settings_travel_with_each_transaction(
    bouncer: PgBouncer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    await _soil_every_server_connection(bouncer, _name(database))
    config = bouncer_config(bouncer, database, redis_url, tmp_path, statement_timeout=1.0)
    async with DataLayer(config) as dl:
        async with dl.pool.connection() as conn:
            assert conn.prepare_threshold is None
        query = (
            "SELECT current_setting('statement_timeout') AS timeout, "
            "current_setting('search_path') AS path, current_setting('TimeZone') AS zone, "
            "current_setting('agency_data.tenant') AS tenant"
        )
        expected = {"timeout": "1s", "path": "public,pg_temp", "zone": "UTC"}
        # The simple protocol (no parameters), the extended one, a pipeline of several, and
        # statements inside a transaction of the layer's: every one runs with the settings.
        assert await dl.fetch_one(query) == {**expected, "tenant": "default"}
        params_query = query + ", %s::int AS n"
        assert await dl.fetch_one(params_query, [1]) == {**expected, "tenant": "default", "n": 1}
        scoped = dl.tenant("acme")
        assert await scoped.fetch_one(params_query, [2]) == {**expected, "tenant": "acme", "n": 2}
        async with scoped.transaction() as tx:
            row = await (await tx.conn.execute(query)).fetchone()
            assert row == {**expected, "tenant": "acme"}
            assert await scoped.fetch_value("SELECT 7", timeout=2.0) == 7
            # A per-call timeout is put back afterwards, to the layer's setting.
            assert await scoped.fetch_value("SELECT current_setting('statement_timeout')") == "1s"
        # A statement running past the layer's statement_timeout is stopped after 1 s, not
        # after the hour left on the server connection.
        started = time.monotonic()
        with pytest.raises(QueryTimeout):
            await dl.fetch_value("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 4


async def test_store_events_follow_the_layers_setting_on_any_server_connection(
    bouncer: PgBouncer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # Every server connection left asking for task events by another client's session SET.
    async def soil(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SET agency_data.events = 'tasks'")
            await conn.execute("SELECT pg_sleep(0.3)")

    dsn = bouncer.dsn(_name(database), ROLES.app)
    conns = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None)
        for _ in range(SERVER_CONNECTIONS)
    ]
    try:
        await asyncio.gather(*(soil(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    off = bouncer_config(bouncer, database, redis_url, tmp_path)
    async with DataLayer(off) as dl:
        for _ in range(5):
            await dl.tasks.create("quiet")
        assert await dl.admin.fetch_value("SELECT count(*) FROM outbox") == 0
    on = off.model_copy(update={"events": off.events.model_copy(update={"agents": True})})
    async with DataLayer(on) as dl:
        await dl.agents.create(name="a", type="t")
        await dl.tasks.create("still-quiet")
        rows = await dl.admin.fetch("SELECT destination FROM outbox")
    assert [r["destination"] for r in rows] == ["events:agent.created"]


async def test_repeated_statements_from_many_clients(bounced: DataLayer) -> None:
    # psycopg prepares a statement server-side after five runs on a connection; through
    # PgBouncer the next run could land on a server connection that never saw it.
    async def one(i: int) -> int:
        value = await bounced.fetch_value("SELECT %s::int + 1 AS n", [i])
        assert isinstance(value, int)
        return value

    for _ in range(5):
        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results == [i + 1 for i in range(200)]
    health = await bounced.health()
    assert health.status == "ok"
    assert health.warnings == []


async def test_tasks_leases_and_wakeups(bounced: DataLayer) -> None:
    agent = await bounced.agents.create(name="worker", type="w")
    task = await bounced.tasks.create(type="summarize", data={"doc": 1})
    (claimed,) = await bounced.tasks.claim(agent.id, ["summarize"], lease_seconds=30)
    assert claimed.id == task.id
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.lease_token is not None
    assert await bounced.tasks.heartbeat(claimed) > claimed.started_at  # type: ignore[operator]
    done = await bounced.tasks.complete(claimed, {"ok": True})
    assert done.status is TaskStatus.COMPLETED
    assert (await bounced.tasks.get(task.id)).result == {"ok": True}
    assert await bounced.tasks.claim(agent.id, ["summarize"]) == []

    started = time.monotonic()
    waiting = asyncio.create_task(bounced.tasks.claim(agent.id, ["later"], wait=30))
    await asyncio.sleep(0.3)
    late = await bounced.tasks.create(type="later")
    (woken,) = await asyncio.wait_for(waiting, timeout=20)
    assert woken.id == late.id
    # Woken by NOTIFY on the direct connection, far sooner than the wait.
    assert time.monotonic() - started < 10


async def test_waiting_claims_poll_without_a_direct_connection(
    bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = bouncer_config(bouncer, database, redis_url, tmp_path, direct=False)
    with caplog.at_level(logging.INFO, logger="agency_data"):
        async with DataLayer(config) as dl:
            agent = await dl.agents.create(name="worker", type="w")
            waiting = asyncio.create_task(dl.tasks.claim(agent.id, ["later"], wait=30))
            await asyncio.sleep(0.3)
            late = await dl.tasks.create(type="later")
            (woken,) = await asyncio.wait_for(waiting, timeout=20)
            assert woken.id == late.id
    assert any("direct_dsn is not set" in r.getMessage() for r in caplog.records)


async def test_collections(bounced: DataLayer) -> None:
    dim = 8
    notes = await bounced.embeddings.create_collection("notes", dimension=dim)
    matrix = np.random.default_rng(7).normal(size=(60, dim)).astype(np.float32)
    ids = await notes.store_many(
        [
            {"entity_type": "doc", "entity_id": str(i), "vector": v, "metadata": {"i": i}}
            for i, v in enumerate(matrix)
        ]
    )
    assert await notes.count() == 60
    assert await notes.count({"i": {"$lt": 10}}) == 10
    (hit,) = await notes.find_similar(matrix[17], limit=1)
    assert hit.id == ids[17]
    hits = await notes.find_similar(matrix[3], limit=5, filter={"i": {"$gte": 30}})
    assert len(hits) == 5
    assert all(h.metadata["i"] >= 30 for h in hits)
    streamed = [r async for r in notes.search_stream(matrix[5], batch_size=7)]
    assert len(streamed) == 60
    assert streamed[0].id == ids[5]
    # Another tenant's collection view sees none of it.
    other = bounced.tenant("other").embeddings.collection("notes")
    assert await other.count() == 0
    assert await other.find_similar(matrix[17], limit=1) == []


async def test_transactions_roll_back(bounced: DataLayer) -> None:
    with pytest.raises(RuntimeError):  # noqa: PT012 - the whole block is the unit under test
        async with bounced.transaction():
            await bounced.agents.create(name="gone", type="t")
            raise RuntimeError("undo")
    assert await bounced.agents.count() == 0
    async with bounced.transaction():
        kept = await bounced.agents.create(name="kept", type="t")
        with contextlib.suppress(RuntimeError):
            async with bounced.transaction():
                await bounced.agents.create(name="inner", type="t")
                raise RuntimeError("undo the savepoint only")
    assert [a.id for a in (await bounced.agents.list()).items] == [kept.id]


async def test_tenants_never_see_each_other(
    bouncer: PgBouncer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # Server connections soiled with another tenant's name, then shared by both tenants'
    # statements, interleaved: each still sees only its own rows.
    await _soil_every_server_connection(bouncer, _name(database))
    config = bouncer_config(bouncer, database, redis_url, tmp_path, pool_max_size=32)
    async with DataLayer(config) as dl:
        tenants = {"alpha": dl.tenant("alpha"), "beta": dl.tenant("beta")}
        owned = {
            name: {(await scope.agents.create(name=f"{name}-{i}", type="t")).id for i in range(20)}
            for name, scope in tenants.items()
        }
        intruder = await dl.tenant("intruder").agents.create(name="x", type="t")

        async def look(name: str, i: int) -> None:
            scope = tenants[name]
            theirs = owned["beta" if name == "alpha" else "alpha"]
            if i % 3 == 0:
                seen = {a.id for a in (await scope.agents.list(limit=100)).items}
                assert seen == owned[name]
            elif i % 3 == 1:
                async with scope.transaction():
                    assert await scope.agents.count() == 20
                    assert await scope.fetch_value("SELECT count(*) FROM agents") == 20
            else:
                with pytest.raises(NotFound):
                    await scope.agents.get(next(iter(theirs)))
                with pytest.raises(NotFound):
                    await scope.agents.get(intruder.id)

        await asyncio.gather(*(look(name, i) for i in range(150) for name in tenants))


async def test_a_thousand_client_connections(
    bouncer: PgBouncer,
    servers: ServerSet,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
) -> None:
    # One process with a pool of a thousand, standing in for many processes with small pools:
    # PgBouncer sees a thousand clients either way, and PostgreSQL twenty connections.
    config = bouncer_config(
        bouncer,
        database,
        redis_url,
        tmp_path,
        pool_min_size=CLIENTS,
        pool_max_size=CLIENTS,
        pool_timeout=120,
    )
    async with DataLayer(config) as dl:
        assert dl.pool.get_stats()["pool_size"] == CLIENTS
        busiest = 0
        done = False

        async def watch() -> None:
            # How many of the pool's connections are out at once, looked at every loop turn.
            nonlocal busiest
            while not done:
                stats = dl.pool.get_stats()
                busiest = max(busiest, stats["pool_size"] - stats["pool_available"])
                await asyncio.sleep(0)

        async def client(i: int) -> None:
            scope = dl.tenant(f"tenant-{i % 10}")
            async with scope.transaction():
                agent = await scope.agents.create(name=f"agent-{i}", type="t")
            async with scope.transaction():
                assert (await scope.agents.get(agent.id)).name == f"agent-{i}"
                await scope.agents.update(agent.id, capabilities={"i": i})

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(client(i) for i in range(CLIENTS)), return_exceptions=True)
        done = True
        await watcher
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], f"{len(errors)} of {CLIENTS} clients failed, first: {errors[:1]!r}"
        # Hundreds of client connections had a transaction going at once (the first clients
        # may be done before the last ones start), over twenty server connections.
        assert busiest >= CLIENTS // 2, busiest

        name = _name(database)
        (pool,) = [p for p in bouncer.show("POOLS") if p["database"] == name]
        assert pool["cl_active"] + pool["cl_waiting"] >= CLIENTS
        servers_used = sum(pool[k] for k in ("sv_active", "sv_idle", "sv_used", "sv_tested"))
        assert 0 < servers_used <= SERVER_CONNECTIONS
        with psycopg.connect(servers.admin_dsn) as direct:
            (backends,) = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s",
                [name, ROLES.app],
            ).fetchone() or (None,)
        # PgBouncer's twenty, and the direct connection that listens for wake-ups (if any).
        assert backends is not None
        assert backends <= SERVER_CONNECTIONS + 1
        for t in range(10):
            scope = dl.tenant(f"tenant-{t}")
            assert await scope.agents.count() == CLIENTS // 10
            assert await scope.fetch_value(
                "SELECT count(*) FROM agents WHERE capabilities ? 'i'"
            ) == (CLIENTS // 10)
