"""The layer's Prometheus registry: what it exposes, read from live state when scraped.

Each DataLayer owns a ``CollectorRegistry`` (nothing is registered globally, nothing happens at
import). One collector turns the layer's own counters into metric families at scrape time, so
the hot paths pay only for :class:`~agency_data.observability.timings.Timings`; gauges that
need a query (tasks by status, index sizes, whether the backends answer) come from the last
:class:`~agency_data.observability.sampler.Sample`.

Families (base units, ``agency_data_`` prefix):

=============================================== ===========================================
``agency_data_query_duration_seconds``          histogram: ``operation``, ``outcome``
``agency_data_pool_connections``                gauge: ``pool``, ``state`` (idle/used/waiting)
``agency_data_pool_timeouts_total``             counter: ``pool``
``agency_data_pool_connection_errors_total``    counter: ``pool``
``agency_data_cache_requests_total``            counter: ``level`` (l1/l2), ``result``
``agency_data_cache_evictions_total``           counter
``agency_data_cache_l1_entries`` / ``_bytes``   gauges
``agency_data_cache_degraded_total``            counter: ``kind`` (read/write)
``agency_data_vector_search_duration_seconds``  histogram: ``collection``, ``kind``
``agency_data_vector_index_bytes``              gauge: ``collection``
``agency_data_vector_index_bytes_per_vector``   gauge: ``collection``
``agency_data_vector_index_valid``              gauge: ``collection``
``agency_data_vector_dead_rows_ratio``          gauge: ``collection``
``agency_data_vector_recall_estimate``          gauge: ``collection`` (the recall probe)
``agency_data_tasks``                           gauge: ``status``, ``type``
``agency_data_tasks_oldest_pending_age_seconds`` gauge: ``type``
``agency_data_backend_up``                      gauge: ``backend``
``agency_data_slow_queries_total``              counter
``agency_data_denials_total``                   counter: ``kind``
``agency_data_disk_free_bytes`` / ``_total_bytes`` gauges: ``volume`` (embedded data directory)
``agency_data_replication_lag_seconds`` / ``_bytes`` gauges: ``replica`` (``self`` on a replica)
``agency_data_outbox_unsent``                    gauge: committed messages not yet relayed
``agency_data_outbox_oldest_unsent_seconds``     gauge: since the oldest of them committed
``agency_data_outbox_refused_total``             counter: messages Redis refused, set aside
``agency_data_changes_retained``                 gauge: changes the feed keeps
``agency_data_changes_max_rows``                 gauge: its cap (``changes.max_rows``)
``agency_data_change_consumers_lost``            gauge: named consumers marked lost
``agency_data_alerts_firing``                   gauge: ``alert``, ``series``
``agency_data_server_connections`` / ``agency_data_server_max_connections`` gauges
``agency_data_sample_timestamp_seconds``        gauge: when the sampled gauges were read
=============================================== ===========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agency_data.models import CacheStats
from agency_data.observability.instrument import Telemetry
from agency_data.observability.sampler import FeedSample, Sample
from agency_data.observability.timings import Timings

__all__ = ["CONTENT_TYPE", "Metrics", "ReplicaSource", "denial_counts", "replica_families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReplicaSource(Protocol):
    """What the read replicas tell the metrics (agency_data.postgres.replicas.Replicas)."""

    fallbacks: dict[str, int]

    def stats(self) -> list[tuple[str, Any, int]]:
        """Each replica's name, state (``up``, ``lag``) and reads served."""
        ...


def replica_families(replicas: ReplicaSource) -> Iterator[Metric]:
    """The read replicas' families: answering, lag as last measured, reads, fallbacks."""
    up = GaugeMetricFamily(
        "agency_data_replica_up",
        "1 when the read replica answers as a standby.",
        labels=["replica"],
    )
    lag = GaugeMetricFamily(
        "agency_data_replica_lag_seconds",
        "How far each read replica was behind at its latest check.",
        labels=["replica"],
    )
    reads = CounterMetricFamily(
        "agency_data_replica_reads", "Reads a read replica served.", labels=["replica"]
    )
    for name, state, served in replicas.stats():
        up.add_metric([name], 1.0 if state.up else 0.0)
        if state.up and state.lag is not None:
            lag.add_metric([name], state.lag)
        reads.add_metric([name], served)
    fallbacks = CounterMetricFamily(
        "agency_data_replica_fallbacks",
        "Lag-tolerant reads the primary served instead, by reason (down, lag, behind, primary, "
        "busy, failed).",
        labels=["reason"],
    )
    for reason, count in sorted(replicas.fallbacks.items()):
        fallbacks.add_metric([reason], count)
    yield from (up, lag, reads, fallbacks)


class Metrics:
    """A DataLayer's registry and the sources its collector reads."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.registry = CollectorRegistry(auto_describe=False)
        self.pools: dict[str, Any] = {}
        self.cache_stats: Callable[[], CacheStats] | None = None
        self.sample: Sample | None = None
        self.extra: list[Callable[[], Iterator[Metric]]] = []
        # Registrable in another app's registry as well (one registry's scrape each).
        self.collector: Collector = _LayerCollector(self)
        self.registry.register(self.collector)

    def text(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)


class _LayerCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Registration must not call collect() (the pools may not exist yet).
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield from _operations(m.telemetry)
        yield from _searches(m.telemetry)
        yield from _pools(m.pools)
        if m.cache_stats is not None:
            yield from _cache(m.cache_stats())
        yield from _counters(m.telemetry, m.pools)
        yield from _recall(m.telemetry)
        if m.sample is not None:
            yield from _sampled(m.sample)
        for source in m.extra:
            yield from source()


def denial_counts(telemetry: Telemetry, pools: dict[str, Any]) -> dict[str, int]:
    """Refused logins (the pools count them) and refused rows or tables, since start."""
    counts = dict(telemetry.denials)
    refused = sum(getattr(pool, "refused_logins", 0) for pool in pools.values())
    counts["authentication"] = counts.get("authentication", 0) + refused
    return counts


def _histogram(family: HistogramMetricFamily, labels: list[str], timings: Timings) -> None:
    family.add_metric(labels, list(timings.cumulative()), timings.sum)


def _operations(telemetry: Telemetry) -> Iterator[Metric]:
    by_tenant = telemetry.by_tenant
    family = HistogramMetricFamily(
        "agency_data_query_duration_seconds",
        "Time taken by the data layer's public operations, by outcome.",
        labels=["operation", "outcome", "tenant"] if by_tenant else ["operation", "outcome"],
    )
    for op in list(telemetry.operations.values()):
        for outcome, timings in op.outcomes():
            if outcome != "ok" and not timings.count:
                continue
            labels = [op.name, outcome]
            if by_tenant:
                labels.append(op.tenant or "")
            _histogram(family, labels, timings)
    yield family


def _searches(telemetry: Telemetry) -> Iterator[Metric]:
    family = HistogramMetricFamily(
        "agency_data_vector_search_duration_seconds",
        "Time taken by vector searches, by collection and kind (ann, exact, filtered, hybrid).",
        labels=["collection", "kind"],
    )
    for (collection, kind), timings in list(telemetry.searches.items()):
        _histogram(family, [collection, kind], timings)
    yield family


def _pools(pools: dict[str, Any]) -> Iterator[Metric]:
    connections = GaugeMetricFamily(
        "agency_data_pool_connections",
        "PostgreSQL pool connections by state; waiting counts requests queued for one.",
        labels=["pool", "state"],
    )
    size = GaugeMetricFamily(
        "agency_data_pool_max_connections",
        "The most connections the pool may open.",
        labels=["pool"],
    )
    timeouts = CounterMetricFamily(
        "agency_data_pool_timeouts",
        "Requests for a connection that timed out or were refused (pool full).",
        labels=["pool"],
    )
    errors = CounterMetricFamily(
        "agency_data_pool_connection_errors",
        "Failed attempts to open a connection to PostgreSQL.",
        labels=["pool"],
    )
    for name, pool in list(pools.items()):
        stats = pool.get_stats()
        open_now = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        connections.add_metric([name, "idle"], idle)
        connections.add_metric([name, "used"], max(open_now - idle, 0))
        connections.add_metric([name, "waiting"], stats.get("requests_waiting", 0))
        size.add_metric([name], pool.max_size)
        timeouts.add_metric([name], stats.get("requests_errors", 0))
        errors.add_metric([name], stats.get("connections_errors", 0))
    yield from (connections, size, timeouts, errors)


def _cache(stats: CacheStats) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "agency_data_cache_requests",
        "Cache lookups by level and result.",
        labels=["level", "result"],
    )
    requests.add_metric(["l1", "hit"], stats.l1_hits)
    requests.add_metric(["l1", "miss"], stats.l1_misses)
    requests.add_metric(["l2", "hit"], stats.l2_hits)
    requests.add_metric(["l2", "miss"], stats.l2_misses)
    yield requests
    yield CounterMetricFamily(
        "agency_data_cache_evictions",
        "Entries evicted from L1 to stay in its bounds.",
        value=stats.l1_evictions,
    )
    yield GaugeMetricFamily(
        "agency_data_cache_l1_entries", "Entries in the in-process cache.", value=stats.l1_entries
    )
    yield GaugeMetricFamily(
        "agency_data_cache_l1_bytes", "Bytes held by the in-process cache.", value=stats.l1_bytes
    )
    degraded = CounterMetricFamily(
        "agency_data_cache_degraded",
        "Cache reads answered as misses and writes skipped while Redis was unreachable.",
        labels=["kind"],
    )
    degraded.add_metric(["read"], stats.degraded_reads)
    degraded.add_metric(["write"], stats.degraded_writes)
    yield degraded
    yield GaugeMetricFamily(
        "agency_data_cache_l1_serving",
        "1 while L1 serves reads (it stops while the invalidation listener is down).",
        value=1 if stats.l1_serving else 0,
    )


def _recall(telemetry: Telemetry) -> Iterator[Metric]:
    recall = GaugeMetricFamily(
        "agency_data_vector_recall_estimate",
        "Estimated recall of each collection's index on sampled recent searches (0..1).",
        labels=["collection"],
    )
    for name, estimate in sorted(telemetry.recall.items()):
        recall.add_metric([name], estimate)
    yield recall


def _counters(telemetry: Telemetry, pools: dict[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "agency_data_slow_queries",
        "Statements slower than monitoring.slow_query_ms.",
        value=telemetry.slow_queries,
    )
    denials = CounterMetricFamily(
        "agency_data_denials",
        "Refused logins (authentication) and refused rows or tables (permission).",
        labels=["kind"],
    )
    for kind, count in sorted(denial_counts(telemetry, pools).items()):
        denials.add_metric([kind], count)
    yield denials
    yield CounterMetricFamily(
        "agency_data_outbox_refused",
        "Outbox messages Redis refused (a key of another type, say), set aside with their "
        "error by this process's relay.",
        value=telemetry.outbox_refused,
    )


def _sampled(sample: Sample) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "agency_data_backend_up", "1 when the backend answered its last probe.", labels=["backend"]
    )
    for backend, is_up in sorted(sample.backends.items()):
        up.add_metric([backend], 1 if is_up else 0)
    yield up
    tasks = GaugeMetricFamily(
        "agency_data_tasks", "Tasks by status and type, all tenants.", labels=["status", "type"]
    )
    for (status, type_), count in sorted(sample.tasks.items()):
        tasks.add_metric([status, type_], count)
    yield tasks
    oldest = GaugeMetricFamily(
        "agency_data_tasks_oldest_pending_age_seconds",
        "Age of the oldest task that is due and still pending, by type.",
        labels=["type"],
    )
    for type_, age in sorted(sample.oldest_pending.items()):
        oldest.add_metric([type_], age)
    yield oldest
    index_bytes = GaugeMetricFamily(
        "agency_data_vector_index_bytes",
        "Size on disk of each collection's vector index.",
        labels=["collection"],
    )
    per_vector = GaugeMetricFamily(
        "agency_data_vector_index_bytes_per_vector",
        "Index bytes over the collection's (estimated) rows.",
        labels=["collection"],
    )
    valid = GaugeMetricFamily(
        "agency_data_vector_index_valid",
        "0 when a collection's vector index is invalid (a failed concurrent build).",
        labels=["collection"],
    )
    dead = GaugeMetricFamily(
        "agency_data_vector_dead_rows_ratio",
        "Dead rows over all rows of each collection's table (bloat; VACUUM clears it).",
        labels=["collection"],
    )
    for name, index in sorted(sample.indexes.items()):
        if index.present:
            index_bytes.add_metric([name], index.bytes)
            if index.rows > 0:
                per_vector.add_metric([name], index.bytes / index.rows)
            valid.add_metric([name], 1 if index.valid else 0)
        if index.dead_ratio is not None:
            dead.add_metric([name], index.dead_ratio)
    yield from (index_bytes, per_vector, valid, dead)
    free = GaugeMetricFamily(
        "agency_data_disk_free_bytes",
        "Free space on the volume of the embedded servers' data directory.",
        labels=["volume"],
    )
    total = GaugeMetricFamily(
        "agency_data_disk_total_bytes",
        "Size of the volume of the embedded servers' data directory.",
        labels=["volume"],
    )
    for volume, (free_bytes, total_bytes) in sorted(sample.disk.items()):
        free.add_metric([volume], free_bytes)
        total.add_metric([volume], total_bytes)
    yield from (free, total)
    lag = GaugeMetricFamily(
        "agency_data_replication_lag_seconds",
        "How far each streaming replica is behind (replay lag), or this server when it is one.",
        labels=["replica"],
    )
    lag_bytes = GaugeMetricFamily(
        "agency_data_replication_lag_bytes",
        "WAL bytes each streaming replica has still to replay.",
        labels=["replica"],
    )
    for replica, (seconds, behind) in sorted(sample.replicas.items()):
        if seconds is not None:
            lag.add_metric([replica], seconds)
        if behind is not None:
            lag_bytes.add_metric([replica], behind)
    if sample.standby_lag is not None:
        lag.add_metric(["self"], sample.standby_lag)
    yield from (lag, lag_bytes)
    if sample.server_connections is not None:
        used, most = sample.server_connections
        yield GaugeMetricFamily(
            "agency_data_server_connections",
            "Client connections to PostgreSQL, from every process.",
            value=used,
        )
        yield GaugeMetricFamily(
            "agency_data_server_max_connections",
            "The server's max_connections.",
            value=most,
        )
    if sample.feeds is not None:
        yield from _feeds(sample.feeds)
    yield GaugeMetricFamily(
        "agency_data_sample_timestamp_seconds",
        "When the sampled gauges (backends, tasks, indexes) were last read.",
        value=sample.taken_at,
    )


def _feeds(feeds: FeedSample) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "agency_data_outbox_unsent",
        "Committed outbox messages not yet relayed to Redis, all tenants.",
        value=feeds.unsent,
    )
    yield GaugeMetricFamily(
        "agency_data_outbox_oldest_unsent_seconds",
        "Seconds since the oldest unsent outbox message committed (0 when none waits).",
        value=feeds.oldest_unsent or 0.0,
    )
    yield GaugeMetricFamily(
        "agency_data_changes_retained",
        "Changes the change feed keeps, all tenants.",
        value=feeds.retained,
    )
    yield GaugeMetricFamily(
        "agency_data_changes_max_rows",
        "The most changes the feed keeps (changes.max_rows); past it the oldest are pruned.",
        value=feeds.max_rows,
    )
    yield GaugeMetricFamily(
        "agency_data_change_consumers_lost",
        "Named change-feed consumers marked lost (changes they had not read were pruned), "
        "until dropped.",
        value=feeds.lost,
    )
