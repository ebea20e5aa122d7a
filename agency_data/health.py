"""Health probes: one round trip to each backend, timed, with versions and pool statistics."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
import redis.exceptions

from agency_data.config import redact_dsn
from agency_data.models import ComponentHealth, HealthStatus
from agency_data.postgres.pool import Pool
from agency_data.redis.client import RedisClient

__all__ = ["check_health", "probe_postgres", "probe_redis"]

_VERSIONS_SQL = """
SELECT current_setting('server_version') AS postgresql,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector
"""


async def probe_postgres(pool: Pool, timeout: float) -> ComponentHealth:
    """Time a version query through the pool, and report the pool's statistics."""
    stats: dict[str, Any] = dict(pool.get_stats())
    stats["max_size"] = pool.max_size
    started = time.perf_counter()
    try:
        async with pool.connection(timeout=timeout) as conn:
            row = await (await conn.execute(_VERSIONS_SQL)).fetchone()
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        return ComponentHealth(
            name="postgresql", up=False, details=stats, error=redact_dsn(str(exc).strip())
        )
    latency = (time.perf_counter() - started) * 1000
    versions = {k: str(v) for k, v in (row or {}).items() if v is not None}
    return ComponentHealth(
        name="postgresql", up=True, latency_ms=latency, versions=versions, details=stats
    )


async def probe_redis(client: RedisClient, timeout: float) -> ComponentHealth:
    """Time a PING, and read the server's version from INFO."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
            latency = (time.perf_counter() - started) * 1000
            info = await client.info("server")
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return ComponentHealth(
            name="redis", up=False, error=redact_dsn(str(exc)) or type(exc).__name__
        )
    versions = {"redis": str(info.get("redis_version", "unknown"))}
    if "valkey_version" in info:
        versions["valkey"] = str(info["valkey_version"])
    return ComponentHealth(name="redis", up=True, latency_ms=latency, versions=versions)


async def check_health(pool: Pool, client: RedisClient, timeout: float = 2.0) -> HealthStatus:
    """Probe both backends at once: ok, degraded (only Redis down) or down."""
    postgres, cache = await asyncio.gather(
        probe_postgres(pool, timeout), probe_redis(client, timeout)
    )
    if postgres.up and cache.up:
        status = "ok"
    elif postgres.up:
        status = "degraded"
    else:
        status = "down"
    return HealthStatus(
        status=status,
        components={postgres.name: postgres, cache.name: cache},
        checked_at=datetime.now(UTC),
    )
