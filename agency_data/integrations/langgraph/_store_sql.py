"""SQL for the LangGraph store's items table, built by pure functions: ``(query, params)``.

Every statement names the tenant and the store, so the primary key ``(tenant_id, store,
prefix, key)`` serves it (text equality and ranges are leakproof, so row-level security lets
the index be used). A namespace prefix is the exact namespace or a range of the dotted text:
``("a", "b")`` is ``prefix = 'a.b'`` or ``'a.b.' <= prefix < 'a.b/'`` ('/' follows '.').
A read that refreshes TTLs does so in the same statement, in a data-modifying CTE.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, LiteralString, TypeAlias

from psycopg import sql

from agency_data.vectors.filter_ast import FilterNode
from agency_data.vectors.filter_sql import compile_filter

__all__ = [
    "ITEM_COLUMNS",
    "Statement",
    "get_sql",
    "hits_sql",
    "list_sql",
    "prefix_of",
    "search_sql",
    "sweep_sql",
    "write_sql",
]

Statement: TypeAlias = "tuple[sql.SQL | sql.Composed, list[Any]]"

ITEM_COLUMNS: LiteralString = "prefix, key, value, created_at, updated_at"
_REFRESHED: LiteralString = "now() + make_interval(secs => t.ttl_minutes * 60)"
_LIVE: LiteralString = "(s.expires_at IS NULL OR s.expires_at > now())"
_FOUND_PREFIXES: LiteralString = "ARRAY(SELECT prefix FROM found)"
_FOUND_KEYS: LiteralString = "ARRAY(SELECT key FROM found)"


def prefix_of(namespace: Sequence[str]) -> str:
    """A namespace as stored: its labels joined by dots (labels hold no dots)."""
    return ".".join(namespace)


def _scope(alias: LiteralString, tenant: str, store: str) -> tuple[sql.SQL, list[Any]]:
    return sql.SQL(alias + ".tenant_id = %s AND " + alias + ".store = %s"), [tenant, store]


def _under(alias: LiteralString, namespace: Sequence[str]) -> tuple[sql.SQL, list[Any]]:
    """The items in ``namespace`` or below it (everything, for an empty one): one range of
    the primary key (``'a.b' <= prefix < 'a.b/'``), less the namespaces that only begin
    with the same characters (``'a.b-c'``)."""
    if not namespace:
        return sql.SQL("TRUE"), []
    path = prefix_of(namespace)
    column = alias + ".prefix"
    return (
        sql.SQL(
            "("
            + column
            + " >= %s AND "
            + column
            + " < %s AND ("
            + column
            + " = %s OR "
            + column
            + " >= %s))"
        ),
        [path, path + "/", path, path + "."],
    )


def _refresh(
    prefixes: LiteralString,
    keys: LiteralString,
    pairs: LiteralString,
    tenant: str,
    store: str,
    *,
    live: bool = False,
) -> tuple[sql.SQL, list[Any]]:
    """A CTE giving the items named by ``pairs`` (a FROM item ``r`` with prefix and key)
    that have a TTL a new expiry; ``live``: only those not yet expired. ``prefixes`` and
    ``keys`` (arrays of the pairs' parts) make the rows' lookup a scan of the primary key
    whatever the planner knows of the table (a join with ``pairs`` alone may be planned as a
    scan of every item of the store)."""
    return (
        sql.SQL(
            "touched AS (UPDATE langgraph_store AS t SET expires_at = "
            + _REFRESHED
            + " WHERE t.tenant_id = %s AND t.store = %s AND t.prefix = ANY("
            + prefixes
            + ") AND t.key = ANY("
            + keys
            + ") AND EXISTS (SELECT FROM "
            + pairs
            + " WHERE r.prefix = t.prefix AND r.key = t.key) AND t.ttl_minutes IS NOT NULL"
            + (" AND t.expires_at > now()" if live else "")
            + ")"
        ),
        [tenant, store],
    )


def get_sql(
    tenant: str,
    store: str,
    wanted: Sequence[tuple[str, str]],
    refreshed: Sequence[tuple[str, str]],
    *,
    omit_expired: bool,
) -> Statement:
    """The items of the store whose prefix and key are among ``wanted``'s (the caller picks
    the pairs it asked for); those of ``refreshed`` get a new expiry. The rows come back as
    they were before the refresh (the CTE's snapshot)."""
    scope, params = _scope("s", tenant, store)
    parts: list[sql.Composable] = []
    if refreshed:
        refresh, refresh_params = _refresh(
            "%s::text[]",
            "%s::text[]",
            "unnest(%s::text[], %s::text[]) AS r(prefix, key)",
            tenant,
            store,
            live=omit_expired,
        )
        parts.append(sql.SQL("WITH ") + refresh + sql.SQL(" "))
        prefixes, keys = [p for p, _ in refreshed], [k for _, k in refreshed]
        params = [*refresh_params, _distinct(prefixes), _distinct(keys), prefixes, keys, *params]
    parts.append(
        sql.SQL(
            "SELECT s.prefix, s.key, s.value, s.created_at, s.updated_at FROM langgraph_store "
            "AS s WHERE {} AND s.prefix = ANY(%s::text[]) AND s.key = ANY(%s::text[]){}"
        ).format(scope, sql.SQL(" AND " + _LIVE if omit_expired else ""))
    )
    params += [_distinct([p for p, _ in wanted]), _distinct([k for _, k in wanted])]
    return sql.Composed(parts), params


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def search_sql(
    tenant: str,
    store: str,
    namespace: Sequence[str],
    node: FilterNode | None,
    limit: int,
    offset: int,
    *,
    refresh: bool,
    omit_expired: bool,
) -> Statement:
    """Items under ``namespace`` matching ``node`` (a filter on their value), most recently
    updated first (ties by namespace and key), a page of ``limit`` after ``offset``."""
    scope, params = _scope("s", tenant, store)
    under, under_params = _under("s", namespace)
    params += under_params
    conditions: list[sql.Composable] = [scope, under]
    if omit_expired:
        conditions.append(sql.SQL(_LIVE))
    where = sql.SQL(" AND ").join(conditions)
    if node is not None:
        # The filter compiles against a document named ``metadata``: here, the item's value.
        condition, filter_params = compile_filter(node)
        page = sql.SQL(
            "SELECT " + ITEM_COLUMNS + " FROM (SELECT s.prefix, s.key, s.value, s.created_at, "
            "s.updated_at, s.value AS metadata FROM langgraph_store AS s WHERE {}) AS item "
            "WHERE {} ORDER BY updated_at DESC, prefix, key LIMIT %s OFFSET %s"
        ).format(where, condition)
        params += [*filter_params, limit, offset]
    else:
        page = sql.SQL(
            "SELECT s.prefix, s.key, s.value, s.created_at, s.updated_at FROM langgraph_store "
            "AS s WHERE {} ORDER BY s.updated_at DESC, s.prefix, s.key LIMIT %s OFFSET %s"
        ).format(where)
        params += [limit, offset]
    if not refresh:
        return page, params
    touch, touch_params = _refresh(_FOUND_PREFIXES, _FOUND_KEYS, "found AS r", tenant, store)
    return (
        sql.SQL(
            "WITH found AS ({}), {} SELECT " + ITEM_COLUMNS + " FROM found "
            "ORDER BY updated_at DESC, prefix, key"
        ).format(page, touch),
        params + touch_params,
    )


def hits_sql(
    tenant: str,
    store: str,
    hits: Sequence[tuple[str, str, float]],
    limit: int,
    offset: int,
    *,
    refresh: bool,
    omit_expired: bool,
) -> Statement:
    """The items of a vector search's ``hits`` (prefix, key, score; best first) that exist,
    in that order, a page of ``limit`` after ``offset``, with their scores."""
    scope, scope_params = _scope("s", tenant, store)
    found = sql.SQL(
        "found AS (SELECT s.prefix, s.key, s.value, s.created_at, s.updated_at, h.score, h.rank "
        "FROM langgraph_store AS s JOIN unnest(%s::text[], %s::text[], %s::float8[]) "
        "WITH ORDINALITY AS h(prefix, key, score, rank) ON s.prefix = h.prefix AND s.key = h.key "
        "WHERE {} AND s.prefix = ANY(%s::text[]) AND s.key = ANY(%s::text[]){} "
        "ORDER BY h.rank LIMIT %s OFFSET %s)"
    ).format(scope, sql.SQL(" AND " + _LIVE if omit_expired else ""))
    params: list[Any] = [
        [h[0] for h in hits],
        [h[1] for h in hits],
        [h[2] for h in hits],
        *scope_params,
        _distinct([h[0] for h in hits]),
        _distinct([h[1] for h in hits]),
        limit,
        offset,
    ]
    ctes: list[sql.Composable] = [found]
    if refresh:
        touch, touch_params = _refresh(_FOUND_PREFIXES, _FOUND_KEYS, "found AS r", tenant, store)
        ctes.append(touch)
        params += touch_params
    query = sql.SQL("WITH {} SELECT " + ITEM_COLUMNS + ", score FROM found ORDER BY rank").format(
        sql.SQL(", ").join(ctes)
    )
    return query, params


def write_sql(
    tenant: str,
    store: str,
    deletes: Sequence[tuple[str, str]],
    upserts: Sequence[tuple[str, str, str, float | None, str]],
) -> Statement:
    """Delete the items ``deletes`` names and write ``upserts`` (prefix, key, value as JSON,
    TTL in minutes, the ids of its embeddings as a JSON list), in one statement; the upserts
    go in the order given (sorted, by the caller, so that concurrent writers lock rows in the
    same order). Returns, per item written or deleted, the ids of its embeddings ``before``
    and ``after`` (PostgreSQL 18's ``RETURNING old``), so that the stale ones can be deleted
    by id."""
    statements: list[sql.SQL] = []
    params: list[Any] = []
    if deletes:
        statements.append(
            sql.SQL(
                "DELETE FROM langgraph_store AS t USING unnest(%s::text[], %s::text[]) "
                "AS d(prefix, key) WHERE t.tenant_id = %s AND t.store = %s "
                "AND t.prefix = d.prefix AND t.key = d.key "
                "RETURNING t.embedding_ids AS before, NULL::text[] AS after"
            )
        )
        params += [[p for p, _ in deletes], [k for _, k in deletes], tenant, store]
    if upserts:
        statements.append(
            sql.SQL(
                "INSERT INTO langgraph_store AS t (tenant_id, store, prefix, key, value, "
                "ttl_minutes, expires_at, embedding_ids) SELECT %s, %s, u.prefix, u.key, "
                "u.value, u.ttl, now() + make_interval(secs => u.ttl * 60), "
                "ARRAY(SELECT jsonb_array_elements_text(u.ids)) FROM unnest(%s::text[], "
                "%s::text[], %s::jsonb[], %s::float8[], %s::jsonb[]) WITH ORDINALITY "
                "AS u(prefix, key, value, ttl, ids, n) ORDER BY u.n "
                "ON CONFLICT (tenant_id, store, prefix, key) DO UPDATE SET "
                "value = EXCLUDED.value, updated_at = now(), ttl_minutes = EXCLUDED.ttl_minutes, "
                "expires_at = EXCLUDED.expires_at, embedding_ids = EXCLUDED.embedding_ids "
                "RETURNING old.embedding_ids AS before, new.embedding_ids AS after"
            )
        )
        params += [
            tenant,
            store,
            [u[0] for u in upserts],
            [u[1] for u in upserts],
            [u[2] for u in upserts],
            [u[3] for u in upserts],
            [u[4] for u in upserts],
        ]
    if len(statements) == 1:
        return statements[0], params
    # Both in one round trip: the DELETE as a data-modifying CTE (their rows never overlap).
    return (
        sql.SQL(
            "WITH gone AS ({}), put AS ({}) SELECT * FROM gone UNION ALL SELECT * FROM put"
        ).format(*statements),
        params,
    )


def list_sql(
    tenant: str,
    store: str,
    conditions: Sequence[tuple[str, Sequence[str]]],
    max_depth: int | None,
    limit: int,
    offset: int,
    *,
    omit_expired: bool,
) -> Statement:
    """The distinct namespaces (as label arrays) matching every condition (``("prefix",
    labels)`` or ``("suffix", labels)``, where a ``"*"`` label matches any one), cut to
    ``max_depth`` labels, sorted as tuples sort, a page of ``limit`` after ``offset``."""
    scope, params = _scope("s", tenant, store)
    inner: list[sql.Composable] = [scope]
    # The labels of a prefix before any wildcard narrow the scan to a range of the key.
    for kind, labels in conditions:
        if kind != "prefix":
            continue
        fixed = list(itertools.takewhile(lambda label: label != "*", labels))
        if fixed:
            under, under_params = _under("s", fixed)
            inner.append(under)
            params += under_params
    if omit_expired:
        inner.append(sql.SQL(_LIVE))
    outer: list[sql.Composable] = []
    outer_params: list[Any] = []
    for kind, labels in conditions:
        if not labels:
            continue
        outer.append(sql.SQL("cardinality(labels) >= %s::int"))
        outer_params.append(len(labels))
        for place, label in enumerate(labels):
            if label == "*":
                continue
            if kind == "suffix":
                # 1-based, from the end: cardinality - (len - place - 1).
                outer.append(sql.SQL("labels[cardinality(labels) - %s::int] = %s"))
                outer_params += [len(labels) - place - 1, label]
            else:
                outer.append(sql.SQL("labels[%s::int] = %s"))
                outer_params += [place + 1, label]
    cut = sql.SQL("labels[1:%s::int]" if max_depth is not None else "labels")
    query = sql.SQL(
        "SELECT DISTINCT {} AS namespace FROM (SELECT string_to_array(s.prefix, '.') AS labels "
        "FROM langgraph_store AS s WHERE {}) AS n WHERE {} ORDER BY namespace LIMIT %s OFFSET %s"
    ).format(
        cut,
        sql.SQL(" AND ").join(inner),
        sql.SQL(" AND ").join(outer) if outer else sql.SQL("TRUE"),
    )
    depth = [max_depth] if max_depth is not None else []
    return query, [*depth, *params, *outer_params, limit, offset]


def sweep_sql(tenant: str, store: str, most: int) -> Statement:
    """Delete up to ``most`` expired items of the store, returning their (prefix, key); rows
    that a writer holds are left for the next sweep rather than waited for."""
    return (
        sql.SQL(
            "WITH doomed AS (SELECT prefix, key FROM langgraph_store WHERE tenant_id = %s "
            "AND store = %s AND expires_at < now() ORDER BY prefix, key LIMIT %s "
            "FOR UPDATE SKIP LOCKED) DELETE FROM langgraph_store AS t USING doomed AS d "
            "WHERE t.tenant_id = %s AND t.store = %s AND t.prefix = d.prefix AND t.key = d.key "
            "RETURNING t.prefix, t.key, t.embedding_ids"
        ),
        [tenant, store, most, tenant, store],
    )
