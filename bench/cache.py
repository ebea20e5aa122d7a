"""Cache scenarios: L1 and L2 hits, get_many, and a 95/5 Zipf workload against raw redis.asyncio
and cashews."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from agency_data import DataLayer
from bench.context import Bench
from bench.harness import Result, paired, paired_concurrently, throughput


async def cache(b: Bench, l2_only: DataLayer, redis_url: str) -> list[Result]:
    """Gets and sets per second, level by level, and against the peers."""
    dl = b.dl
    raw = aioredis.Redis.from_url(redis_url)
    value = {"capabilities": ["search", "plan"], "score": 0.93, "owner": "agent-42"}
    await dl.cache.set("hot", value, ttl=3600)
    await l2_only.cache.set("hot", value, ttl=3600)
    raw_key = "ad:{default}:c:default:hot"
    # The baselines read the keys the layer wrote: were the key layout to change, they would
    # time misses.
    assert await raw.get(raw_key) is not None, f"no {raw_key} in Redis"
    n = b.size(20_000, 50_000)

    b.step("cache: L1 hits")
    l1_rate = await throughput(lambda: dl.cache.get("hot"), n * 10, b.runs)
    b.step("cache: L2 hits vs redis.asyncio GET")
    l2_rate, raw_rate = await paired(
        lambda: l2_only.cache.get("hot"), lambda: raw.get(raw_key), n // 4, b.runs
    )

    b.step("cache: L2 hits, 256 concurrent callers")
    # 256 agents reading at once: ours share round trips (concurrent GETs become one MGET),
    # the baseline sends one GET per call on the same kind of client.
    # The baseline's pool is ours: as many connections, callers waiting for a free one.
    pooled = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=l2_only.config.redis.max_connections
        )
    )
    many_callers, many_callers_raw = await paired_concurrently(
        lambda: l2_only.cache.get("hot"), lambda: pooled.get(raw_key), 256, n * 4, b.runs
    )
    await pooled.aclose()

    b.step("cache: get_many (100 keys)")
    keys = [f"many:{i}" for i in range(100)]
    await l2_only.cache.set_many({k: value for k in keys}, ttl=3600)
    raw_keys = [f"ad:{{default}}:c:default:{k}" for k in keys]
    assert None not in await raw.mget(raw_keys), "MGET finds every key the layer wrote"
    many_ops, mget_ops = await paired(
        lambda: l2_only.cache.get_many(keys), lambda: raw.mget(raw_keys), n // 100, b.runs
    )
    many_rate, mget_rate = 100 * many_ops, 100 * mget_ops

    b.step("cache: 95/5 Zipf workload")
    # A bounded Zipf (s = 1.2) over 5,000 keys, 95% reads; each run starts with a warm-up of the
    # same length, and "ideal" is the hit rate of an unbounded cache on the same requests.
    ops, space = b.size(20_000, 100_000), 5_000
    weights = 1 / np.arange(1, space + 1) ** 1.2
    keys_drawn = b.rng(5).choice(space, size=2 * ops, p=weights / weights.sum())
    writes = b.rng(6).random(2 * ops) < 0.05
    everything = list(zip(keys_drawn.tolist(), writes.tolist(), strict=True))
    warmup, workload = everything[:ops], everything[ops:]
    ideal = _ideal_hit_rate(warmup, workload)
    ours_rate, hit_rate = await _zipf_ours(dl, warmup, workload, value)
    raw_mixed = await _zipf_raw(raw, workload, value)
    cashews_rate, cashews_hits = await _zipf_cashews(redis_url, warmup, workload, value)
    # cashews with its own in-process cache (kept coherent by Redis client tracking): the
    # fair peer of our L1+L2.
    local_rate, local_hits = await _zipf_cashews(
        redis_url, warmup, workload, value, client_side=True
    )
    await raw.aclose()
    return [
        Result(
            "cache", "get, L1 hit", "gets/s", l1_rate, target="> 1,000,000", met=l1_rate > 1_000_000
        ),
        Result(
            "cache",
            "get, L2 hit (Redis)",
            "gets/s",
            l2_rate,
            raw_rate,
            "redis.asyncio GET",
            target="within 15%",
            met=raw_rate / l2_rate - 1 <= 0.15,
        ),
        Result(
            "cache",
            "get, L2 hit, 256 concurrent callers",
            "gets/s",
            many_callers,
            many_callers_raw,
            "redis.asyncio, one GET per call",
            target=">= 200,000/s and >= 8x",
            met=many_callers >= 200_000 and many_callers >= 8 * many_callers_raw,
        ),
        Result(
            "cache",
            "get_many (100 keys), from Redis",
            "keys/s",
            many_rate,
            mget_rate,
            "redis.asyncio MGET",
            target="> 100,000",
            met=many_rate > 100_000,
        ),
        Result(
            "cache",
            "95/5 Zipf, L1+L2",
            "ops/s",
            ours_rate,
            raw_mixed,
            "redis.asyncio GET/SET",
            extra={"hit_rate": hit_rate},
        ),
        Result(
            "cache",
            "95/5 Zipf: hit rate",
            "rate",
            hit_rate,
            ideal,
            "an unbounded cache",
            target="> 0.95",
            met=hit_rate > 0.95,
        ),
        Result(
            "cache",
            "95/5 Zipf vs cashews",
            "ops/s",
            ours_rate,
            cashews_rate,
            "cashews (Redis backend)",
            target="faster",
            met=ours_rate > cashews_rate,
            extra={"cashews_hit_rate": cashews_hits},
        ),
        Result(
            "cache",
            "95/5 Zipf vs cashews, client-side cache on",
            "ops/s",
            ours_rate,
            local_rate,
            "cashews (Redis backend, client_side=True)",
            target="faster",
            met=ours_rate > local_rate,
            extra={"cashews_hit_rate": local_hits},
        ),
    ]


async def _replay(
    get: Callable[[str], Awaitable[Any]],
    put: Callable[[str, Any], Awaitable[Any]],
    workload: list[tuple[int, bool]],
    value: Any,
) -> tuple[float, float]:
    """Run the read-through workload on one cache; ops/s and the hit rate of its reads."""
    hits = 0
    started = time.perf_counter()
    for key, write in workload:
        name = f"k{key}"
        if write:
            await put(name, value)
        elif await get(name) is not None:
            hits += 1
        else:
            await put(name, value)
    elapsed = time.perf_counter() - started
    reads = sum(1 for _, w in workload if not w)
    return len(workload) / elapsed, hits / reads


async def _zipf_ours(
    dl: DataLayer, warmup: list[tuple[int, bool]], workload: list[tuple[int, bool]], value: Any
) -> tuple[float, float]:
    cache = dl.cache.with_namespace("zipf")

    async def put(name: str, v: Any) -> None:
        await cache.set(name, v, ttl=3600)

    await _replay(cache.get, put, warmup, value)
    return await _replay(cache.get, put, workload, value)


async def _zipf_raw(raw: aioredis.Redis, workload: list[tuple[int, bool]], value: Any) -> float:
    import orjson

    payload = orjson.dumps(value)
    await raw.flushdb()
    started = time.perf_counter()
    for key, write in workload:
        name = f"raw:{key}"
        if write or await raw.get(name) is None:
            await raw.set(name, payload, ex=3600)
    return len(workload) / (time.perf_counter() - started)


def _ideal_hit_rate(warmup: list[tuple[int, bool]], workload: list[tuple[int, bool]]) -> float:
    seen = {key for key, _ in warmup}
    hits = reads = 0
    for key, write in workload:
        if not write:
            reads += 1
            hits += key in seen
        seen.add(key)
    return hits / reads


async def _zipf_cashews(
    redis_url: str,
    warmup: list[tuple[int, bool]],
    workload: list[tuple[int, bool]],
    value: Any,
    *,
    client_side: bool = False,
) -> tuple[float, float]:
    from cashews import Cache

    peer = Cache()
    # The same server; suppress=False so that a connection problem fails the run instead of
    # being counted as fast misses. cashews picks its backend by scheme and knows no unix://,
    # so the address is given beside it.
    peer.setup("redis://localhost", address=redis_url, client_side=client_side, suppress=False)
    await peer.init()
    await peer.ping()

    prefix = "cashews-local" if client_side else "cashews"

    async def put(name: str, v: Any) -> None:
        await peer.set(f"{prefix}:{name}", v, expire=3600)

    async def get(name: str) -> Any:
        return await peer.get(f"{prefix}:{name}")

    await _replay(get, put, warmup, value)
    result = await _replay(get, put, workload, value)
    await peer.close()
    return result
