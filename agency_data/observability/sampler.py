"""The gauges that need a query: backends up, tasks by status and type, index sizes, disk space.

A :class:`Sampler` takes a :class:`Sample` every ``monitoring.interval`` seconds in the
background (and on demand when a scrape finds the last one stale). Task counts span every
tenant, so they are read as the owner role, which must bypass row-level security to see them
(the embedded server's does); without that they are left out, with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agency_data.errors import AgencyDataError
from agency_data.postgres.database import Database

__all__ = ["IndexSample", "Sample", "Sampler"]

_log = logging.getLogger("agency_data.observability")

# Task types are the caller's strings: past this many, the smallest are summed as "_other" so a
# runaway set of types cannot blow up the metrics' cardinality.
MAX_TASK_TYPES = 100
OTHER_TYPE = "_other"
_QUERY_TIMEOUT = 5.0

_TASKS_SQL = """
SELECT status, type, count(*)::bigint AS n,
       extract(epoch FROM clock_timestamp() - min(run_at)
               FILTER (WHERE status = 'pending' AND run_at <= clock_timestamp()))::float8 AS oldest
FROM tasks GROUP BY status, type
"""

_INDEXES_SQL = """
SELECT c.name, greatest(t.reltuples, 0)::bigint AS rows,
       i.indexrelid IS NOT NULL AS has_index, coalesce(i.indisvalid, true) AS valid,
       coalesce(pg_relation_size(i.indexrelid), 0)::bigint AS bytes
FROM embedding_collections c
JOIN pg_class t ON t.oid = to_regclass(quote_ident(c.table_name))
LEFT JOIN pg_index i ON i.indexrelid = to_regclass(quote_ident(c.table_name || '_ann'))
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


class Sampler:
    """Takes samples with the layer's pools; never raises for a backend that is down."""

    def __init__(
        self,
        *,
        app: Database,
        admin: Database,
        probe: Callable[[], Awaitable[dict[str, bool]]],
        volumes: dict[str, Path],
    ) -> None:
        self._app = app
        self._admin = admin
        self._probe = probe
        self._volumes = volumes
        self._sees_all: bool | None = None
        self._lock = asyncio.Lock()
        self.latest: Sample | None = None

    async def take(self) -> Sample:
        """A fresh sample (concurrent callers share one)."""
        async with self._lock:
            sample = Sample()
            sample.backends = await self._probe()
            if sample.backends.get("postgresql", False):
                await self._read_tasks(sample)
                await self._read_indexes(sample)
            for volume, path in self._volumes.items():
                try:
                    usage = await asyncio.to_thread(shutil.disk_usage, path)
                except OSError:
                    continue
                sample.disk[volume] = (usage.free, usage.total)
            sample.taken_at = time.time()
            self.latest = sample
            return sample

    async def fresh(self, max_age: float) -> Sample:
        """The latest sample if younger than ``max_age`` seconds, else a new one."""
        latest = self.latest
        if latest is not None and time.time() - latest.taken_at < max_age:
            return latest
        return await self.take()

    async def _read_tasks(self, sample: Sample) -> None:
        try:
            if self._sees_all is None:
                self._sees_all = bool(await self._admin.fetch_value(_SEES_ALL_SQL))
                if not self._sees_all:
                    _log.warning(
                        "the task gauges are off: they count every tenant's tasks, which needs "
                        "an owner role (postgresql.admin_dsn) with BYPASSRLS"
                    )
            if not self._sees_all:
                return
            rows = await self._admin.fetch(_TASKS_SQL, timeout=_QUERY_TIMEOUT)
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

    async def _read_indexes(self, sample: Sample) -> None:
        try:
            rows = await self._app.fetch(_INDEXES_SQL, timeout=_QUERY_TIMEOUT)
        except AgencyDataError as exc:
            _log.warning("could not sample the vector index gauges: %s", exc)
            return
        for row in rows:
            sample.indexes[row["name"]] = IndexSample(
                bytes=row["bytes"], rows=row["rows"], valid=row["valid"], present=row["has_index"]
            )
