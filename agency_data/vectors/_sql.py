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
    "hybrid_text_sql",
    "insert_sql",
    "search_sql",
    "tenant_search_sql",
    "where_sql",
]

ROW_COLUMNS: LiteralString = "id, entity_type, entity_id, metadata, content, created_at"
_LIMIT = sql.SQL("%s")
_CANDIDATE_COLUMNS: LiteralString = (
    "c.id, c.entity_type, c.entity_id, c.metadata, c.content, c.created_at"
)
_STORED_COLUMNS: LiteralString = "id, tenant_id, entity_type, entity_id, vector, metadata, content"


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
    exact: bool = False,
) -> tuple[sql.SQL | sql.Composed, list[Any]]:
    """Top ``limit`` rows by distance to ``query``.

    With ``rerank_candidates`` (binary quantization), the bit index picks that many candidates
    by Hamming distance first, and only those are ranked by full-precision distance. ``exact``
    ranks every row: the ORDER BY sits above a subquery the index cannot serve. (Planner
    settings such as enable_indexscan would not do: a prepared statement's generic plan is
    kept whatever the settings of later runs, so exact and index searches sharing one text
    would share one plan, the index's or the full scan's.)
    """
    reranked = rerank_candidates is not None
    text: sql.SQL | sql.Composed
    if node is None:
        text = _unfiltered(
            spec.table, spec.metric, spec.dimension, include_vectors, reranked, exact
        )
        params: list[Any] = [tenant]
    else:
        where, params = where_sql(tenant, node)
        text = _search_template(
            spec.table, spec.metric, spec.dimension, include_vectors, reranked, where, exact=exact
        )
    if reranked:
        return text, [query, *params, query, rerank_candidates, limit]
    return text, [query, *params, limit]


def tenant_search_sql(
    spec: CollectionSpec,
    tenant: str,
    query: Any,
    limit: int,
    *,
    include_vectors: bool,
    setting: str,
) -> tuple[sql.SQL, list[Any]]:
    """:func:`search_sql` without a filter, as one statement that also names the tenant to
    row-level security (``set_config(setting, tenant, true)``): a search outside a transaction
    then needs no statement of its own for the setting, and so no pipeline.

    The LIMIT's subquery makes the setting: PostgreSQL evaluates it once, when the Limit node
    starts and before the plan below it reads a row. The ``tenant_id = %s`` condition still
    holds the query to the tenant's rows whatever the plan. set_config() is parallel-unsafe,
    so this is for searches an index serves, whose plans are never parallel anyway.
    """
    text = _tenant_named(spec.table, spec.metric, spec.dimension, include_vectors, setting)
    return text, [query, tenant, limit, tenant]


@lru_cache(maxsize=256)
def _tenant_named(
    table: str, metric: str, dimension: int, include_vectors: bool, setting: str
) -> sql.SQL:
    limit = sql.SQL("(SELECT %s FROM set_config({}, %s, true))").format(sql.Literal(setting))
    template = _search_template(
        table, metric, dimension, include_vectors, False, sql.SQL("tenant_id = %s"), limit
    )
    return sql.SQL(template.as_string(None))


@lru_cache(maxsize=256)
def _unfiltered(
    table: str, metric: str, dimension: int, include_vectors: bool, reranked: bool, exact: bool
) -> sql.SQL:
    # Composing costs tens of microseconds a call; without a filter the text never changes.
    template = _search_template(
        table,
        metric,
        dimension,
        include_vectors,
        reranked,
        sql.SQL("tenant_id = %s"),
        exact=exact,
    )
    return sql.SQL(template.as_string(None))


def _search_template(
    table: str,
    metric: str,
    dimension: int,
    include_vectors: bool,
    reranked: bool,
    where: sql.Composable,
    limit: sql.Composable = _LIMIT,
    *,
    exact: bool = False,
) -> sql.Composed:
    distance = sql.SQL("vector " + metric_spec(metric).operator + " %b")
    table_id = sql.Identifier(table)
    if exact:
        # OFFSET 0 keeps the subquery a scan of its own: no index can order its rows.
        columns = sql.SQL(ROW_COLUMNS + (", vector" if include_vectors else ""))
        return sql.SQL(
            "SELECT * FROM (SELECT {}, {} AS distance FROM {} WHERE {} OFFSET 0) AS e "
            "ORDER BY distance LIMIT {}"
        ).format(columns, distance, table_id, where, limit)
    if not reranked:
        # ORDER BY the select-list alias is the same expression to the planner: the index
        # serves it, and the vector is sent once.
        columns = sql.SQL(ROW_COLUMNS + (", vector" if include_vectors else ""))
        return sql.SQL(
            "SELECT {}, {} AS distance FROM {} WHERE {} ORDER BY distance LIMIT {}"
        ).format(columns, distance, table_id, where, limit)
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


@lru_cache(maxsize=256)
def insert_sql(table: str, storage: str, upsert: bool) -> sql.SQL:
    """Insert a slice of rows given as whole columns (binary arrays, see :mod:`._binary`).

    Parameters: the tenant, then ids, entity types, entity ids, vectors, metadata and content,
    one array each. With ``upsert``, a row replaces the tenant's row of the same id (ids are
    unique per tenant: another tenant's row of that id is another row). A batch larger than
    a slice is locked slice by slice, each in id order.
    """
    # One INSERT per slice rather than COPY: PostgreSQL refuses COPY FROM into a table under
    # row-level security, and the tenant policy checks the inserted rows one by one.
    text = sql.SQL(
        "INSERT INTO {table} AS t (" + _STORED_COLUMNS + ") "
        "SELECT id, %s, entity_type, entity_id, vector, metadata, content "
        "FROM unnest(%b::text[], %b::text[], %b::text[], %b::{vectors}[], %b::jsonb[], %b::text[]) "
        "AS item(id, entity_type, entity_id, vector, metadata, content)"
        + (
            # In id order: two upserts of the same ids lock their rows in the same order
            # (in the callers' orders they could each wait for the other).
            ' ORDER BY item.id COLLATE "C"'
            " ON CONFLICT (tenant_id, id) DO UPDATE SET entity_type = excluded.entity_type, "
            "entity_id = excluded.entity_id, vector = excluded.vector, "
            "metadata = excluded.metadata, content = excluded.content"
            if upsert
            else ""
        )
    ).format(table=sql.Identifier(table), vectors=sql.SQL(storage))
    # Composing costs tens of microseconds; the text depends on the arguments only.
    return sql.SQL(text.as_string(None))
