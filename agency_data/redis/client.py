"""The redis.asyncio client, built from the config: standalone, Cluster or Sentinel."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from agency_data.config import RedisConfig

__all__ = ["RedisClient", "cancelling", "close_client", "make_client", "prepare", "pubsub_client"]

_log = logging.getLogger("agency_data.redis")
# The Sentinel behind each client made through one, so that closing the client closes it too.
_sentinels: weakref.WeakKeyDictionary[Redis, Sentinel] = weakref.WeakKeyDictionary()

RedisClient: TypeAlias = "Redis | RedisCluster"


def cancelling() -> bool:
    """True when the running task has been asked to stop.

    redis-py's read timeouts can turn a cancellation that lands mid-read into a TimeoutError;
    loops that retry on timeouts check this so that they still stop when cancelled.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@asynccontextmanager
async def pubsub_client(client: RedisClient) -> AsyncIterator[Redis]:
    """A plain client to subscribe with.

    On a Cluster, classic pub/sub reaches subscribers on every node, so one node will do; a
    connection of its own keeps the long-lived subscription apart from the cluster client's
    command connections (sharing them misbehaves under load in redis-py 8.1).
    """
    if not isinstance(client, RedisCluster):
        yield client
        return
    await client.initialize()
    node = client.get_default_node()
    kwargs = node.connection_kwargs
    own = Redis(
        host=node.host,
        port=int(node.port),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        socket_timeout=kwargs.get("socket_timeout"),
        socket_connect_timeout=kwargs.get("socket_connect_timeout"),
    )
    try:
        yield own
    finally:
        await own.aclose()


async def close_client(client: RedisClient) -> None:
    """Close ``client`` and, when it came through Sentinel, the connections to the sentinels."""
    await client.aclose()
    sentinel = _sentinels.pop(client, None) if isinstance(client, Redis) else None
    if sentinel is not None:
        for connection in sentinel.sentinels:
            await connection.aclose()


async def prepare(client: RedisClient) -> None:
    """Learn a Cluster's slot map now: concurrent first commands on an uninitialised
    redis-py cluster client race each other's initialisation. Redis being down is fine here."""
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except (RedisError, OSError) as exc:
            _log.warning("could not reach the Redis Cluster yet (%s); will retry on first use", exc)


def make_client(config: RedisConfig, url: str | None = None) -> RedisClient:
    """A client for the configured server; ``url`` overrides it (the embedded server's URL).

    Connections are made lazily, so building a client never fails because Redis is down.
    """
    # Few, quick retries: when Redis is down the cache must turn into misses fast, not stall.
    timeouts: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.01), config.max_retries),
    }
    common = dict(timeouts)
    password = config.password.get_secret_value() if config.password else None
    if password is not None:
        common["password"] = password
    target = url or (config.url.get_secret_value() if config.url else None)
    # TLS for a configured server; the embedded one (url given) listens on a Unix socket.
    tls = _tls(config) if url is None and config.uses_tls else {}
    if tls:
        # Cluster and Sentinel clients pick their TLS connection classes from ssl=True.
        tls["ssl"] = True
    if config.sentinel is not None:
        sentinels = [
            (h, int(p)) for h, _, p in (s.rpartition(":") for s in config.sentinel.sentinels)
        ]
        sentinel_password = config.sentinel.password
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            sentinels,
            sentinel_kwargs={
                **timeouts,
                **tls,
                "password": sentinel_password.get_secret_value() if sentinel_password else None,
            },
            **common,
            **tls,
        )
        master: Redis = sentinel.master_for(
            config.sentinel.master_name,
            db=config.db,
            max_connections=config.max_connections,
        )
        _sentinels[master] = sentinel
        return master
    common.update(tls)
    if tls and not config.cluster:
        # A plain pool is told its connection class (a redis:// url with ssl on as well).
        del common["ssl"]
        common["connection_class"] = SSLConnection
    if config.cluster:
        # The cluster client retries per node itself; sharing one Retry object across its
        # connections makes concurrent commands fail (seen with redis-py 8.1).
        common.pop("retry", None)
        if target is not None:
            return RedisCluster.from_url(target, **common)
        return RedisCluster(host=config.host or "localhost", port=config.port, **common)
    # A blocking pool: when every connection is busy, callers wait (up to pool_timeout) for
    # one instead of failing at once with "Too many connections".
    if target is not None:
        pool = BlockingConnectionPool.from_url(
            target,
            db=config.db,
            max_connections=config.max_connections,
            timeout=config.pool_timeout,
            **common,
        )
    else:
        pool = BlockingConnectionPool(
            host=config.host or "localhost",
            port=config.port,
            db=config.db,
            max_connections=config.max_connections,
            timeout=config.pool_timeout,
            **common,
        )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def _tls(config: RedisConfig) -> dict[str, Any]:
    """redis-py's TLS settings for ``config``: the server's certificate is always checked."""
    files = {
        "ssl_ca_certs": config.ssl_ca_certs,
        "ssl_certfile": config.ssl_certfile,
        "ssl_keyfile": config.ssl_keyfile,
    }
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": config.ssl_check_hostname,
        **{key: str(path) for key, path in files.items() if path is not None},
    }
