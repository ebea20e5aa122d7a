"""A thousand client connections through PgBouncer, beside the same load on a direct pool of 20.

Agent platforms run many processes, each with a pool of its own: a thousand connections to
PostgreSQL would each cost a backend process, where PgBouncer in transaction mode lends each
transaction one of a few server connections. Here one process stands in for them all: a
DataLayer with ``postgresql.pgbouncer = true`` and a pool of 1,000 connections, all open
through a PgBouncer (Debian's package, started by the scenario; transaction pooling, 20
server connections) in front of the bench's embedded server. A thousand clients, one
connection each, loop for a few seconds over tenant-scoped transactions: four point reads
for each write. The baseline is the same thousand clients on the bench's own DataLayer,
straight to PostgreSQL through its pool of 20 (clients queue in the pool, not in PgBouncer).

Skipped (with a line saying so) when pgbouncer is not installed, or when the bench runs on an
external server (PgBouncer would need its passwords).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any
from uuid import UUID

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded.postgres import DATABASE, SUPERUSER
from agency_data.scope import TenantScope
from bench.context import Bench
from bench.databases import with_params
from bench.harness import Result, percentiles
from tests.pgbouncer_server import PgBouncer, find_pgbouncer, raise_open_files

__all__ = ["pgbouncer"]

CLIENTS = 1_000
SERVER_CONNECTIONS = 20
TENANTS = 10
WRITE_EVERY = 5  # one write transaction for four point reads


async def pgbouncer(b: Bench) -> list[Result]:
    """Throughput, p50/p99 and errors of 1,000 clients through PgBouncer and direct (pool 20)."""
    console = b.progress.console
    if find_pgbouncer() is None:
        console.print("pgbouncer: skipped, pgbouncer is not installed (apt-get install pgbouncer)")
        return []
    if not b.dl.config.postgresql.is_embedded:
        console.print(
            "pgbouncer: skipped, PostgreSQL is an external server (PgBouncer would need its "
            "roles' passwords)"
        )
        return []
    dl = b.dl
    seconds = b.size(5.0, 10.0)
    rounds = b.size(1, b.runs)
    raise_open_files(4 * CLIENTS)
    b.step("pgbouncer: starting PgBouncer")
    app_role = dl.config.postgresql.app_role
    bouncer = PgBouncer(
        with_params(dl.admin_conninfo, user=SUPERUSER, dbname="postgres"),
        [app_role],
        max_client_conn=CLIENTS + 200,
        default_pool_size=SERVER_CONNECTIONS,
    )
    await asyncio.to_thread(bouncer.start)
    try:
        agents = await _agents(dl)
        b.step(f"pgbouncer: opening {CLIENTS:,} connections through PgBouncer")
        opened = time.perf_counter()
        async with DataLayer(_through(dl, bouncer, app_role)) as bounced:
            open_seconds = time.perf_counter() - opened
            ours: list[Load] = []
            direct: list[Load] = []
            for r in range(rounds):
                b.step(f"pgbouncer: round {r + 1}/{rounds}, direct pool of {SERVER_CONNECTIONS}")
                direct.append(await _load(dl, agents, seconds))
                b.step(f"pgbouncer: round {r + 1}/{rounds}, {CLIENTS:,} through PgBouncer")
                ours.append(await _load(bounced, agents, seconds))
            pools = [p for p in bouncer.show("POOLS") if p["database"] == DATABASE]
    finally:
        await asyncio.to_thread(bouncer.stop)
    return _results(ours, direct, pools, open_seconds)


class Load:
    """What one timed run of the thousand clients did."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.elapsed = 0.0
        self.busiest = 0  # the pool's connections out at once, at most

    @property
    def rate(self) -> float:
        """Completed operations per second (failed ones not counted)."""
        return (len(self.samples) - len(self.errors)) / self.elapsed


async def _agents(dl: DataLayer) -> list[tuple[str, UUID]]:
    # One agent per client, spread over the tenants; made once, read and written by both runs.
    async def make(i: int) -> tuple[str, UUID]:
        tenant = f"bench-{i % TENANTS}"
        agent = await dl.tenant(tenant).agents.create(name=f"client-{i}", type="worker")
        return tenant, agent.id

    return list(await asyncio.gather(*(make(i) for i in range(CLIENTS))))


def _through(dl: DataLayer, bouncer: PgBouncer, app_role: str) -> DataLayerConfig:
    config = dl.config
    return DataLayerConfig(
        postgresql={
            "dsn": bouncer.dsn(DATABASE, app_role),
            "pgbouncer": True,
            "admin_dsn": dl.admin_conninfo,
            "direct_dsn": dl.conninfo,
            "pool_min_size": CLIENTS,
            "pool_max_size": CLIENTS,
            "pool_timeout": 120,
            "statement_timeout": config.postgresql.statement_timeout,
        },
        redis={"url": dl.redis_url} if config.redis.is_embedded else config.redis,
        cache=config.cache,
        migration={"auto_migrate": False},
        vector={"prewarm_on_start": False},
    )


async def _load(layer: DataLayer, agents: list[tuple[str, UUID]], seconds: float) -> Load:
    load = Load()
    stop_at = 0.0
    running = True

    async def watch() -> None:
        while running:
            stats = layer.pool.get_stats()
            load.busiest = max(load.busiest, stats["pool_size"] - stats["pool_available"])
            await asyncio.sleep(0.005)

    async def client(i: int) -> None:
        tenant, agent_id = agents[i % len(agents)]
        scope = layer.tenant(tenant)
        n = i  # clients start at different points of the read/write cycle
        while time.perf_counter() < stop_at:
            n += 1
            started = time.perf_counter()
            try:
                if n % WRITE_EVERY == 0:
                    await _write(scope, agent_id, n)
                else:
                    await _read(scope, agent_id)
            except Exception as exc:  # noqa: BLE001 - counted: the target is none
                load.errors.append(repr(exc))
            load.samples.append((time.perf_counter() - started) * 1000)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    load.elapsed = time.perf_counter() - started
    running = False
    await watcher
    return load


async def _read(scope: TenantScope, agent_id: UUID) -> None:
    # In a transaction: one connection per client, as separate processes would have (reads
    # made outside one are gathered into a single query per event-loop turn).
    async with scope.transaction(readonly=True):
        await scope.agents.get(agent_id, cached=False)


async def _write(scope: TenantScope, agent_id: UUID, n: int) -> None:
    async with scope.transaction():
        await scope.agents.update(agent_id, capabilities={"n": n})


def _results(
    ours: list[Load], direct: list[Load], pools: list[dict[str, Any]], open_seconds: float
) -> list[Result]:
    ours_p = percentiles([s for load in ours for s in load.samples])
    direct_p = percentiles([s for load in direct for s in load.samples])
    errors = [e for load in ours for e in load.errors]
    direct_errors = [e for load in direct for e in load.errors]
    busiest = max(load.busiest for load in ours)
    pool = pools[0] if pools else {}
    servers = sum(int(pool.get(k, 0)) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested"))
    extra = {
        "clients": CLIENTS,
        "client_connections_busy_at_once": busiest,
        "pgbouncer_clients": int(pool.get("cl_active", 0)) + int(pool.get("cl_waiting", 0)),
        "server_connections": servers,
        "open_seconds": round(open_seconds, 1),
        "errors": len(errors),
        "first_errors": errors[:3],
        "direct_errors": len(direct_errors),
        "ours": ours_p,
        "direct": direct_p,
        "operations": sum(len(load.samples) for load in ours),
    }
    name = f"{CLIENTS:,} clients through PgBouncer ({SERVER_CONNECTIONS} server connections)"
    baseline = f"direct, pool of {SERVER_CONNECTIONS}"
    return [
        Result(
            "pgbouncer",
            f"{name}: 80% point reads, 20% writes, each a transaction",
            "ops/s",
            statistics.median(load.rate for load in ours),
            baseline=statistics.median(load.rate for load in direct),
            baseline_name=baseline,
            extra=extra,
        ),
        Result(
            "pgbouncer",
            "p50 latency",
            "ms",
            ours_p["p50"],
            baseline=direct_p["p50"],
            baseline_name=baseline,
            higher_is_better=False,
        ),
        Result(
            "pgbouncer",
            f"p99 latency; errors {len(errors)} of {extra['operations']:,}",
            "ms",
            ours_p["p99"],
            baseline=direct_p["p99"],
            baseline_name=baseline,
            higher_is_better=False,
            target="0 errors, throughput and p99 reported",
            met=not errors and busiest > SERVER_CONNECTIONS and 0 < servers <= SERVER_CONNECTIONS,
            extra={"errors": len(errors), "first_errors": errors[:3]},
        ),
    ]
