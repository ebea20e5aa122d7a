"""Compiling a parsed filter to a SQL condition: bind parameters only, never NULL.

Every comparison is wrapped so that it yields true or false (a missing field or a value of
another type is false), which keeps ``$not`` exact. Metadata paths travel as ``text[]``
parameters to ``#>``; the typed views (``agency_data_json_number`` and friends) come from the
embedding-collections migration.

Where it means exactly the same, a metadata condition is written as containment instead,
``metadata @> '{"kind": "fact"}'``, which each collection's GIN index (``jsonb_path_ops``)
answers: ``$eq`` / ``$in`` of JSON scalars, and ``$contains`` of a number or boolean. Only on
paths that pass through objects alone (a step such as ``0`` may also pick an array element,
which containment cannot), and only for scalars: containment of an object or array would
also match a larger one, and of a string in an array would not be a substring test.

The index serves only queries that row-level security does not filter (the owner role, which
bypasses it): under row-level security PostgreSQL lets a condition use an index only if its
operator is leakproof, and none of ``jsonb_path_ops``'s operators is.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, LiteralString

from psycopg import sql

from agency_data.vectors.filter_ast import COLUMNS, And, Comparison, Field, FilterNode, Not, Or

__all__ = ["compile_filter"]

_ORDER_SQL: dict[str, LiteralString] = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def compile_filter(node: FilterNode) -> tuple[sql.Composable, list[Any]]:
    """The SQL condition for ``node`` and its parameters, in order."""
    params: list[Any] = []
    return _compile(node, params), params


def _compile(node: FilterNode, params: list[Any]) -> sql.Composable:
    if isinstance(node, And):
        if not node.children:
            return sql.SQL("TRUE")
        return sql.SQL("({})").format(
            sql.SQL(" AND ").join(_compile(c, params) for c in node.children)
        )
    if isinstance(node, Or):
        if not node.children:
            return sql.SQL("FALSE")
        return sql.SQL("({})").format(
            sql.SQL(" OR ").join(_compile(c, params) for c in node.children)
        )
    if isinstance(node, Not):
        return sql.SQL("(NOT {})").format(_compile(node.child, params))
    if node.field.column is not None:
        return _column(node, params)
    return _metadata(node, params)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _containment(node: Comparison, params: list[Any]) -> sql.Composable | None:
    """``metadata @> ...`` when that is exactly ``node``, else None."""
    op, value = node.op, node.value
    if not node.field.keys_only:
        return None
    if op == "$eq" and _is_scalar(value):
        params.append(_json(_nest(node.field, value)))
        return sql.SQL(_CONTAINS)
    if op == "$in" and all(_is_scalar(v) for v in value):
        params.append([_json(_nest(node.field, v)) for v in value])
        return sql.SQL(_CONTAINS_ANY)
    if op == "$contains" and not isinstance(value, str):
        # A number or boolean is never a substring: only array elements can match.
        params.append(_json(_nest(node.field, [value])))
        return sql.SQL(_CONTAINS)
    return None


# ``AND metadata IS NOT NULL`` keeps a NULL document false (so NOT of it true), as the other
# forms are; on the collections' NOT NULL column the planner drops it, leaving the index clause.
_CONTAINS: LiteralString = "(metadata @> %s::jsonb AND metadata IS NOT NULL)"
_CONTAINS_ANY: LiteralString = "(metadata @> ANY(%s::jsonb[]) AND metadata IS NOT NULL)"


def _nest(field: Field, value: Any) -> Any:
    for key in reversed(field.path):
        value = {key: value}
    return value


def _metadata(node: Comparison, params: list[Any]) -> sql.Composable:
    contained = _containment(node, params)
    if contained is not None:
        return contained
    target = sql.SQL("(metadata #> %s)")
    params.append(list(node.field.path))
    op, value = node.op, node.value
    if op == "$exists":
        return sql.SQL("({} IS NOT NULL)" if value else "({} IS NULL)").format(target)
    if op == "$eq":
        if isinstance(value, datetime):
            params.append(value)
            return sql.SQL("COALESCE(agency_data_json_timestamptz({}) = %s, false)").format(target)
        params.append(_json(value))
        return sql.SQL("COALESCE({} = %s::jsonb, false)").format(target)
    if op == "$in":
        params.append([_json(v) for v in value])
        return sql.SQL("COALESCE({} = ANY(%s::jsonb[]), false)").format(target)
    if op == "$contains":
        params.append(_json(value))
        return sql.SQL("COALESCE(agency_data_json_contains({}, %s::jsonb), false)").format(target)
    if op in ("$like", "$ilike"):
        params.append(value)
        like: LiteralString = "LIKE" if op == "$like" else "ILIKE"
        return sql.SQL("COALESCE(agency_data_json_text({}) " + like + " %s, false)").format(target)
    comparator = _ORDER_SQL[op]
    params.append(value)
    if isinstance(value, datetime):
        typed = sql.SQL("agency_data_json_timestamptz({}) " + comparator + " %s")
    elif isinstance(value, str):
        typed = sql.SQL('agency_data_json_text({}) COLLATE "C" ' + comparator + " %s")
    else:
        typed = sql.SQL("agency_data_json_number({}) " + comparator + " %s::numeric")
    return sql.SQL("COALESCE({}, false)").format(typed.format(target))


def _column(node: Comparison, params: list[Any]) -> sql.Composable:
    column = node.field.column
    assert column is not None
    kind = COLUMNS[column]
    ident = sql.Identifier(column)
    op, value = node.op, node.value
    if op == "$exists":
        return sql.SQL("({} IS NOT NULL)" if value else "({} IS NULL)").format(ident)
    if op == "$in":
        params.append(list(value))
        cast: LiteralString = {"text": "text[]", "timestamptz": "timestamptz[]"}[kind]
        return sql.SQL("COALESCE({} = ANY(%s::" + cast + "), false)").format(ident)
    params.append(value)
    if op == "$eq":
        return sql.SQL("COALESCE({} = %s, false)").format(ident)
    if op == "$contains":
        return sql.SQL("COALESCE(strpos({}, %s) > 0, false)").format(ident)
    if op == "$like":
        return sql.SQL("COALESCE({} LIKE %s, false)").format(ident)
    if op == "$ilike":
        # Case folded by the database's collation: ids are compared bytewise (COLLATE "C"),
        # under which ILIKE would fold ASCII letters only.
        return sql.SQL('COALESCE({} COLLATE "default" ILIKE %s, false)').format(ident)
    collate: LiteralString = ' COLLATE "C"' if kind == "text" else ""
    return sql.SQL("COALESCE({}" + collate + " " + _ORDER_SQL[op] + " %s, false)").format(ident)
