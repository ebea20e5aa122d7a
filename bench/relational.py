"""Relational scenarios: point reads, writes, task claiming, and 1,000 concurrent clients."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg.types.json import Jsonb

from agency_data import DataLayer, PoolTimeout
from bench.context import Bench
from bench.databases import equalize
from bench.harness import Result, paired, paired_concurrently, percentiles, throughput, timed

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

    # 64 agents reading at once: ours share queries (agency_data.batching), the
    # baseline sends one query per call, as hand-written code does.
    b.step("point reads: 64 concurrent callers")
    many_ours_rate, many_raw_rate = await paired_concurrently(ours, raw, 64, n * 4, b.runs)

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
        Result(
            "point reads",
            "dl.agents.get (no cache), 64 concurrent callers",
            "q/s",
            many_ours_rate,
            many_raw_rate,
            "psycopg, one query per call, same pool size",
            target=">= 8x",
            met=many_ours_rate >= 8 * many_raw_rate,
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

    # 64 agents creating at once: ours commit them together (agency_data.batching), the
    # baseline commits one INSERT per call, as hand-written code does. fsync stays on.
    b.step("writes: 64 concurrent callers")
    many_ours_rate, many_raw_rate = await paired_concurrently(ours, raw, 64, n * 4, b.runs)
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
            "dl.tasks.create, 64 concurrent callers",
            "creates/s",
            many_ours_rate,
            many_raw_rate,
            "psycopg, one INSERT transaction per call",
            target=">= 20,000/s and >= 3x",
            met=many_ours_rate >= 20_000 and many_ours_rate >= 3 * many_raw_rate,
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


# The baseline's claim and completion, as a worker would write them by hand with psycopg: a
# lease with a fresh token, the completion fenced by it (no paused types, no per-type policy).
_RAW_CLAIM = (
    "WITH next AS (SELECT id FROM tasks WHERE tenant_id = %s AND status = 'pending' "
    "AND blocked_by = 0 AND run_at <= now() AND type = ANY(%s) "
    "ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE tasks AS t SET status = 'running', agent_id = %s, lease_token = gen_random_uuid(), "
    "lease_expires_at = clock_timestamp() + make_interval(secs => %s) "
    "FROM next WHERE t.id = next.id RETURNING t.*"
)
_RAW_COMPLETE = (
    "UPDATE tasks SET status = 'completed', result = %s WHERE tenant_id = %s AND id = %s "
    "AND status = 'running' AND lease_token = %s RETURNING *"
)


Work = Callable[[Any, int], Awaitable[int]]


async def _round(
    dl: DataLayer, agents: list[Any], workers: int, total: int, queued: bool, work: Work
) -> float:
    """Tasks/s of ``workers`` running ``work(agent_id, quota)`` at once: on ``total`` fresh
    tasks, claimed until none is left, or (``queued``) on ``total`` of the tasks queued."""
    if not queued:
        await dl.tasks.create_many([{"type": "claim", "data": {"i": i}} for i in range(total)])
    quota = total // workers if queued else total
    started = time.perf_counter()
    counts = await asyncio.gather(*(work(agents[i].id, quota) for i in range(workers)))
    elapsed = time.perf_counter() - started
    expected = quota * workers if queued else total
    assert sum(counts) == expected, f"{sum(counts)} tasks claimed, not {expected}"
    if not queued:
        await dl.execute("DELETE FROM tasks WHERE type = 'claim'")
    return sum(counts) / elapsed


async def claim_round(
    dl: DataLayer, agents: list[Any], workers: int, total: int, *, queued: bool = False
) -> float:
    """Tasks/s of ``workers`` workers claiming (10 at a time, the default lease) and completing
    ``total`` tasks, each completion fenced by the Task's lease token (see :func:`_round`)."""

    async def work(agent_id: Any, quota: int) -> int:
        done = 0
        while done < quota and (
            batch := await dl.tasks.claim(agent_id, types=["claim"], n=min(10, quota - done))
        ):
            for task in batch:
                assert task.lease_token is not None, "a claim leases its tasks"
                await dl.tasks.complete(task, result={"ok": True})
            done += len(batch)
        return done

    return await _round(dl, agents, workers, total, queued, work)


async def raw_claim_round(
    b: Bench, agents: list[Any], workers: int, total: int, *, queued: bool = False
) -> float:
    """:func:`claim_round` by hand: psycopg on the owner's pool (no row-level security)."""
    lease = b.dl.config.tasks.lease_seconds

    async def work(agent_id: Any, quota: int) -> int:
        done = 0
        while done < quota:
            async with b.raw.connection() as conn:
                cursor = await conn.execute(
                    _RAW_CLAIM, ["default", ["claim"], min(10, quota - done), agent_id, lease]
                )
                batch = await cursor.fetchall()
            if not batch:
                break
            for task in batch:
                async with b.raw.connection() as conn:
                    cursor = await conn.execute(
                        _RAW_COMPLETE,
                        [Jsonb({"ok": True}), "default", task["id"], task["lease_token"]],
                    )
                    assert cursor.rowcount == 1, "the baseline's completion is fenced"
            done += len(batch)
        return done

    return await _round(b.dl, agents, workers, total, queued, work)


async def _paired_rounds(
    b: Bench, agents: list[Any], workers: int, total: int, *, queued: bool = False
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    raw: list[float] = []
    for run in range(b.runs):
        # Alternating which goes first, so neither always follows the other's churn.
        for first in (run % 2 == 0, run % 2 == 1):
            if first:
                ours.append(await claim_round(b.dl, agents, workers, total, queued=queued))
            else:
                raw.append(await raw_claim_round(b, agents, workers, total, queued=queued))
    return ours, raw


async def claiming(b: Bench) -> list[Result]:
    """Tasks claimed and completed per second by 1, 4 and 16 concurrent workers, the way real
    workers do it (the default lease, completion fenced by its token), beside the same work
    written by hand; then 4 workers on a deep queue of one type. Each figure is the median of
    ``runs`` rounds, ours and the baseline's interleaved."""
    dl = b.dl
    results = []
    baseline = "psycopg, leased SQL by hand"
    agents = [await dl.agents.create(name=f"claimer-{i}", type="worker") for i in range(16)]
    b.step("task claiming: warm-up")
    await claim_round(dl, agents, 4, 200)
    await raw_claim_round(b, agents, 4, 200)
    total = b.size(1_000, 4_000)
    for workers in (1, 4, 16):
        b.step(f"task claiming: {workers} worker(s)")
        await equalize(dl.pool, b.raw)
        ours, raw = await _paired_rounds(b, agents, workers, total)
        results.append(
            Result(
                "task claiming",
                f"{workers} worker(s): claim + complete (leased, fenced)",
                "tasks/s",
                statistics.median(ours),
                statistics.median(raw),
                baseline,
                extra={"ours": ours, "baseline": raw, "tasks_per_run": total},
            )
        )
    # A backlog: the claim must find the next task through the ready-queue index, not by
    # reading the whole table. Analyzed, as autovacuum would have done by then.
    queued = b.size(20_000, 100_000)
    b.step(f"task claiming: 4 workers, {queued:,} queued")
    for start in range(0, queued, 10_000):
        count = min(10_000, queued - start)
        await dl.tasks.create_many([{"type": "claim", "data": {"i": i}} for i in range(count)])
    await dl.admin.execute("ANALYZE tasks")
    ours, raw = await _paired_rounds(b, agents, 4, total, queued=True)
    await dl.execute("DELETE FROM tasks WHERE type = 'claim'")
    results.append(
        Result(
            "task claiming",
            f"4 workers, {queued:,} queued (one type): claim + complete",
            "tasks/s",
            statistics.median(ours),
            statistics.median(raw),
            baseline,
            target="<= 25% overhead",
            met=statistics.median(raw) / statistics.median(ours) - 1 <= 0.25,
            extra={"ours": ours, "baseline": raw, "tasks_per_run": total, "queued": queued},
        )
    )
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
