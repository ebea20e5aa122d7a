"""Health probes: one round trip to each backend, timed, with versions and pool statistics.

:func:`versions_text` is the one way the versions are written for people (``agency-data health``
and the demo both use it); :func:`postgres_unreachable` reports on Redis alone when no
connection to PostgreSQL could be made at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
import redis.exceptions

from agency_data.config import DataLayerConfig
from agency_data.dsn import redact_dsn
from agency_data.embedded import EmbeddedValkey
from agency_data.errors import EmbeddedServerError
from agency_data.models import ComponentHealth, HealthStatus
from agency_data.postgres.pool import Pool
from agency_data.redis.client import RedisClient, close_client, make_client

__all__ = [
    "check_health",
    "postgres_unreachable",
    "probe_postgres",
    "probe_redis",
    "versions_text",
]

_PRODUCTS = {
    "postgresql": "PostgreSQL",
    "pgvector": "pgvector",
    "redis": "Redis",
    "valkey": "Valkey",
}

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


async def postgres_unreachable(
    config: DataLayerConfig, error: str, timeout: float = 2.0
) -> HealthStatus:
    """The report when connecting to PostgreSQL failed with ``error``: it down, Redis probed alone.

    ``error`` must already be fit to show (no password). An embedded Valkey is started for the
    probe when nobody runs it, as connecting would have, and released after.
    """
    postgres = ComponentHealth(name="postgresql", up=False, error=error)
    cache = await _probe_redis_alone(config, timeout)
    return HealthStatus(
        status="down",
        components={postgres.name: postgres, cache.name: cache},
        checked_at=datetime.now(UTC),
    )


async def _probe_redis_alone(config: DataLayerConfig, timeout: float) -> ComponentHealth:
    server: EmbeddedValkey | None = None
    url: str | None = None
    try:
        if config.redis.is_embedded:
            embedded = config.embedded
            server = EmbeddedValkey(
                embedded.data_dir,
                start_timeout=embedded.start_timeout,
                settings=embedded.valkey_settings,
            )
            url = await asyncio.to_thread(server.acquire)
        client = make_client(config.redis, url)
        try:
            return await probe_redis(client, timeout)
        finally:
            await close_client(client)
    except EmbeddedServerError as exc:
        return ComponentHealth(name="redis", up=False, error=str(exc))
    finally:
        if server is not None:
            with contextlib.suppress(EmbeddedServerError):
                await asyncio.to_thread(server.release, stop_if_last=config.embedded.stop_on_close)


def versions_text(component: ComponentHealth) -> str:
    """The component's versions for people: ``PostgreSQL 18.1, pgvector 0.8.1``, ``Valkey 8.1.4``.

    Valkey also reports the Redis version it is compatible with; that is shown in brackets.
    """
    versions = dict(component.versions)
    if "valkey" in versions and "redis" in versions:
        compatible = versions.pop("redis")
        versions["valkey"] = f"{versions['valkey']} (Redis {compatible} compatible)"
    return ", ".join(f"{_PRODUCTS.get(name, name)} {value}" for name, value in versions.items())
