"""The most expensive statements, from ``pg_stat_statements`` (``agency-data top``).

The embedded server preloads the module; its view is made in the server's ``postgres``
database (by the embedded superuser), which keeps it out of the application's schema and its
backups, and read from there for the application's database alone. On another server the view
must exist in the database the owner role connects to (``CREATE EXTENSION
pg_stat_statements``), and the role needs ``pg_read_all_stats`` to see other roles' text.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel

from agency_data.errors import ConfigError
from agency_data.inputs import check_choice, check_int
from agency_data.observability.slowlog import redact_sql
from agency_data.postgres.errors import to_agency_error

__all__ = ["StatementStats", "enable_statement_stats", "top_statements"]

Order = Literal["total", "mean", "calls", "rows"]
_ORDERS: dict[str, str] = {
    "total": "total_exec_time",
    "mean": "mean_exec_time",
    "calls": "calls",
    "rows": "rows",
}
_MAX_LIMIT = 1000
# The advisory lock key that serialises the view's creation (any fixed number of our own).
_SETUP_LOCK = 0x5F0C7D1A2B3C4D60


class StatementStats(BaseModel):
    """One normalised statement's totals since the statistics were last reset."""

    query: str
    calls: int
    total_ms: float
    mean_ms: float
    p95_ms: float
    max_ms: float
    rows: int
    share: float
    """This statement's part of the execution time of every statement of the database."""


_PRELOADED_SQL = (
    "SELECT 'pg_stat_statements' = ANY(string_to_array("
    "replace(current_setting('shared_preload_libraries'), ' ', ''), ',')) AS loaded"
)

_TOP_SQL = """
WITH s AS (
    SELECT /* agency_data top_statements */ query, calls, total_exec_time, mean_exec_time, stddev_exec_time, max_exec_time, rows
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %(database)s)
      AND calls > 0
      -- not this very query (it would list itself)
      AND query NOT LIKE '%%agency_data top_statements%%'
)
SELECT query, calls, total_exec_time, mean_exec_time, stddev_exec_time, max_exec_time, rows,
       total_exec_time / nullif(sum(total_exec_time) OVER (), 0) AS share
FROM s ORDER BY {order} DESC LIMIT %(limit)s
"""


async def enable_statement_stats(conn: AsyncConnection[Any], reader: str) -> bool:
    """As a superuser: make the view in ``conn``'s database and let ``reader`` see all of it.

    False (and nothing done) when the server did not preload ``pg_stat_statements``.
    """
    cursor = await conn.execute(_PRELOADED_SQL)
    row = await cursor.fetchone()
    if not row or not row[0]:
        return False
    # Processes starting together would race to create it (IF NOT EXISTS is no lock).
    await conn.execute("SELECT pg_advisory_lock(%s)", [_SETUP_LOCK])
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute(
            psycopg.sql.SQL("GRANT pg_read_all_stats TO {}").format(psycopg.sql.Identifier(reader))
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [_SETUP_LOCK])
    return True


async def top_statements(
    conninfo: str, database: str, *, limit: int = 20, order: str = "total"
) -> list[StatementStats]:
    """The ``limit`` costliest statements of ``database``, read through ``conninfo``.

    ``order``: ``total`` (time), ``mean`` (time per call), ``calls`` or ``rows``. The text is
    redacted (literals as ``?``); ``p95_ms`` is estimated from the mean and standard deviation
    (mean + 1.645 sd, capped at the maximum), which is what the view keeps.
    """
    check_int(limit, "limit", 1, _MAX_LIMIT)
    check_choice(order, "order", _ORDERS)
    query = psycopg.sql.SQL(_TOP_SQL).format(order=psycopg.sql.Identifier(_ORDERS[order]))
    try:
        async with await AsyncConnection.connect(
            conninfo, autocommit=True, row_factory=dict_row
        ) as conn:
            rows = await (
                await conn.execute(query, {"database": database, "limit": limit})
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        raise ConfigError(
            "pg_stat_statements is not set up on this server: add it to "
            "shared_preload_libraries, restart, and run CREATE EXTENSION pg_stat_statements "
            "as a superuser in the database the owner role connects to",
            field="postgresql.admin_dsn",
        ) from None
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise ConfigError(
            "pg_stat_statements must be loaded via shared_preload_libraries; add it and "
            "restart the server",
            field="postgresql.admin_dsn",
        ) from None
    except psycopg.Error as exc:
        raise to_agency_error(exc, "reading pg_stat_statements") from exc
    return [_stats(row) for row in rows]


def _stats(row: dict[str, Any]) -> StatementStats:
    mean = float(row["mean_exec_time"])
    sd = float(row["stddev_exec_time"] or 0.0)
    peak = float(row["max_exec_time"])
    # Other roles' text reads "<insufficient privilege>" without pg_read_all_stats.
    text = row["query"] or "<insufficient privilege>"
    return StatementStats(
        query=redact_sql(text),
        calls=int(row["calls"]),
        total_ms=float(row["total_exec_time"]),
        mean_ms=mean,
        p95_ms=min(mean + 1.645 * sd, peak) if math.isfinite(sd) else peak,
        max_ms=peak,
        rows=int(row["rows"]),
        share=float(row["share"] or 0.0),
    )
