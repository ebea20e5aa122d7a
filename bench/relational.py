"""Relational scenarios: point reads, writes, task claiming, and 1,000 concurrent clients."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from psycopg.types.json import Jsonb

from agency_data import DataLayer, PoolTimeout
from bench.context import Bench
from bench.databases import equalize
from bench.harness import Result, paired, percentiles, throughput, timed

_AGENT_SQL = (
    "SELECT id, tenant_id, name, type, capabilities, status, version, created_at, updated_at "
    "FROM agents WHERE tenant_id = %s AND id = %s"
)


async def point_reads(b: Bench, cached_l2: DataLayer) -> list[Result]:
    """dl.agents.get against the same query by hand (an owner pool of the same size, so no
    row-level security); and through the cache."""
    dl = b.dl
    b.step("point reads: agents")
    agents = [
        await dl.agents.create(name=f"agent-{i}", type="worker", capabilities={"i": i})
        for i in range(200)
    ]
    ids = itertools.cycle([a.id for a in agents])
    n = b.size(3_000, 10_000)

    async def ours() -> None:
        await dl.agents.get(next(ids), cached=False)

    async def raw() -> None:
        async with b.raw.connection() as conn:
            cursor = await conn.execute(_AGENT_SQL, ["default", next(ids)])
            row = await cursor.fetchone()
        assert row is not None, "the baseline reads the agent"

    b.step("point reads: dl.agents.get vs psycopg")
    await equalize(dl.pool, b.raw)
    ours_rate, raw_rate = await paired(ours, raw, n, b.runs)

    async def l1_hit() -> None:
        await dl.agents.get(next(ids), cached=True)

    async def l2_hit() -> None:
        await cached_l2.agents.get(next(ids), cached=True)

    b.step("point reads: through the cache")
    l1_rate = await throughput(l1_hit, n * 5, b.runs, warmup=400)
    l2_rate = await throughput(l2_hit, n, b.runs, warmup=400)

    # The caller's own SQL: its connection is reset before reuse (session state it may have
    # left must not reach the next caller), which costs one round trip more.
    async def ours_sql() -> None:
        row = await dl.fetch_one(_AGENT_SQL, ["default", next(ids)])
        assert row is not None, "the layer's raw SQL reads the agent"

    b.step("point reads: dl.fetch_one (raw SQL) vs psycopg")
    sql_rate, sql_raw_rate = await paired(ours_sql, raw, n, b.runs)
    overhead = raw_rate / ours_rate - 1
    return [
        Result(
            "point reads",
            "dl.agents.get (no cache)",
            "q/s",
            ours_rate,
            raw_rate,
            "psycopg, owner pool (no RLS)",
            target="<= 25% overhead",
            met=overhead <= 0.25,
        ),
        Result("point reads", "dl.agents.get, L1 hit", "q/s", l1_rate, ours_rate, "no cache"),
        Result(
            "point reads", "dl.agents.get, L2 (Redis) hit", "q/s", l2_rate, ours_rate, "no cache"
        ),
        Result(
            "point reads",
            "dl.fetch_one (your SQL, RLS)",
            "q/s",
            sql_rate,
            sql_raw_rate,
            "psycopg, owner pool (no RLS)",
        ),
    ]


async def writes(b: Bench) -> list[Result]:
    """Single-row transactions and bulk creates, against psycopg by hand."""
    dl = b.dl
    n = b.size(1_000, 3_000)
    counter = itertools.count()

    async def ours() -> None:
        await dl.tasks.create(type="bench", data={"n": next(counter)}, priority=1)

    async def raw() -> None:
        async with b.raw.connection() as conn:
            await conn.execute(
                "INSERT INTO tasks (tenant_id, type, data, priority) VALUES (%s, %s, %s, %s) RETURNING *",
                ["default", "bench", Jsonb({"n": next(counter)}), 1],
            )

    b.step("writes: single-row transactions")
    await equalize(dl.pool, b.raw)
    ours_rate, raw_rate = await paired(ours, raw, n, b.runs)
    # Both wrote rows of the default tenant, which the layer's view counts.
    calls = next(counter)
    written = await dl.fetch_value("SELECT count(*) FROM tasks WHERE type = 'bench'")
    assert written == calls, f"{written} single-row tasks written, not {calls}"

    bulk = b.size(10_000, 50_000)
    rows = [{"type": "bulk", "data": {"i": i}, "priority": i % 10} for i in range(bulk)]

    async def ours_bulk() -> None:
        await dl.tasks.create_many(rows)

    async def raw_executemany() -> None:
        async with b.raw.connection() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO tasks (tenant_id, type, data, priority) VALUES (%s, %s, %s, %s)",
                [("default", r["type"], Jsonb(r["data"]), r["priority"]) for r in rows],
            )

    async def raw_copy() -> None:
        async with (
            b.raw.connection() as conn,
            conn.cursor() as cursor,
            cursor.copy("COPY tasks (tenant_id, type, data, priority) FROM STDIN") as copy,
        ):
            for r in rows:
                await copy.write_row(("default", r["type"], Jsonb(r["data"]), r["priority"]))

    b.step("writes: bulk")
    ours_bulk_rate = bulk / await timed(ours_bulk, b.runs)
    executemany_rate = bulk / await timed(raw_executemany, b.runs)
    copy_rate = bulk / await timed(raw_copy, b.runs)
    written = await dl.fetch_value("SELECT count(*) FROM tasks WHERE type = 'bulk'")
    assert written == 3 * b.runs * bulk, f"{written} bulk tasks written, not {3 * b.runs * bulk}"
    await dl.execute("DELETE FROM tasks WHERE type IN ('bench', 'bulk')")
    return [
        Result(
            "writes",
            "dl.tasks.create (1 row, 1 tx)",
            "tx/s",
            ours_rate,
            raw_rate,
            "psycopg INSERT",
            target="<= 25% overhead",
            met=raw_rate / ours_rate - 1 <= 0.25,
        ),
        Result(
            "writes",
            f"dl.tasks.create_many ({bulk:,})",
            "rows/s",
            ours_bulk_rate,
            executemany_rate,
            "psycopg executemany",
            target="<= 10% overhead",
            met=executemany_rate / ours_bulk_rate - 1 <= 0.10,
        ),
        Result(
            "writes",
            f"dl.tasks.create_many ({bulk:,})",
            "rows/s",
            ours_bulk_rate,
            copy_rate,
            "psycopg COPY",
        ),
    ]


async def claiming(b: Bench) -> list[Result]:
    """Tasks claimed and completed per second by 1, 4 and 16 concurrent workers."""
    dl = b.dl
    results = []
    agents = [await dl.agents.create(name=f"claimer-{i}", type="worker") for i in range(16)]
    for workers in (1, 4, 16):
        b.step(f"task claiming: {workers} worker(s)")
        total = b.size(1_000, 4_000)
        await dl.tasks.create_many([{"type": "claim", "data": {"i": i}} for i in range(total)])

        async def work(agent_id: Any) -> int:
            done = 0
            while batch := await dl.tasks.claim(agent_id, types=["claim"], n=10):
                for task in batch:
                    await dl.tasks.complete(task.id, result={"ok": True})
                done += len(batch)
            return done

        started = time.perf_counter()
        counts = await asyncio.gather(*(work(agents[i].id) for i in range(workers)))
        elapsed = time.perf_counter() - started
        assert sum(counts) == total, "every task claimed exactly once"
        results.append(
            Result(
                "task claiming",
                f"{workers} worker(s): claim + complete",
                "tasks/s",
                total / elapsed,
            )
        )
        await dl.execute("DELETE FROM tasks WHERE type = 'claim'")
    return results


async def concurrency(b: Bench) -> list[Result]:
    """1,000 concurrent clients mixing reads and writes through a pool of at most 20."""
    dl = b.dl
    b.step("concurrency: 1,000 clients")
    clients = 1_000
    per_client = b.size(5, 20)
    agents = [await dl.agents.create(name=f"c-{i}", type="worker") for i in range(50)]
    samples: list[float] = []
    errors: list[str] = []
    timeouts = 0
    peak = 0
    running = True

    async def watch_pool() -> None:
        nonlocal peak
        while running:
            peak = max(peak, dl.pool.get_stats().get("pool_size", 0))
            await asyncio.sleep(0.01)

    async def client(i: int) -> None:
        nonlocal timeouts
        for j in range(per_client):
            started = time.perf_counter()
            try:
                if j % 5 == 4:
                    await dl.tasks.create(type="mixed", data={"client": i})
                else:
                    await dl.agents.get(agents[(i + j) % 50].id, cached=False)
            except PoolTimeout:
                timeouts += 1
            except Exception as exc:  # noqa: BLE001 - counted: the goal is zero
                errors.append(repr(exc))
            samples.append((time.perf_counter() - started) * 1000)

    watcher = asyncio.create_task(watch_pool())
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    running = False
    await watcher
    await dl.execute("DELETE FROM tasks WHERE type = 'mixed'")
    p = percentiles(samples)
    max_size = dl.pool.max_size
    return [
        Result(
            "concurrency",
            "1,000 clients: 80% reads, 20% writes",
            "ops/s",
            len(samples) / elapsed,
            extra={"errors": len(errors), "pool_timeouts": timeouts, "pool_peak": peak, **p},
        ),
        Result(
            "concurrency",
            "p99 latency",
            "ms",
            p["p99"],
            higher_is_better=False,
            target=f"0 errors, pool <= {max_size}",
            met=not errors and peak <= max_size,
            extra={"errors": errors[:5], "pool_peak": peak},
        ),
    ]
