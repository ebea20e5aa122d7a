"""The gauges that need a query: backends up, tasks by status and type, index sizes, disk space,
the outbox's backlog and the change feed's fill.

A :class:`Sampler` takes a :class:`Sample` every ``monitoring.interval`` seconds in the
background (and on demand when a scrape finds the last one stale). It reads on a connection of
its own, as the owner role, so that a pool exhausted by the application neither delays a sample
nor reads as PostgreSQL being down. Task counts span every tenant, so the owner must bypass
row-level security to see them (the embedded server's does); without that they are left out,
with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from agency_data.errors import AgencyDataError, QueryError
from agency_data.outbox.changes import RETAINED_SQL
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors

__all__ = ["FeedSample", "IndexSample", "Sample", "Sampler"]

_log = logging.getLogger("agency_data.observability")

# Task types are the caller's strings: past this many, the smallest are summed as "_other" so a
# runaway set of types cannot blow up the metrics' cardinality.
MAX_TASK_TYPES = 100
OTHER_TYPE = "_other"
_QUERY_TIMEOUT = 5.0
_SAMPLE_TIMEOUT = 20.0
_STATEMENT_TIMEOUT: LiteralString = "SET statement_timeout = 5000"

_TASKS_SQL = """
SELECT status, type, count(*)::bigint AS n,
       extract(epoch FROM clock_timestamp() - min(run_at)
               FILTER (WHERE status = 'pending' AND run_at <= clock_timestamp()))::float8 AS oldest
FROM tasks GROUP BY status, type
"""

_INDEXES_SQL = """
SELECT c.name, greatest(t.reltuples, 0)::bigint AS rows,
       i.indexrelid IS NOT NULL AS has_index, coalesce(i.indisvalid, true) AS valid,
       coalesce(pg_relation_size(i.indexrelid), 0)::bigint AS bytes,
       s.n_live_tup AS live, s.n_dead_tup AS dead
FROM embedding_collections c
JOIN pg_class t ON t.oid = to_regclass(quote_ident(c.table_name))
LEFT JOIN pg_index i ON i.indexrelid = to_regclass(quote_ident(c.table_name || '_ann'))
LEFT JOIN pg_stat_user_tables s ON s.relid = t.oid
"""

_CONNECTIONS_SQL = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend')::int AS used,
       current_setting('max_connections')::int AS max
FROM pg_stat_activity
"""

_STANDBY_SQL = """
SELECT pg_is_in_recovery() AS standby,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 AS lag
"""

# replay_lag is NULL once a replica has caught up and nothing is being written: 0 behind.
_REPLICAS_SQL = """
SELECT coalesce(nullif(application_name, ''), client_addr::text, pid::text) AS name,
       extract(epoch FROM replay_lag)::float8 AS lag_seconds,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes
FROM pg_stat_replication
"""

# Unsent outbox messages and how long the oldest has waited since its commit (the relay is
# woken by each commit, so a wait of more than a few rounds means no relay is sending). Reads
# the unsent rows' partial index: about 0.1 ms with none waiting, 10-20 ms for a backlog of
# 200k (measured; the feed query below stays under a millisecond at 1M changes).
_OUTBOX_SQL = """
SELECT count(*)::bigint AS unsent,
       extract(epoch FROM clock_timestamp()
               - min(coalesce(c.committed_at, o.created_at)))::float8 AS oldest
FROM outbox o LEFT JOIN commit_order c ON c.xid = o.xid
WHERE o.sent_at IS NULL AND o.failed_at IS NULL
"""

# The changes kept, counted as dl.changes.status() counts them; the named consumers marked
# lost (the first few by name), and the live one furthest behind, which is what holds the feed
# back when anything does.
_FEED_SQL = (
    "SELECT ("
    + RETAINED_SQL
    + """)::bigint AS retained,
       (SELECT count(*) FROM change_consumers WHERE lost_at IS NOT NULL)::bigint AS lost,
       array(SELECT tenant_id || '/' || name FROM change_consumers WHERE lost_at IS NOT NULL
             ORDER BY lost_at, tenant_id, name LIMIT 3) AS lost_names,
       l.who AS laggard,
       -- Changes after its cursor, counted by ids as above: from the first change of the
       -- first commit after it (commits of outbox messages only are stepped over) to the last.
       (SELECT max(id) FROM changes) - (
           SELECT ch.id FROM commit_order c JOIN changes ch ON ch.xid = c.xid
           WHERE c.seq >= l.seq AND (c.seq > l.seq OR ch.id > l.change_id)
           ORDER BY c.seq, ch.id LIMIT 1) + 1 AS behind
FROM (SELECT NULL) AS one
LEFT JOIN LATERAL (
    SELECT tenant_id || '/' || name AS who, seq, change_id FROM change_consumers
    WHERE lost_at IS NULL ORDER BY seq, change_id LIMIT 1) AS l ON true
"""
)
# undefined_table: a database the outbox's migrations (0015, 0016) have not reached yet.
_NOT_MIGRATED = "42P01"

_SEES_ALL_SQL = (
    "SELECT rolsuper OR rolbypassrls AS sees_all FROM pg_roles WHERE rolname = current_user"
)


@dataclass(frozen=True)
class IndexSample:
    """One collection's vector index as last sampled."""

    bytes: int
    rows: int
    valid: bool
    present: bool
    dead_ratio: float | None = None
    """Dead rows over all rows of the table (from the statistics; None before any)."""


@dataclass(frozen=True)
class FeedSample:
    """The outbox's backlog and the change feed's fill, as last sampled (every tenant's)."""

    unsent: int
    """Committed outbox messages not yet sent (nor set aside as refused)."""
    oldest_unsent: float | None
    """Seconds since the oldest of them committed; None when none waits."""
    retained: int
    """Changes the feed keeps (as ``dl.changes.status().retained`` counts them)."""
    max_rows: int
    """``changes.max_rows``: the cap the pruner holds the feed to."""
    lost: int
    """Named consumers marked lost (changes they had not read were pruned), until dropped."""
    lost_names: tuple[str, ...] = ()
    """The first of them, as ``tenant/name``."""
    laggard: str | None = None
    """The live named consumer furthest behind, as ``tenant/name``."""
    laggard_behind: int = 0
    """About how many of the kept changes it has still to read."""

    @property
    def fill(self) -> float:
        """retained / max_rows."""
        return self.retained / self.max_rows if self.max_rows else 0.0


@dataclass
class Sample:
    """The sampled gauges, and when they were read (``time.time()``)."""

    taken_at: float = 0.0
    backends: dict[str, bool] = field(default_factory=dict)
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending: dict[str, float] = field(default_factory=dict)
    indexes: dict[str, IndexSample] = field(default_factory=dict)
    # volume -> (free bytes, total bytes)
    disk: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Streaming replicas of this server: name -> seconds and bytes the replica is behind.
    replicas: dict[str, tuple[float | None, int | None]] = field(default_factory=dict)
    # When this server is itself a replica: seconds since the last replayed transaction.
    standby_lag: float | None = None
    # Client connections to the server (every process's), and its max_connections.
    server_connections: tuple[int, int] | None = None
    # The outbox's backlog and the change feed's fill (None until read).
    feeds: FeedSample | None = None
    # The parts read in full ("backends", "tasks", "indexes", "replication", "connections",
    # "feeds", "disk"); a part missing here could not be read, and the alerts judged on it
    # keep their state.
    read: set[str] = field(default_factory=set)


class Sampler:
    """Takes samples on a connection of its own; never raises for a backend that is down."""

    def __init__(
        self,
        *,
        admin: Database,
        redis_up: Callable[[], Awaitable[bool]],
        volumes: dict[str, Path],
        max_changes: int,
    ) -> None:
        self._admin = admin
        self._redis_up = redis_up
        self._volumes = volumes
        self._max_changes = max_changes
        self._conn: AsyncConnection[Any] | None = None
        self._sees_all: bool | None = None
        self._lock = asyncio.Lock()
        self.latest: Sample | None = None

    async def take(self) -> Sample:
        """A fresh sample (concurrent callers share one); never longer than about 20 s."""
        async with self._lock:
            sample = Sample()
            try:
                # A server that stops answering mid-sample (not just slow statements, which
                # statement_timeout ends) must not hold the lock, and every scrape, for ever.
                async with asyncio.timeout(_SAMPLE_TIMEOUT):
                    await self._read(sample)
            except TimeoutError:
                _log.warning("a metrics sample took over %.0f s; it was cut short", _SAMPLE_TIMEOUT)
                await self.aclose()
            sample.taken_at = time.time()
            self.latest = sample
            return sample

    async def _read(self, sample: Sample) -> None:
        conn = await self._connection()
        sample.backends["postgresql"] = conn is not None
        sample.backends["redis"] = await self._redis_up()
        sample.read.add("backends")
        if conn is not None:
            await self._read_tasks(conn, sample)
            await self._read_indexes(conn, sample)
            await self._read_replication(conn, sample)
            await self._read_connections(conn, sample)
            await self._read_feeds(conn, sample)
        for volume, path in self._volumes.items():
            try:
                usage = await asyncio.to_thread(shutil.disk_usage, path)
            except OSError as exc:
                _log.warning("could not read the free space of %s: %s", volume, exc.strerror)
                break
            sample.disk[volume] = (usage.free, usage.total)
        else:
            sample.read.add("disk")

    async def fresh(self, max_age: float) -> Sample:
        """The latest sample if younger than ``max_age`` seconds, else a new one."""
        latest = self.latest
        if latest is not None and time.time() - latest.taken_at < max_age:
            return latest
        return await self.take()

    async def aclose(self) -> None:
        """Close the sampler's connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> AsyncConnection[Any] | None:
        # The open connection if it answers, else a new one; None when PostgreSQL does not.
        try:
            async with asyncio.timeout(_QUERY_TIMEOUT):
                if self._conn is None or self._conn.closed:
                    self._conn = await self._admin.open_dedicated(
                        row_factory=dict_row, connect_timeout=int(_QUERY_TIMEOUT)
                    )
                    await self._conn.execute(_STATEMENT_TIMEOUT)
                await self._conn.execute("SELECT 1")
                return self._conn
        except (AgencyDataError, OSError, TimeoutError, psycopg.Error) as exc:
            _log.debug("the sampler could not reach PostgreSQL: %s", type(exc).__name__)
            await self.aclose()
            return None

    async def _fetch(
        self, conn: AsyncConnection[Any], query: LiteralString, params: Any = None
    ) -> list[Any]:
        with translate_errors("sampling"):
            return await (await conn.execute(query, params)).fetchall()

    async def _read_tasks(self, conn: AsyncConnection[Any], sample: Sample) -> None:
        try:
            if self._sees_all is None:
                rows = await self._fetch(conn, _SEES_ALL_SQL)
                self._sees_all = bool(rows and rows[0]["sees_all"])
                if not self._sees_all:
                    _log.warning(
                        "the task gauges are off: they count every tenant's tasks, which needs "
                        "an owner role (postgresql.admin_dsn) with BYPASSRLS"
                    )
            if not self._sees_all:
                return
            rows = await self._fetch(conn, _TASKS_SQL)
        except AgencyDataError as exc:
            _log.warning("could not sample the task gauges: %s", exc)
            return
        totals: dict[str, int] = {}
        for row in rows:
            totals[row["type"]] = totals.get(row["type"], 0) + row["n"]
        kept = set(sorted(totals, key=lambda t: (-totals[t], t))[:MAX_TASK_TYPES])
        for row in rows:
            type_ = row["type"] if row["type"] in kept else OTHER_TYPE
            key = (row["status"], type_)
            sample.tasks[key] = sample.tasks.get(key, 0) + row["n"]
            if row["oldest"] is not None:
                age = max(float(row["oldest"]), 0.0)
                sample.oldest_pending[type_] = max(sample.oldest_pending.get(type_, 0.0), age)
        sample.read.add("tasks")

    async def _read_connections(self, conn: AsyncConnection[Any], sample: Sample) -> None:
        try:
            rows = await self._fetch(conn, _CONNECTIONS_SQL)
        except AgencyDataError as exc:
            _log.warning("could not count the server's connections: %s", exc)
            return
        sample.server_connections = (rows[0]["used"], rows[0]["max"])
        sample.read.add("connections")

    async def _read_replication(self, conn: AsyncConnection[Any], sample: Sample) -> None:
        try:
            rows = await self._fetch(conn, _STANDBY_SQL)
            if rows and rows[0]["standby"]:
                lag = rows[0]["lag"]
                sample.standby_lag = max(float(lag), 0.0) if lag is not None else None
                sample.read.add("replication")
                return
            for row in await self._fetch(conn, _REPLICAS_SQL):
                lag = row["lag_seconds"]
                sample.replicas[row["name"]] = (
                    float(lag) if lag is not None else 0.0,
                    row["lag_bytes"],
                )
            sample.read.add("replication")
        except AgencyDataError as exc:
            _log.warning("could not sample replication: %s", exc)

    async def _read_indexes(self, conn: AsyncConnection[Any], sample: Sample) -> None:
        try:
            rows = await self._fetch(conn, _INDEXES_SQL)
        except AgencyDataError as exc:
            _log.warning("could not sample the vector index gauges: %s", exc)
            return
        for row in rows:
            live, dead = row["live"] or 0, row["dead"] or 0
            sample.indexes[row["name"]] = IndexSample(
                bytes=row["bytes"],
                rows=row["rows"],
                valid=row["valid"],
                present=row["has_index"],
                dead_ratio=dead / (live + dead) if live + dead else None,
            )
        sample.read.add("indexes")

    async def _read_feeds(self, conn: AsyncConnection[Any], sample: Sample) -> None:
        # The owner reads every tenant's rows of these tables: their owner policies (0015,
        # 0016) let it, in a session that names no tenant, as this one is.
        try:
            outbox = (await self._fetch(conn, _OUTBOX_SQL))[0]
            feed = (await self._fetch(conn, _FEED_SQL, {"near": self._max_changes // 2}))[0]
        except AgencyDataError as exc:
            if isinstance(exc, QueryError) and exc.sqlstate == _NOT_MIGRATED:
                _log.debug("the outbox's tables are not there yet: %s", exc)
            else:
                _log.warning("could not sample the outbox and change feed gauges: %s", exc)
            return
        oldest = outbox["oldest"]
        sample.feeds = FeedSample(
            unsent=outbox["unsent"],
            oldest_unsent=max(float(oldest), 0.0) if oldest is not None else None,
            retained=feed["retained"],
            max_rows=self._max_changes,
            lost=feed["lost"],
            lost_names=tuple(feed["lost_names"]),
            laggard=feed["laggard"],
            laggard_behind=max(feed["behind"] or 0, 0),
        )
        sample.read.add("feeds")
