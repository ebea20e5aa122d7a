"""The slow-query log: one JSON line per statement over ``monitoring.slow_query_ms``.

The line names the operation that sent the statement, its SQL with every literal masked (the
layer sends values as bind parameters, so the text holds none of them; literals the caller wrote
into their own SQL are replaced by ``?``), the duration, the rows, the tenant and the trace id.
It goes to the ``agency_data.slow_query`` logger at WARNING.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlparse import lexer
from sqlparse import tokens as T

__all__ = ["SLOW_LOG", "redact_sql", "slow_query_line"]

SLOW_LOG = logging.getLogger("agency_data.slow_query")
_MAX_SQL = 4000


def redact_sql(text: str) -> str:
    """``text`` with string, number and dollar-quoted literals as ``?`` and comments dropped."""
    parts: list[str] = []
    for ttype, value in lexer.tokenize(text):  # type: ignore[no-untyped-call]
        if ttype in T.Comment:
            continue
        if ttype in T.Literal:
            parts.append("?")
        else:
            parts.append(value)
    redacted = " ".join("".join(parts).split())
    if len(redacted) > _MAX_SQL:
        redacted = redacted[:_MAX_SQL] + "..."
    return redacted


def slow_query_line(
    *,
    operation: str | None,
    sql: str,
    seconds: float,
    rows: int | None,
    tenant: str | None,
    trace_id: str | None,
) -> str:
    """The JSON line for one slow statement (``sql`` already redacted)."""
    record: dict[str, Any] = {
        "event": "slow_query",
        "operation": operation,
        "duration_ms": round(seconds * 1000, 3),
        "rows": rows,
        "tenant": tenant,
        "trace_id": trace_id,
        "sql": sql,
    }
    return orjson.dumps(record).decode()
