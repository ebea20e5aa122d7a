"""Keyset pagination and counting over a filtered table: what every listing store shares."""

from __future__ import annotations

from typing import Any, LiteralString, TypeVar

from psycopg import sql
from pydantic import BaseModel

from agency_data.inputs import check_limit, decode_cursor, encode_cursor
from agency_data.models import Page
from agency_data.postgres.database import Database

__all__ = ["count_where", "keyset_page"]

M = TypeVar("M", bound=BaseModel)


async def keyset_page(
    db: Database,
    table: LiteralString,
    columns: LiteralString,
    where: list[sql.Composable],
    params: list[Any],
    *,
    model: type[M],
    limit: int,
    cursor: str | None,
    consistent: bool = False,
) -> Page[M]:
    """Rows of ``table`` matching ``where`` in ``(created_at, id)`` order, after ``cursor``.

    One row more than asked is fetched to learn whether another page exists; rows inserted
    while a caller pages land after its cursor, so earlier pages never shift. A read replica
    may serve it (see :meth:`Database.read`).
    """
    check_limit(limit)
    conditions, values = list(where), list(params)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        conditions.append(sql.SQL("(created_at, id) > (%s, %s)"))
        values.extend([created_at, last_id])
    query = sql.SQL(
        "SELECT " + columns + " FROM " + table + " WHERE {} ORDER BY created_at, id LIMIT %s"
    ).format(sql.SQL(" AND ").join(conditions))
    rows = await db.read(
        lambda on: on.fetch(query, [*values, limit + 1], model=model), consistent=consistent
    )
    items = rows[:limit]
    last: Any = items[-1] if items else None
    next_cursor = encode_cursor(last.created_at, last.id) if len(rows) > limit else None
    return Page[Any](items=items, next_cursor=next_cursor)


async def count_where(
    db: Database,
    table: LiteralString,
    where: list[sql.Composable],
    params: list[Any],
    consistent: bool = False,
) -> int:
    """How many rows of ``table`` match ``where`` (a read replica may answer)."""
    query = sql.SQL("SELECT count(*) FROM " + table + " WHERE {}").format(
        sql.SQL(" AND ").join(where)
    )
    return int(await db.read(lambda on: on.fetch_value(query, params), consistent=consistent))
