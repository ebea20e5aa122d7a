"""What a DataLayer runs for observability, in one place: the pieces wired at connect.

:class:`Monitor` owns the :class:`Telemetry` the stores record into, the registry, the
sampler and its background loop, and the ``/metrics`` endpoints; the DataLayer makes one in its
constructor (no I/O) and attaches the pools and clients when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from psycopg import AsyncCursor
from psycopg.conninfo import conninfo_to_dict

from agency_data.config import MonitoringConfig
from agency_data.models import CacheStats
from agency_data.observability.cursor import cursor_class
from agency_data.observability.instrument import Telemetry
from agency_data.observability.metrics import Metrics
from agency_data.observability.sampler import Sample, Sampler
from agency_data.observability.server import MetricsEndpoint, serve
from agency_data.observability.tracing import Endpoint, find_tracing
from agency_data.postgres.database import Database

__all__ = ["Monitor"]

_log = logging.getLogger("agency_data.observability")


class Monitor:
    """A DataLayer's telemetry, metrics registry, sampler and endpoints."""

    def __init__(self, config: MonitoringConfig) -> None:
        self.config = config
        self.telemetry = Telemetry(config)
        self.metrics = Metrics(self.telemetry)
        self.sampler: Sampler | None = None
        self._loop: asyncio.Task[None] | None = None
        self._endpoints: list[MetricsEndpoint] = []

    # -- at connect ----------------------------------------------------------------------------

    def start_tracing(self, conninfo: str, redis: Any) -> type[AsyncCursor[Any]] | None:
        """Turn tracing on if OpenTelemetry is set up; the cursor class the pools should use."""
        self.telemetry.tracing = find_tracing(
            self.config.tracing,
            {"postgresql": _postgres_endpoint(conninfo), "redis": _redis_endpoint(redis)},
        )
        comments = self.telemetry.tracing is not None and self.config.sql_comments
        return cursor_class(self.telemetry, comments=comments)

    def attach(
        self,
        *,
        pools: dict[str, Any],
        app: Database,
        admin: Database,
        cache_stats: Callable[[], CacheStats],
        probe: Callable[[], Awaitable[dict[str, bool]]],
        volumes: dict[str, Path],
    ) -> None:
        """Point the registry and sampler at the connected pools and clients."""
        self.metrics.pools = pools
        self.metrics.cache_stats = cache_stats
        self.sampler = Sampler(app=app, admin=admin, probe=probe, volumes=volumes)

    # -- serving -------------------------------------------------------------------------------

    async def sample(self) -> Sample | None:
        """A sample no older than ``monitoring.interval`` (None before connect)."""
        if self.sampler is None:
            return None
        sample = await self.sampler.fresh(self.config.interval)
        self.metrics.sample = sample
        return sample

    async def text(self) -> str:
        """The registry in Prometheus's text format, with fresh sampled gauges."""
        await self.sample()
        return self.metrics.text().decode()

    async def serve(self, port: int, host: str) -> MetricsEndpoint:
        """Serve ``/metrics``, and keep the sampled gauges fresh while it runs."""
        endpoint = serve(self.metrics.registry, port, host)
        self._endpoints.append(endpoint)
        self.keep_sampling()
        await self.sample()
        return endpoint

    def keep_sampling(self) -> None:
        """Sample every ``monitoring.interval`` seconds in the background (idempotent)."""
        if self._loop is None and self.sampler is not None:
            self._loop = asyncio.create_task(self._sample_forever(), name="agency-data-sampler")

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # noqa: BLE001 - the loop outlives one bad sample; logged
                _log.exception("taking a metrics sample failed")
            await asyncio.sleep(self.config.interval)

    async def aclose(self) -> None:
        """Stop the endpoints and the sampling loop."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            await endpoint.aclose()
        self.sampler = None
        self.metrics.pools = {}
        self.metrics.cache_stats = None


def _postgres_endpoint(conninfo: str) -> Endpoint:
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:  # noqa: BLE001 - spans go without an address rather than fail a connect
        return Endpoint()
    port = str(params.get("port") or "5432")
    dbname = params.get("dbname")
    return Endpoint(
        address=str(params.get("host") or params.get("hostaddr") or "localhost"),
        port=int(port) if port.isdigit() else None,
        namespace=str(dbname) if dbname is not None else None,
    )


def _redis_endpoint(client: Any) -> Endpoint:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    namespace = str(kwargs.get("db", 0))
    if "path" in kwargs:
        return Endpoint(address=str(kwargs["path"]), namespace=namespace)
    if "host" in kwargs:
        port = kwargs.get("port")
        return Endpoint(
            address=str(kwargs["host"]),
            port=int(port) if port is not None else None,
            namespace=namespace,
        )
    return Endpoint()
