"""SQL for the embedding store, built by pure functions: ``(query, params)`` pairs."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, LiteralString

from psycopg import sql

from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.filter_ast import FilterNode
from agency_data.vectors.filter_sql import compile_filter
from agency_data.vectors.metrics import metric_spec

__all__ = [
    "ROW_COLUMNS",
    "copy_sql",
    "hybrid_text_sql",
    "insert_from_staging_sql",
    "search_sql",
    "staging_sql",
    "upsert_from_staging_sql",
    "where_sql",
]

ROW_COLUMNS: LiteralString = "id, entity_type, entity_id, metadata, content, created_at"
_CANDIDATE_COLUMNS: LiteralString = (
    "c.id, c.entity_type, c.entity_id, c.metadata, c.content, c.created_at"
)
COPY_COLUMNS: LiteralString = "id, tenant_id, entity_type, entity_id, vector, metadata, content"


def where_sql(tenant: str, node: FilterNode | None) -> tuple[sql.Composable, list[Any]]:
    """The tenant condition, plus the compiled filter when there is one."""
    if node is None:
        return sql.SQL("tenant_id = %s"), [tenant]
    condition, params = compile_filter(node)
    return sql.SQL("tenant_id = %s AND {}").format(condition), [tenant, *params]


def _distance(spec: CollectionSpec) -> sql.Composable:
    return sql.SQL("vector " + metric_spec(spec.metric).operator + " %b")


def search_sql(
    spec: CollectionSpec,
    tenant: str,
    query: Any,
    limit: int,
    node: FilterNode | None,
    *,
    include_vectors: bool,
    rerank_candidates: int | None = None,
) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    """Top ``limit`` rows by distance to ``query``.

    With ``rerank_candidates`` (binary quantization), the bit index picks that many candidates
    by Hamming distance first, and only those are ranked by full-precision distance.
    """
    reranked = rerank_candidates is not None
    text: sql.SQL | sql.Composed
    if node is None:
        text = _unfiltered(spec.table, spec.metric, spec.dimension, include_vectors, reranked)
        params: list[Any] = [tenant]
    else:
        where, params = where_sql(tenant, node)
        text = _search_template(
            spec.table, spec.metric, spec.dimension, include_vectors, reranked, where
        )
    if reranked:
        return text, [query, *params, query, rerank_candidates, limit]
    return text, [query, *params, limit]


@lru_cache(maxsize=256)
def _unfiltered(
    table: str, metric: str, dimension: int, include_vectors: bool, reranked: bool
) -> sql.SQL:
    # Composing costs tens of microseconds a call; without a filter the text never changes.
    template = _search_template(
        table, metric, dimension, include_vectors, reranked, sql.SQL("tenant_id = %s")
    )
    return sql.SQL(template.as_string(None))


def _search_template(
    table: str,
    metric: str,
    dimension: int,
    include_vectors: bool,
    reranked: bool,
    where: sql.Composable,
) -> sql.Composed:
    distance = sql.SQL("vector " + metric_spec(metric).operator + " %b")
    table_id = sql.Identifier(table)
    if not reranked:
        # ORDER BY the select-list alias is the same expression to the planner: the index
        # serves it, and the vector is sent once.
        columns = sql.SQL(ROW_COLUMNS + (", vector" if include_vectors else ""))
        return sql.SQL(
            "SELECT {}, {} AS distance FROM {} WHERE {} ORDER BY distance LIMIT %s"
        ).format(columns, distance, table_id, where)
    bits = sql.SQL("binary_quantize(vector)::bit({})").format(sql.Literal(dimension))
    inner = sql.SQL(
        "SELECT {columns}, vector FROM {table} WHERE {where} "
        "ORDER BY {bits} <~> binary_quantize(%b) LIMIT %s"
    ).format(columns=sql.SQL(ROW_COLUMNS), table=table_id, where=where, bits=bits)
    outer_columns = sql.SQL(_CANDIDATE_COLUMNS + (", c.vector" if include_vectors else ""))
    return sql.SQL("SELECT {}, c.{} AS distance FROM ({}) AS c ORDER BY distance LIMIT %s").format(
        outer_columns, distance, inner
    )


def hybrid_text_sql(
    spec: CollectionSpec, tenant: str, text: str, query: Any, limit: int, node: FilterNode | None
) -> tuple[sql.Composed, list[Any]]:
    """Full-text matches on ``content``, best rank first, with their vector distance."""
    where, params = where_sql(tenant, node)
    return (
        sql.SQL(
            "SELECT {}, {} AS distance FROM {}, websearch_to_tsquery('english', %s) AS q "
            "WHERE content_tsv @@ q AND {} ORDER BY ts_rank_cd(content_tsv, q) DESC, id LIMIT %s"
        ).format(sql.SQL(ROW_COLUMNS), _distance(spec), spec.table_id, where),
        [query, text, *params, limit],
    )


def staging_sql(spec: CollectionSpec, staging: sql.Identifier) -> sql.Composed:
    """A temporary table for COPY, dropped at commit (one simple-protocol query).

    Vectors stay in the row as in the collection: TOAST's attempts to compress them would
    cost more than the copy itself.
    """
    create = sql.SQL(
        "CREATE TEMP TABLE {} (id uuid, tenant_id text, entity_type text, entity_id text, "
        "vector {}, metadata jsonb, content text) ON COMMIT DROP"
    ).format(staging, spec.vector_type)
    if not spec.plain_storage:
        return create
    return sql.Composed(
        [create, sql.SQL("; ALTER TABLE {} ALTER COLUMN vector SET STORAGE PLAIN").format(staging)]
    )


def copy_sql(table: sql.Identifier) -> sql.Composed:
    """Binary COPY of new rows into ``table``."""
    return sql.SQL("COPY {} (" + COPY_COLUMNS + ") FROM STDIN WITH (FORMAT BINARY)").format(table)


def insert_from_staging_sql(spec: CollectionSpec, staging: sql.Identifier) -> sql.Composed:
    """Move staged rows (new ids only) into the collection."""
    return sql.SQL(
        "INSERT INTO {table} (" + COPY_COLUMNS + ") SELECT " + COPY_COLUMNS + " FROM {staging}"
    ).format(table=spec.table_id, staging=staging)


def upsert_from_staging_sql(spec: CollectionSpec, staging: sql.Identifier) -> sql.Composed:
    """Move staged rows into the collection, replacing rows of the same id *and tenant*.

    A row whose id belongs to another tenant is left alone and not returned, which the caller
    turns into a Conflict (and a rollback).
    """
    return sql.SQL(
        "INSERT INTO {table} AS t ("
        + COPY_COLUMNS
        + ") SELECT "
        + COPY_COLUMNS
        + " FROM {staging} "
        "ON CONFLICT (id) DO UPDATE SET entity_type = excluded.entity_type, "
        "entity_id = excluded.entity_id, vector = excluded.vector, metadata = excluded.metadata, "
        "content = excluded.content WHERE t.tenant_id = excluded.tenant_id RETURNING t.id"
    ).format(table=spec.table_id, staging=staging)
