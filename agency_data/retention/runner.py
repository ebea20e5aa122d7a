"""Retention runs: each policy of ``retention.policies`` applied in bounded batches.

Each batch is one transaction that removes at most ``retention.batch_size`` rows (``FOR UPDATE
SKIP LOCKED``: rows a writer holds are left for the next run, and no writer waits on more than
a batch), and, when the policy archives, writes them to the archive and syncs it before the
transaction commits: a removed row is always archived (a crash between the two may archive a
row twice, never lose one). Archives are gzip-compressed JSON Lines, one file per policy and
run, under ``<archive_dir>/<target>/``, private (0600 files, 0700 folders).

- ``tasks``: finished tasks (by ``status``) whose ``finished_at`` is older than the policy;
- ``agents``: agents not updated for that long (their tasks keep running, unassigned);
- a collection: embeddings stored that long ago (of ``entity_type`` only, if given);
- ``audit``: each chain's oldest records, from its start (the chain still verifies from the
  last one removed, whose hash its head keeps);
- ``cache.<namespace>``: no entry of the namespace may live longer: longer TTLs are cut.

Every run is recorded in the system audit trail with its counts. Runs happen on demand
(``dl.retention.run()``, ``agency-data retention run``) and, with ``retention.interval``, in the
background of every DataLayer.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from psycopg import sql

from agency_data.audit.trail import chains
from agency_data.config import RetentionConfig, RetentionPolicy
from agency_data.files import make_private_dirs
from agency_data.redis.errors import translate_errors as redis_errors

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.redis.client import RedisClient
    from agency_data.vectors.catalog import Catalog

__all__ = ["PolicyResult", "Retention", "RetentionReport"]

_log = logging.getLogger("agency_data.retention")


@dataclass
class PolicyResult:
    """What one policy removed (or, for a cache namespace, cut short)."""

    target: str
    removed: int = 0
    batches: int = 0
    archive: Path | None = None


@dataclass
class RetentionReport:
    """One run: every policy's result, in the order configured."""

    started_at: datetime
    seconds: float = 0.0
    results: list[PolicyResult] = field(default_factory=list)


class Retention:
    """Applies the retention policies as the owner role."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        redis: RedisClient | None,
        config: RetentionConfig,
        archive_dir: Path,
    ) -> None:
        self._db = db
        self._catalog = catalog
        self._redis = redis
        self.config = config
        self.archive_dir = archive_dir
        self._loop: asyncio.Task[None] | None = None
        # Set before the loop is cancelled (see Sealer: a cancellation may come out as an
        # error of the run it interrupted).
        self._stopping = False

    async def run(self) -> RetentionReport:
        """Apply every policy once, now."""
        started = time.perf_counter()
        report = RetentionReport(datetime.now(UTC))
        for policy in self.config.policies:
            report.results.append(await self._apply(policy, report.started_at))
        report.seconds = time.perf_counter() - started
        counts = {r.target: r.removed for r in report.results}
        async with self._db.transaction():
            await self._db.notes.action(self._db, "retention.run", "retention", None, counts)
        _log.info("retention run: %s", counts)
        return report

    async def _apply(self, policy: RetentionPolicy, started: datetime) -> PolicyResult:
        result = PolicyResult(policy.target)
        if policy.target.startswith("cache."):
            result.removed = await self._cap_cache(policy)
            return result
        archive = _Archive(self._archive_path(policy, started)) if policy.archive else None
        try:
            if policy.target == "audit":
                for tenant in await chains(self._db):
                    await self._batches(policy, result, archive, tenant)
            else:
                await self._batches(policy, result, archive, None)
        finally:
            if archive is not None:
                archive.close()
                result.archive = archive.path if archive.rows else None
                if not archive.rows:
                    archive.path.unlink(missing_ok=True)
        return result

    async def _batches(
        self,
        policy: RetentionPolicy,
        result: PolicyResult,
        archive: _Archive | None,
        tenant: str | None,
    ) -> None:
        size = self.config.batch_size
        query, params = await self._statement(policy, tenant)
        while True:
            async with self._db.transaction():
                rows = await self._db.fetch(query, params)
                if archive is not None and rows:
                    await asyncio.to_thread(archive.write, [row["row"] for row in rows])
            result.removed += len(rows)
            result.batches += 1
            if len(rows) < size:
                return

    async def _statement(
        self, policy: RetentionPolicy, tenant: str | None
    ) -> tuple[sql.Composed, list[Any]]:
        size = self.config.batch_size
        cutoff = sql.SQL("clock_timestamp() - make_interval(secs => %s)")
        if policy.target == "audit":
            return (
                sql.SQL("SELECT row FROM agency_data_audit_prune(%s, {}, %s) AS row").format(
                    cutoff
                ),
                [tenant, policy.older_than, size],
            )
        if policy.target == "tasks":
            table, column, drop = sql.Identifier("tasks"), "finished_at", "search"
            where = sql.SQL("status = ANY(%s) AND finished_at < {}").format(cutoff)
            params: list[Any] = [policy.status, policy.older_than]
        elif policy.target == "agents":
            table, column, drop = sql.Identifier("agents"), "updated_at", ""
            where = sql.SQL("updated_at < {}").format(cutoff)
            params = [policy.older_than]
        else:
            spec = await self._catalog.load(policy.target)
            table, column, drop = spec.table_id, "created_at", "content_tsv"
            where = sql.SQL("created_at < {}").format(cutoff)
            params = [policy.older_than]
            if policy.entity_type is not None:
                where = sql.SQL("{} AND entity_type = %s").format(where)
                params.append(policy.entity_type)
        query = sql.SQL(
            "WITH doomed AS (SELECT ctid FROM {t} WHERE {w} ORDER BY {c} LIMIT %s "
            "FOR UPDATE SKIP LOCKED) "
            "DELETE FROM {t} AS gone USING doomed WHERE gone.ctid = doomed.ctid "
            "RETURNING to_jsonb(gone) - %s AS row"
        ).format(t=table, w=where, c=sql.Identifier(column))
        return query, [*params, size, drop]

    async def _cap_cache(self, policy: RetentionPolicy) -> int:
        redis = self._redis
        if redis is None:
            return 0
        namespace = policy.target.removeprefix("cache.")
        millis = int(policy.older_than * 1000)
        capped = 0
        with redis_errors("applying a cache retention policy"):
            async for key in redis.scan_iter(match=f"ad:{{*}}:c:{namespace}:*", count=1000):
                # LT: only an expiry later than the policy's is brought forward.
                if await redis.pexpire(key, millis, lt=True):
                    capped += 1
        return capped

    def _archive_path(self, policy: RetentionPolicy, started: datetime) -> Path:
        folder = self.archive_dir / policy.target
        make_private_dirs(folder)
        return folder / f"{started:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}.jsonl.gz"

    def start(self) -> None:
        """Run every ``retention.interval`` seconds in the background (when it is set)."""
        if self._loop is None and self.config.interval > 0 and self.config.policies:
            self._loop = asyncio.create_task(self._run_forever(), name="agency-data-retention")

    async def _run_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.interval)
            try:
                await self.run()
            except Exception:  # noqa: BLE001 - the next run may succeed; logged
                if self._stopping:
                    return
                _log.exception("a retention run failed")

    async def aclose(self) -> None:
        """Stop the background runs."""
        loop, self._loop = self._loop, None
        if loop is not None:
            self._stopping = True
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)


class _Archive:
    """One archive file: JSON Lines, gzip, synced after each batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._raw: IO[bytes] = os.fdopen(fd, "wb")
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)

    def write(self, rows: list[Any]) -> None:
        for row in rows:
            self._gzip.write(orjson.dumps(row) + b"\n")
        # On disk before the rows' removal commits.
        self._gzip.flush()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self.rows += len(rows)

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()
