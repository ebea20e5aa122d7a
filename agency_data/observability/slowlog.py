"""The slow-query log: one JSON line per statement over ``monitoring.slow_query_ms``.

The line names the operation that sent the statement, its SQL with every literal masked (the
layer sends values as bind parameters, so the text holds none of them; literals the caller wrote
into their own SQL are replaced by ``?`` by a lexer that follows PostgreSQL's rules, not a
generic SQL one), the duration, the rows, the tenant and the trace id.
It goes to the ``agency_data.slow_query`` logger at WARNING.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

__all__ = ["SLOW_LOG", "redact_sql", "slow_query_line"]

SLOW_LOG = logging.getLogger("agency_data.slow_query")
_MAX_SQL = 4000


# PostgreSQL's lexical rules, as far as a literal's bounds go (standard_conforming_strings
# on, PostgreSQL's default): backslashes escape only inside E'...'. Order matters: comments and
# quoted identifiers first, so a quote inside them starts nothing; an identifier whole, so the
# digits in "t1" are no number.
_TOKENS = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<ident>"(?:[^"]|"")*(?:"|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(?:\$(?P=tag)?\$|\Z))
    | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*(?:'|\Z))
    | (?P<string>(?:[BbXxNn]|[Uu]&)?'(?:[^']|'')*(?:'|\Z))
    | (?P<param>\$\d+|%[sbt]|%\([^)]*\)[sbt])
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<number>
          0[Xx][0-9A-Fa-f_]+ | 0[Oo][0-7_]+ | 0[Bb][01_]+
        | (?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[Ee][+-]?\d[\d_]*)?
      )
    """,
    re.VERBOSE | re.DOTALL,
)


def redact_sql(text: str) -> str:
    """``text`` with every literal (strings, numbers, dollar-quoted bodies) as ``?`` and
    comments dropped; identifiers and parameter placeholders stay.

    An unterminated string or comment masks everything after its start: when in doubt, the
    rest is hidden.
    """

    def mask(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind == "comment":
            return " "
        if kind in ("dollar", "estring", "string", "number"):
            return "?"
        return match.group(0)

    redacted = " ".join(_TOKENS.sub(mask, text).split())
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
