"""Index management for a collection: build (concurrently, with progress), drop, reindex, optimize.

Everything here is administration: it runs as the owner role (``db`` is the owner's database,
with no tenant). Builds run on a dedicated connection with no statement timeout (an index over a
million vectors takes minutes), outside any transaction as ``CREATE INDEX CONCURRENTLY``
requires, while a second connection reads ``pg_stat_progress_create_index`` for the progress
callback. On the embedded server an HNSW build raises ``maintenance_work_mem`` for its own
connection so that the graph fits in memory (see :func:`hnsw_build_bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import psycopg
from psycopg import AsyncConnection, sql

from agency_data._tasks import cancel_and_wait
from agency_data.config import PostgresConfig
from agency_data.errors import Conflict, ValidationError
from agency_data.inputs import check_bool, check_callable, check_choice, check_int
from agency_data.models import CollectionInfo, IndexInfo, IndexProgress, OptimizeReport
from agency_data.postgres.database import Database
from agency_data.postgres.errors import to_agency_error
from agency_data.vectors.catalog import Catalog, CollectionSpec
from agency_data.vectors.metrics import metric_spec
from agency_data.vectors.validation import INDEX_LIMITS

__all__ = [
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "IndexOptions",
    "build_memory",
    "create_index",
    "describe",
    "drop_index",
    "hnsw_build_bytes",
    "optimize",
    "reindex",
    "suggested_lists",
]

_log = logging.getLogger("agency_data.vectors")

# The HNSW build defaults, chosen by measurement (README, "How the index defaults were
# chosen"): on 100k clustered 768-d vectors, five builds with pgvector's own ef_construction
# of 64 gave recall@10 0.93-0.98 at the default ef_search of 40, and ef_search 200 barely
# helped: the misses are whole queries whose cluster the graph does not reach. Five builds
# with 128 gave 0.970-0.985 (halfvec 0.985-0.994) for about 1.3-1.9x the build time. m 24
# did no better at ef_search 40 (0.964-1.0) and took about twice as long to build as m 16.
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 128

_DEAD_FRACTION_REBUILD = 0.2
# pgvector's in-memory graph, per element (hnsw.h, HnswElementData and its allocations): the
# element with its ten heap pointers, lock and generation-context chunk headers; each
# neighbour candidate (pointer, distance, flag) is 16 bytes; a varlena header is 8.
_ELEMENT_BYTES = 200
_CANDIDATE_BYTES = 16
_VALUE_HEADER = 8
_BITS_PER_DIMENSION = {"vector": 32, "halfvec": 16, "bit": 1}
# Room for what the estimate leaves out: upper layers, the parallel build's 3 MB of other
# shared state and 1 MB allocation margin, growth while the build runs.
_GRAPH_MARGIN = 1.15
_GRAPH_SLACK = 32 << 20


def suggested_lists(rows: int) -> int:
    """pgvector's advice for IVFFlat: rows / 1000 up to a million rows, sqrt(rows) beyond."""
    return max(1, rows // 1000 if rows <= 1_000_000 else int(math.sqrt(rows)))


def hnsw_build_bytes(rows: int, dimension: int, storage: str, m: int) -> int:
    """About how much memory pgvector needs to build an HNSW graph of ``rows`` in one piece.

    ``storage`` is what the index holds: ``vector``, ``halfvec`` or ``bit`` (binary
    quantization). When ``maintenance_work_mem`` is smaller, pgvector writes the graph built so
    far to disk and inserts the rest there, several times slower (it says so in a NOTICE).
    """
    check_choice(storage, "storage", tuple(_BITS_PER_DIMENSION))
    value = _VALUE_HEADER + -(-dimension * _BITS_PER_DIMENSION[storage] // 8)
    # Layer 0 keeps 2 x m neighbours; an element reaches the upper layers (m each) with
    # probability 1/m, so they add about one more candidate per element on average.
    per_row = _ELEMENT_BYTES + (2 * m + 1) * _CANDIDATE_BYTES + value
    return int(rows * per_row * _GRAPH_MARGIN) + _GRAPH_SLACK


def build_memory(needed: int, current: int, ceiling: int | None) -> int | None:
    """The ``maintenance_work_mem`` (bytes) for a graph of ``needed`` bytes, or None.

    None keeps ``current``: it is already enough, or ``ceiling`` (what the build may take on
    this server; None: unknown, raise nothing) leaves no room above it. Otherwise the setting
    goes up to what the graph needs, and no further than ``ceiling``: a parallel build
    reserves all of ``maintenance_work_mem`` in shared memory at once, needed or not.
    """
    if needed <= current or ceiling is None or ceiling <= current:
        return None
    return min(needed, ceiling)


def _memory_ceiling(config: PostgresConfig) -> int | None:
    # Only the embedded server's machine is known here: a configured server's RAM is not, and a
    # setting raised past it would have the build killed instead of slowed, so its
    # maintenance_work_mem (the administrator's) stands. On the embedded one a build takes at
    # most a quarter of the RAM, and half of the free /dev/shm, where a parallel build keeps
    # its graph (a container's /dev/shm is often 64 MB: too little fails the build).
    if not config.is_embedded:
        return None
    try:
        ceiling = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return None
    shm = Path("/dev/shm")
    if shm.is_dir():
        stats = os.statvfs(shm)
        ceiling = min(ceiling, stats.f_bavail * stats.f_frsize // 2)
    return ceiling


def _int(name: str, value: Any, low: int, high: int) -> int:
    return check_int(value, name, low, high)


def _index_sql(
    spec: CollectionSpec, name: str, kind: str, quantization: str, options: dict[str, int]
) -> sql.Composed:
    metric = metric_spec(spec.metric)
    column: sql.Composable
    opclass: sql.Composable
    if quantization == "binary":
        if spec.metric not in ("cosine", "euclidean", "inner_product"):
            raise ValidationError(
                "binary quantization re-ranks cosine, euclidean or inner product",
                field="quantization",
            )
        column = sql.SQL("(binary_quantize(vector)::bit({}))").format(sql.Literal(spec.dimension))
        opclass = sql.SQL("bit_hamming_ops")
    else:
        column = sql.SQL("vector")
        opclass = sql.Identifier(f"{spec.storage}_{metric.opclass}")
    with_clause = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(key), sql.Literal(value))
        for key, value in options.items()
    )
    return sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} USING {} ({} {}) WITH ({})").format(
        sql.Identifier(name), spec.table_id, sql.SQL(kind), column, opclass, with_clause
    )


class IndexOptions(TypedDict, total=False):
    """How to build an index: ``m`` (16) and ``ef_construction`` (128) for HNSW, ``lists``
    (IVFFlat), ``quantization``, ``replace`` and a ``progress`` callback."""

    m: int
    ef_construction: int
    lists: int | None
    quantization: str
    replace: bool
    progress: Callable[[IndexProgress], Any] | None


async def create_index(
    db: Database,
    catalog: Catalog,
    spec: CollectionSpec,
    *,
    kind: str = "hnsw",
    m: int = DEFAULT_M,
    ef_construction: int | None = None,
    lists: int | None = None,
    quantization: str = "none",
    replace: bool = False,
    progress: Callable[[IndexProgress], Any] | None = None,
) -> CollectionSpec:
    """Build the index described, swap it in for any old one, and record it in the catalog.

    ``ef_construction`` defaults to :data:`DEFAULT_EF_CONSTRUCTION`, or 2 x ``m`` if that is
    more (pgvector's least).
    """
    check_choice(kind, "kind", ("hnsw", "ivfflat"))
    check_choice(quantization, "quantization", ("none", "binary"))
    # Every option is checked, also those the other kind of index ignores.
    m = _int("m", m, 2, 100)
    if ef_construction is None:
        ef_construction = max(DEFAULT_EF_CONSTRUCTION, 2 * m)
    hnsw = {"m": m, "ef_construction": _int("ef_construction", ef_construction, 4, 1000)}
    if lists is not None:
        _int("lists", lists, 1, 32768)
    check_bool(replace, "replace")
    if progress is not None:
        check_callable(progress, "progress")
    limit = INDEX_LIMITS["bit" if quantization == "binary" else spec.storage]
    if spec.dimension > limit:
        raise ValidationError(
            f"{kind} indexes {spec.storage} up to {limit} dimensions; this collection has "
            f"{spec.dimension} (use halfvec storage or binary quantization)",
            field="dimension",
        )
    if kind == "ivfflat" and quantization == "none" and not metric_spec(spec.metric).ivfflat:
        raise ValidationError(
            "IVFFlat has no manhattan (L1) operator class; use HNSW", field="kind"
        )
    if kind == "hnsw":
        options = hnsw
        if options["ef_construction"] < 2 * options["m"]:
            raise ValidationError("ef_construction must be at least 2 x m", field="ef_construction")
    else:
        if lists is None:
            lists = suggested_lists(await _row_estimate(db, spec))
        options = {"lists": _int("lists", lists, 1, 32768)}
    if spec.index_kind is not None and not replace and await _index_exists(db, spec.index_name):
        raise Conflict(
            f"collection {spec.name!r} already has a {spec.index_kind} index; pass replace=True",
            field="index",
        )
    building = f"{spec.index_name}_new"
    async with _build_connection(db) as conn:
        if kind == "hnsw":
            await _fit_graph(db, conn, spec, quantization, options["m"])
        await conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(building))
        )
        watcher = (
            asyncio.create_task(_watch(db, conn.info.backend_pid, progress)) if progress else None
        )
        try:
            await conn.execute(_index_sql(spec, building, kind, quantization, options))
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(building))
                )
            raise to_agency_error(exc, f"building the {kind} index of {spec.name!r}") from exc
        finally:
            await cancel_and_wait(watcher)
    async with db.transaction():
        await db.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(spec.index_name)))
        await db.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(spec.index_name)
            )
        )
        updated = await catalog.set_index(spec, kind, quantization, options)
    await db.execute(sql.SQL("ANALYZE {}").format(spec.table_id))
    return updated


async def drop_index(db: Database, catalog: Catalog, spec: CollectionSpec) -> None:
    """Drop the collection's ANN index, if it has one."""
    async with _build_connection(db) as conn:
        await conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(spec.index_name))
        )
    await catalog.set_index(spec, None, "none", {})


async def reindex(db: Database, spec: CollectionSpec) -> None:
    """Rebuild the ANN index concurrently."""
    if not await _index_exists(db, spec.index_name):
        raise ValidationError(f"collection {spec.name!r} has no index to rebuild", field="index")
    async with _build_connection(db) as conn:
        await conn.execute(
            sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(spec.index_name))
        )
    await db.notes.action(db, "index.rebuild", "collection", spec.name)


async def optimize(
    db: Database,
    catalog: Catalog,
    spec: CollectionSpec,
    *,
    recall: float | None = None,
    recall_bound: float = 0.0,
) -> OptimizeReport:
    """ANALYZE, vacuum and rebuild when dead rows pile up, and fit IVFFlat lists to the rows.

    ``recall``: the recall probe's latest estimate; under ``recall_bound`` an IVFFlat index
    is rebuilt (its lists are clustered again on the rows as they are now).
    """
    actions: list[str] = []
    rebuilt = False
    async with _build_connection(db) as conn:
        await conn.execute(sql.SQL("ANALYZE {}").format(spec.table_id))
        actions.append("analyzed")
        cursor = await conn.execute(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = %s",
            [spec.table],
        )
        live, dead = await cursor.fetchone() or (0, 0)
        dead_fraction = dead / (live + dead) if live + dead else 0.0
        has_index = await _index_exists(db, spec.index_name)
        if dead_fraction > _DEAD_FRACTION_REBUILD:
            await conn.execute(sql.SQL("VACUUM {}").format(spec.table_id))
            actions.append(f"vacuumed ({dead_fraction:.0%} dead rows)")
            if has_index:
                await conn.execute(
                    sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(spec.index_name))
                )
                actions.append("rebuilt the index")
                rebuilt = True
    rows = int(live)
    lists = suggested_lists(rows)
    current = spec.index_options.get("lists")
    if (
        has_index
        and spec.index_kind == "ivfflat"
        and current
        and not lists / 2 <= current <= lists * 2
    ):
        await create_index(
            db,
            catalog,
            spec,
            kind="ivfflat",
            lists=lists,
            quantization=spec.index_quantization,
            replace=True,
            progress=None,
        )
        actions.append(f"rebuilt IVFFlat with {lists} lists (was {current})")
        rebuilt = True
    if (
        has_index
        and not rebuilt
        and spec.index_kind == "ivfflat"
        and recall is not None
        and recall < recall_bound
    ):
        # Rows inserted since the build sit in lists whose centroids no longer fit them.
        await reindex(db, spec)
        actions.append(
            f"rebuilt the IVFFlat index: its estimated recall {recall:.2f} was under "
            f"{recall_bound:.2f}"
        )
    elif recall is not None and recall < recall_bound and spec.index_kind == "hnsw":
        actions.append(
            f"estimated recall {recall:.2f} is under {recall_bound:.2f}: raise ef_search "
            "(per search, or hnsw.ef_search), or rebuild with a larger m / ef_construction"
        )
    return OptimizeReport(
        rows=rows, dead_fraction=dead_fraction, actions=actions, suggested_lists=lists
    )


async def describe(db: Database, spec: CollectionSpec, tenant: str) -> CollectionInfo:
    """Rows of ``tenant``, table size, bytes per stored vector, and the index."""
    table = spec.table_id
    row = await db.fetch_one(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {t} WHERE tenant_id = %s) AS rows, "
            "pg_table_size(%s::regclass) AS table_bytes"
        ).format(t=table),
        [tenant, spec.table],
    )
    assert row is not None
    index = None
    found = await db.fetch_one(
        "SELECT i.indisvalid AS valid, pg_relation_size(i.indexrelid) AS size FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        [spec.index_name],
    )
    if found is not None and spec.index_kind is not None:
        index = IndexInfo(
            name=spec.index_name,
            kind=spec.index_kind,
            quantization=spec.index_quantization,
            options=spec.index_options,
            valid=found["valid"],
            size_bytes=found["size"],
        )
    return CollectionInfo(
        name=spec.name,
        dimension=spec.dimension,
        metric=spec.metric,
        storage=spec.storage,
        rows=row["rows"],
        table_bytes=row["table_bytes"],
        bytes_per_vector=8 + spec.dimension * (4 if spec.storage == "vector" else 2),
        index=index,
    )


async def _row_estimate(db: Database, spec: CollectionSpec) -> int:
    # Every tenant's rows (row-level security hides them all from a count without a tenant):
    # the planner's estimate, fresh after ANALYZE, is all IVFFlat sizing and the HNSW graph's
    # memory estimate need.
    await db.execute(sql.SQL("ANALYZE {}").format(spec.table_id))
    rows = await db.fetch_value(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
        [spec.table],
    )
    return int(rows or 0)


async def _index_exists(db: Database, name: str) -> bool:
    return await db.fetch_value("SELECT to_regclass(%s) IS NOT NULL", [name]) is True


async def _fit_graph(
    db: Database, conn: AsyncConnection[Any], spec: CollectionSpec, quantization: str, m: int
) -> None:
    """Raise the build connection's maintenance_work_mem so the graph fits, where it may."""
    storage = "bit" if quantization == "binary" else spec.storage
    needed = hnsw_build_bytes(await _row_estimate(db, spec), spec.dimension, storage, m)
    cursor = await conn.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))")
    row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if needed <= current:
        return
    raised = build_memory(needed, current, _memory_ceiling(db.config))
    if raised is not None:
        # The connection is the build's own and closes after it: the setting goes with it.
        await conn.execute(
            sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{raised // 1024}kB"))
        )
        _log.info(
            "building the HNSW index of %r with maintenance_work_mem %d MiB (the graph's size)",
            spec.name,
            raised >> 20,
        )
    if (raised or current) < needed:
        _log.warning(
            "the HNSW graph of %r needs about %d MiB, more than maintenance_work_mem (%d MiB): "
            "pgvector will finish the build on disk, several times slower; raise "
            "maintenance_work_mem for the owner role (ALTER ROLE ... SET maintenance_work_mem) "
            "to build it faster",
            spec.name,
            needed >> 20,
            (raised or current) >> 20,
        )


def _log_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    # pgvector says when a build outgrows maintenance_work_mem, and psycopg drops notices
    # nobody listens to; the others (DROP ... IF EXISTS skipping) are of no interest.
    message = diagnostic.message_primary or ""
    if "maintenance_work_mem" in message:
        _log.warning("index build: %s (%s)", message, diagnostic.message_detail or "")


@asynccontextmanager
async def _build_connection(db: Database) -> AsyncIterator[AsyncConnection[Any]]:
    async with db.dedicated() as conn:
        conn.add_notice_handler(_log_notice)
        await conn.execute("SET statement_timeout = 0")
        yield conn


async def _watch(db: Database, pid: int, progress: Callable[[IndexProgress], Any]) -> None:
    while True:
        row = await db.fetch_one(
            "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
            "FROM pg_stat_progress_create_index WHERE pid = %s",
            [pid],
        )
        if row is not None:
            result = progress(IndexProgress(**row))
            if inspect.isawaitable(result):
                await result
        await asyncio.sleep(0.25)
