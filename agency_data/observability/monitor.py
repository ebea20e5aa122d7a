"""What a DataLayer runs for observability, in one place: the pieces wired at connect.

:class:`Monitor` owns the :class:`Telemetry` the stores record into, the registry, the
sampler and its background loop, and the ``/metrics`` endpoints; the DataLayer makes one in its
constructor (no I/O) and attaches the pools and clients when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg import AsyncCursor
from psycopg.conninfo import conninfo_to_dict

from agency_data.config import MonitoringConfig
from agency_data.models import CacheStats, DiskSpace, HealthStatus, ReplicationStatus
from agency_data.observability.alerts import Alert, Alerts
from agency_data.observability.cursor import cursor_class
from agency_data.observability.instrument import Telemetry
from agency_data.observability.metrics import (
    Metrics,
    ReplicaSource,
    denial_counts,
    replica_families,
)
from agency_data.observability.recall import Measurable, RecallProbe
from agency_data.observability.sampler import Sample, Sampler
from agency_data.observability.server import MetricsEndpoint, serve
from agency_data.observability.tracing import Endpoint, find_tracing
from agency_data.postgres.database import Database

__all__ = ["Monitor"]

_log = logging.getLogger("agency_data.observability")


class Monitor:
    """A DataLayer's telemetry, registry, sampler, alerts, recall probe and endpoints.

    After :meth:`attach`, a background loop takes a sample and evaluates the alerts every
    ``monitoring.interval`` seconds (the first after one interval, so a short-lived DataLayer
    costs nothing), and runs the recall probe every ``monitoring.recall_interval``.
    """

    def __init__(self, config: MonitoringConfig) -> None:
        self.config = config
        self.telemetry = Telemetry(config)
        self.metrics = Metrics(self.telemetry)
        self.alerts = Alerts(
            config.alerts,
            self.telemetry,
            pools=lambda: self.metrics.pools,
            cache_stats=lambda: self.metrics.cache_stats() if self.metrics.cache_stats else None,
            denials=lambda: denial_counts(self.telemetry, self.metrics.pools),
        )
        self.metrics.extra.append(self._firing)
        self.sampler: Sampler | None = None
        self.probe: RecallProbe | None = None
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
        admin: Database,
        cache_stats: Callable[[], CacheStats],
        redis_up: Callable[[], Awaitable[bool]],
        collections: Callable[[str, str], Measurable],
        volumes: dict[str, Path],
        max_changes: int,
        replicas: ReplicaSource | None = None,
    ) -> None:
        """Point the registry, sampler and probe at the connected pools and clients."""
        self.metrics.pools = pools
        if replicas is not None:
            self.metrics.extra.append(lambda: replica_families(replicas))
        self.metrics.cache_stats = cache_stats
        self.sampler = Sampler(
            admin=admin,
            redis_up=redis_up,
            volumes={**volumes, **self.config.disk_paths},
            max_changes=max_changes,
        )
        self.probe = RecallProbe(self.telemetry, collections)
        if self.config.alerts.enabled or self.config.recall_probe:
            self._start_loop(first_after=self.config.interval)

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
        await self.sample()
        self._start_loop(first_after=self.config.interval)
        return endpoint

    async def check(self) -> list[Alert]:
        """Take a fresh sample and evaluate the alerts now; the changes."""
        if self.sampler is None:
            return []
        sample = await self.sampler.take()
        self.metrics.sample = sample
        return await self.alerts.evaluate(sample)

    async def probe_recall(self) -> dict[str, float]:
        """Run the recall probe now."""
        return await self.probe.run() if self.probe is not None else {}

    async def add_to_health(self, report: HealthStatus, timeout: float) -> None:
        """Disk space, replication and the firing alerts, after one more evaluation."""
        try:
            async with asyncio.timeout(timeout):
                await self.check()
        except TimeoutError:
            pass  # disk, replication and alerts stay as the last sample had them
        sample = self.metrics.sample
        if sample is not None:
            if sample.server_connections is not None and "postgresql" in report.components:
                used, most = sample.server_connections
                report.components["postgresql"].details["server_connections"] = {
                    "used": used,
                    "max": most,
                }
            report.disk = {
                volume: DiskSpace(free_bytes=free, total_bytes=total)
                for volume, (free, total) in sample.disk.items()
            }
            if sample.backends.get("postgresql"):
                report.replication = ReplicationStatus(
                    standby=sample.standby_lag is not None,
                    lag_seconds=sample.standby_lag,
                    replicas={name: lag for name, (lag, _) in sample.replicas.items()},
                )
        report.alerts = [alert.as_dict() for alert in self.alerts.firing()]

    def _start_loop(self, first_after: float) -> None:
        if self._loop is None and self.sampler is not None:
            self._loop = asyncio.create_task(
                self._run_forever(first_after), name="agency-data-monitor"
            )

    async def _run_forever(self, first_after: float) -> None:
        await asyncio.sleep(first_after)
        probed_at = time.monotonic()
        while True:
            try:
                if self.config.alerts.enabled:
                    await self.check()
                else:
                    await self.sample()
                if (
                    self.config.recall_probe
                    and time.monotonic() - probed_at >= self.config.recall_interval
                ):
                    probed_at = time.monotonic()
                    await self.probe_recall()
            except Exception:  # noqa: BLE001 - the loop outlives one bad round; logged
                _log.exception("a monitoring round failed")
            await asyncio.sleep(self.config.interval)

    def _firing(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "agency_data_alerts_firing",
            "1 for each alert the layer's own rules have firing now.",
            labels=["alert", "series"],
        )
        for alert in self.alerts.firing():
            series = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
            family.add_metric([alert.name, series], 1)
        yield family

    async def aclose(self) -> None:
        """Stop the loop, the endpoints and the sampler's connection."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            await endpoint.aclose()
        await self.alerts.aclose()
        sampler, self.sampler = self.sampler, None
        if sampler is not None:
            await sampler.aclose()
        self.probe = None
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
