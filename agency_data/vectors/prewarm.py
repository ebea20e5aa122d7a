"""Prewarming collections: vector indexes first, then tables, read into PostgreSQL's memory.

After a restart the shared buffers are empty, and an HNSW search hops between pages all over
its index, reading them one at a time: the first searches are many times slower than later
ones. ``pg_prewarm`` reads whole relations in block order instead, in a fraction of the time.

``pg_prewarm`` is not a trusted extension, so only a superuser may create it. Where a database
has it (a superuser ran ``CREATE EXTENSION pg_prewarm``) and the owner role may execute it, the
owner role uses it. The embedded server's DataLayer, which may log in as the superuser, instead
creates it inside one transaction that it rolls back: no function, privilege or dump entry is
left behind, so a backup restores as the owner role just as before. Elsewhere prewarming is
skipped, with a log line, and the report says why.

The embedded server also loads ``pg_prewarm`` at start (``shared_preload_libraries``) for its
``autoprewarm`` worker, which saves the list of cached blocks at shutdown and reads them back in
the background after the next start; :func:`prewarm` is the explicit, awaitable form.

Warm data is half of it: a new connection's first searches are slow however warm the data
(:func:`warm_connections`). A DataLayer's start does both in the background
(``vector.prewarm_on_start``), and never fails or waits because of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import AsyncConnection, sql

from agency_data.errors import AgencyDataError, NotFound
from agency_data.models import DEFAULT_TENANT
from agency_data.observability import Telemetry
from agency_data.postgres.database import Database
from agency_data.postgres.errors import to_agency_error, translate_errors
from agency_data.vectors.catalog import Catalog, CollectionSpec
from agency_data.vectors.collection import Collection

__all__ = [
    "PrewarmReport",
    "PrewarmStep",
    "autoprewarm_done",
    "plan",
    "prewarm",
    "warm_connections",
    "warm_start",
]

_UNDEFINED_TABLE = "42P01"
_log = logging.getLogger("agency_data.vectors")

# Prewarmed relations may fill this share of shared buffers; the rest stays for the hot rows of
# other tables (tasks, agents, the catalogs), which autoprewarm brings back on its own.
BUFFER_SHARE = 0.75
# Blocks per pg_prewarm call (128 MiB): each statement stays short, and a cancelled prewarm
# stops after the current piece.
CHUNK_BLOCKS = 16_384
# Searches per pooled connection at start: psycopg prepares a statement on its sixth run
# (prepare_threshold 5), so the application's first search runs prepared.
WARM_SEARCHES = 6

Mode = Literal["buffer", "prefetch"]


@dataclass(frozen=True)
class PrewarmStep:
    """One pg_prewarm call: blocks ``first``..``last`` of ``relation``, in ``mode``."""

    relation: str
    mode: Mode
    first: int
    last: int

    @property
    def blocks(self) -> int:
        """How many blocks the step covers."""
        return self.last - self.first + 1


@dataclass(frozen=True)
class PrewarmReport:
    """What a prewarm did: blocks read into shared buffers, and blocks handed to the OS.

    ``skipped`` says why nothing was done (pg_prewarm unavailable); it is None otherwise.
    """

    buffered: dict[str, int] = field(default_factory=dict)
    prefetched: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def buffered_bytes(self) -> int:
        """Bytes read into shared buffers (8 KiB blocks)."""
        return sum(self.buffered.values()) * 8192


def plan(
    indexes: Sequence[tuple[str, int]],
    tables: Sequence[tuple[str, int]],
    budget: int,
    chunk: int = CHUNK_BLOCKS,
) -> list[PrewarmStep]:
    """The pg_prewarm calls for relations given as ``(name, blocks)``, within ``budget`` blocks.

    Indexes come first (a search walks its index; it reads only a few table rows), then
    tables. Each relation goes into shared buffers while the budget lasts; the blocks past it
    are handed to the OS to read ahead (``prefetch``), so they are at least in its page cache
    without pushing other pages out of shared buffers.
    """
    steps: list[PrewarmStep] = []
    remaining = max(0, budget)
    for name, blocks in [*indexes, *tables]:
        if blocks <= 0:
            continue
        buffered = min(blocks, remaining)
        remaining -= buffered
        for start in range(0, buffered, chunk):
            steps.append(PrewarmStep(name, "buffer", start, min(buffered, start + chunk) - 1))
        if buffered < blocks:
            steps.append(PrewarmStep(name, "prefetch", buffered, blocks - 1))
    return steps


_SIZES = """
SELECT r.name,
       coalesce(pg_relation_size(to_regclass(r.name)) / current_setting('block_size')::bigint, 0)
           AS blocks,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers') AS buffers
FROM unnest(%s::text[]) AS r(name)
"""

# pg_prewarm's schema, if the database has it and the current role may call it.
_INSTALLED = """
SELECT n.nspname AS schema, has_function_privilege(p.oid, 'EXECUTE') AS usable
FROM pg_extension AS e
JOIN pg_namespace AS n ON n.oid = e.extnamespace
JOIN pg_proc AS p ON p.pronamespace = e.extnamespace AND p.proname = 'pg_prewarm'
WHERE e.extname = 'pg_prewarm'
"""

_AVAILABLE = (
    "SELECT current_user AS role, EXISTS "
    "(SELECT FROM pg_available_extensions WHERE name = 'pg_prewarm') AS available"
)


def _statement(schema: str) -> sql.Composed:
    # The relation is looked up again, and its size with it: one dropped or truncated since it
    # was measured is skipped or read up to its end, never an error.
    return sql.SQL(
        "SELECT {}(r, %s, 'main', %s, LEAST(%s, n - 1)) "
        "FROM to_regclass(%s) AS r, LATERAL "
        "(SELECT pg_relation_size(r) / current_setting('block_size')::bigint AS n) AS size "
        "WHERE %s < n"
    ).format(sql.Identifier(schema, "pg_prewarm"))


def _params(step: PrewarmStep) -> list[Any]:
    return [step.mode, step.first, step.last, step.relation, step.first]


async def prewarm(
    admin: Database, specs: Sequence[CollectionSpec], *, superuser: str | None = None
) -> PrewarmReport:
    """Prewarm ``specs``' vector indexes and tables (see the module's docstring).

    ``admin`` is the owner role's database; ``superuser``, a DSN that may create pg_prewarm
    for one transaction when the database lacks it (the embedded server's).
    """
    started = time.perf_counter()
    indexes = [spec.index_name for spec in specs if spec.index_kind is not None]
    tables = [spec.table for spec in specs]
    if not tables:
        return PrewarmReport(seconds=time.perf_counter() - started)
    rows = await admin.fetch(_SIZES, [[*indexes, *tables]])
    sizes = {row["name"]: int(row["blocks"]) for row in rows}
    budget = int(rows[0]["buffers"] * BUFFER_SHARE)
    steps = plan(
        [(name, sizes[name]) for name in indexes],
        [(name, sizes[name]) for name in tables],
        budget,
    )
    installed = await admin.fetch_one(_INSTALLED)
    if installed is not None and installed["usable"]:
        statement = _statement(installed["schema"])

        async def run_as_owner(step: PrewarmStep) -> int:
            return int(await admin.fetch_value(statement, _params(step)) or 0)

        report = await _run(steps, run_as_owner)
    elif superuser is not None:
        report = await _run_transient(steps, superuser)
    else:
        reason = (
            "pg_prewarm is not installed in this database"
            if installed is None
            else "the owner role may not execute pg_prewarm"
        )
        found = await admin.fetch_one(_AVAILABLE)
        assert found is not None  # one row, always
        if installed is None and not found["available"]:
            reason += " (nor available on the server: it ships with PostgreSQL's contrib)"
        reason += (
            "; a superuser can run CREATE EXTENSION pg_prewarm and GRANT EXECUTE ON FUNCTION "
            f"pg_prewarm(regclass, text, text, bigint, bigint) TO {found['role']}"
        )
        _log.info("collections not prewarmed: %s", reason)
        report = PrewarmReport(skipped=reason)
    return PrewarmReport(
        buffered=report.buffered,
        prefetched=report.prefetched,
        skipped=report.skipped,
        seconds=time.perf_counter() - started,
    )


async def _run_transient(steps: Sequence[PrewarmStep], superuser: str) -> PrewarmReport:
    try:
        conn = await AsyncConnection.connect(superuser)
    except psycopg.Error as exc:
        raise to_agency_error(exc, "connecting as the superuser to prewarm") from exc
    try:
        with translate_errors("prewarming collections"):
            # Rolled back whatever happens: the extension exists for this transaction only.
            async with conn.transaction(force_rollback=True):
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
                cursor = await conn.execute(
                    "SELECT n.nspname FROM pg_extension AS e "
                    "JOIN pg_namespace AS n ON n.oid = e.extnamespace "
                    "WHERE e.extname = 'pg_prewarm'"
                )
                found = await cursor.fetchone()
                assert found is not None  # created just above, in this transaction
                statement = _statement(str(found[0]))

                async def run_as_superuser(step: PrewarmStep) -> int:
                    # A savepoint each: a refused prefetch must not abort the transaction.
                    with translate_errors("prewarming collections"):
                        async with conn.transaction():
                            cursor = await conn.execute(statement, _params(step))
                            row = await cursor.fetchone()
                    return int(row[0]) if row is not None else 0

                return await _run(steps, run_as_superuser)
    finally:
        await conn.close()


async def _run(
    steps: Sequence[PrewarmStep], call: Callable[[PrewarmStep], Awaitable[int]]
) -> PrewarmReport:
    buffered: dict[str, int] = {}
    prefetched: dict[str, int] = {}
    prefetch_works = True
    for step in steps:
        if step.mode == "prefetch":
            if not prefetch_works:
                continue
            try:
                done = await call(step)
            except AgencyDataError as exc:
                # Builds without posix_fadvise (macOS) refuse prefetch (0A000): the blocks
                # past the budget are then left to be read on demand.
                if getattr(exc, "sqlstate", None) != "0A000":
                    raise
                prefetch_works = False
                continue
            prefetched[step.relation] = prefetched.get(step.relation, 0) + done
        else:
            done = await call(step)
            buffered[step.relation] = buffered.get(step.relation, 0) + done
    return PrewarmReport(buffered=buffered, prefetched=prefetched)


async def warm_connections(
    db: Database, catalog: Catalog, specs: Sequence[CollectionSpec], count: int
) -> int:
    """Run each indexed collection's search a few times on up to ``count`` pooled connections.

    A new connection's first searches are several times slower than a warm one's however warm
    the data: its server process fills its catalog caches, maps the shared buffers it touches
    into its address space page by page, and plans each statement until psycopg prepares it
    (on its sixth run). Searching ``WARM_SEARCHES`` times on each connection at start takes
    that off the application's first searches. They run as the default tenant, whose rows they
    may read and drop, with iterative index scans off so that a tenant with no rows there
    costs one ordinary index walk. Returns how many distinct connections were warmed (fewer
    than ``count`` when the application took some of them meanwhile).
    """
    # Binary-quantized collections first: their searches set ef_search in a savepoint rolled
    # back inside this transaction, and psycopg forgets its prepared statements at a ROLLBACK.
    indexed = sorted(
        (spec for spec in specs if spec.index_kind is not None),
        key=lambda spec: spec.index_quantization != "binary",
    )
    if not indexed or count <= 0:
        return 0
    scoped = db.for_tenant(DEFAULT_TENANT)
    rng = np.random.default_rng(0)
    queries = {
        spec.name: rng.normal(size=(WARM_SEARCHES, spec.dimension)).astype(np.float32)
        for spec in indexed
    }

    async def warm_one() -> int:
        # On the primary's connections, which the application's calls use (not a replica's).
        async with scoped.transaction(readonly=True, on_primary=True):
            for setting in ("hnsw.iterative_scan", "ivfflat.iterative_scan"):
                await scoped.execute("SELECT set_config(%s, 'off', true)", [setting])
            for spec in indexed:
                # The application's own search, so that psycopg prepares its very statement.
                collection = Collection(
                    scoped, catalog, DEFAULT_TENANT, spec.name, telemetry=Telemetry.off()
                )
                for query in queries[spec.name]:
                    await collection.find_similar(query, limit=10)
            # Asked of the server: tx.conn would have the connection reset when given back.
            return int(await scoped.fetch_value("SELECT pg_backend_pid()"))

    # One connection at a time, so that the application's own calls always find the others
    # free; the pool lends its idle connections in turn (first returned, last lent again).
    return len({await warm_one() for _ in range(count)})


# While autoprewarm reads saved blocks back, a worker of this type is connected to the
# database; only a superuser (or pg_read_all_stats) sees other sessions' backend_type.
_AUTOPREWARM_LOADING = (
    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'autoprewarm worker')"
)


async def autoprewarm_done(superuser: str, within: float = 60.0) -> bool:
    """Wait until the server's autoprewarm worker has read its saved blocks back.

    True once it has (or none runs), False if it still ran after ``within`` seconds.
    """
    deadline = time.monotonic() + within
    try:
        async with await AsyncConnection.connect(superuser, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = await (await conn.execute(_AUTOPREWARM_LOADING)).fetchone()
                if row is None or not row[0]:
                    return True
                await asyncio.sleep(0.1)
    except psycopg.Error as exc:
        raise to_agency_error(exc, "waiting for autoprewarm") from exc
    return False


async def warm_start(
    prewarm_all: Callable[[], Awaitable[PrewarmReport]],
    app: Database,
    catalog: Catalog,
    connections: int,
    *,
    superuser: str | None = None,
) -> None:
    """What a DataLayer does at start, in the background: log the outcome, never raise it.

    The collections' blocks first (``prewarm_all``: one sequential read, where searches would
    read page by page); then, on the embedded server (``superuser``), once its autoprewarm
    worker has read back the blocks it saved, which searches would compete with; then the
    pooled connections, whose searches find the data warm.
    """
    try:
        specs = []
        for name in await catalog.names():
            with suppress(NotFound):  # dropped meanwhile
                specs.append(await catalog.load(name))
        if not specs:
            return
        report = await prewarm_all()
        if superuser is not None:
            await autoprewarm_done(superuser)
        await warm_connections(app, catalog, specs, connections)
    except AgencyDataError as exc:
        if getattr(exc, "sqlstate", None) == _UNDEFINED_TABLE:
            # Not migrated yet (a command that starts without migrating): nothing to warm.
            _log.debug("prewarming skipped: the schema is not migrated")
            return
        # A start must not fail because the cache could not be warmed: the searches still run.
        _log.warning("prewarming collections at start failed: %s", exc)
        return
    except Exception:  # noqa: BLE001 - a bug here must not kill the start either; logged whole
        _log.exception("prewarming collections at start failed")
        return
    if report.buffered or report.prefetched:
        _log.info(
            "prewarmed %d relations: %.0f MiB into shared buffers in %.2f s",
            len(report.buffered) + len(report.prefetched),
            report.buffered_bytes / (1 << 20),
            report.seconds,
        )
