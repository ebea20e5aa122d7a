"""The gauges that need a query: backends up, tasks by status and type, index sizes, disk space.

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

from agency_data.errors import AgencyDataError
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors

__all__ = ["IndexSample", "Sample", "Sampler"]

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
    # The parts read in full ("backends", "tasks", "indexes", "replication", "disk"); a part
    # missing here could not be read, and the alerts judged on it keep their state.
    read: set[str] = field(default_factory=set)


class Sampler:
    """Takes samples on a connection of its own; never raises for a backend that is down."""

    def __init__(
        self,
        *,
        admin: Database,
        redis_up: Callable[[], Awaitable[bool]],
        volumes: dict[str, Path],
    ) -> None:
        self._admin = admin
        self._redis_up = redis_up
        self._volumes = volumes
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

    async def _fetch(self, conn: AsyncConnection[Any], query: LiteralString) -> list[Any]:
        with translate_errors("sampling"):
            return await (await conn.execute(query)).fetchall()

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
