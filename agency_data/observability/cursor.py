"""The pool's cursor while statements are watched: slow statements logged, trace ids in SQL.

Installed as the connections' ``cursor_factory`` only when the slow-query log or the SQL
comments are on, so with both off the driver runs unchanged. Two private hooks of psycopg's
cursor are used, each a plain call per statement: ``_execute_gen`` (the generator behind
``execute()``) where a statement starts, and ``_set_results``, which receives its results in
or out of a pipeline. ``tests/test_observability.py`` drives both (a slow statement alone and
in a pipeline, and the trace id in ``tests/test_tracing.py``), so a psycopg that renamed them
fails there.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import DictRow

from agency_data.observability.instrument import current_operation, tenant_of
from agency_data.observability.slowlog import SLOW_LOG, redact_sql, slow_query_line
from agency_data.observability.tracing import traceparent

if TYPE_CHECKING:
    from psycopg.abc import PQGen
    from psycopg.pq.abc import PGresult

    from agency_data.observability.instrument import Telemetry

__all__ = ["ObservedCursor", "cursor_class", "log_if_slow", "untimed", "with_trace_comment"]


class ObservedCursor(AsyncCursor[DictRow]):
    """A cursor that times its statements and tags them with the current trace."""

    telemetry: ClassVar[Telemetry]
    threshold: ClassVar[float]
    comments: ClassVar[bool]
    _sent: Any = None
    _started: float = 0.0
    # Set on the layer's own bookkeeping (settings sent ahead of a query in its pipeline):
    # their results arrive with the query's, so their "duration" would be the query's.
    untimed: bool = False

    def _execute_gen(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> PQGen[None]:
        # The generator behind execute(): a plain call, where overriding the coroutine would
        # add a coroutine to every statement.
        sent = query
        if self.comments and (parent := traceparent()) is not None:
            sent = with_trace_comment(query, parent)
        if not self.untimed:
            self._sent = query
            self._started = perf_counter()
        return super()._execute_gen(sent, params, prepare=prepare, binary=binary)

    def _set_results(self, results: list[PGresult]) -> None:
        super()._set_results(results)
        query, self._sent = self._sent, None
        if query is None or not self.threshold:
            return
        seconds = perf_counter() - self._started
        if seconds >= self.threshold:
            try:
                self._log_slow(query, seconds)
            except Exception:  # noqa: BLE001 - a log line must never fail the statement
                SLOW_LOG.exception("could not write a slow-query log line")

    def _log_slow(self, query: Any, seconds: float) -> None:
        _write(self.telemetry, _text(query, self.connection), seconds, self.rowcount)


def log_if_slow(conn: AsyncConnection[Any], queries: list[Any], seconds: float) -> None:
    """Log a pipeline of ``queries`` that took ``seconds`` in all, if that is slow (one line)."""
    factory = conn.cursor_factory
    if not (isinstance(factory, type) and issubclass(factory, ObservedCursor)):
        return
    if not factory.threshold or seconds < factory.threshold:
        return
    try:
        text = "; ".join(_text(query, conn) for query in queries)
        _write(factory.telemetry, text, seconds, -1)
    except Exception:  # noqa: BLE001 - a log line must never fail the statements
        SLOW_LOG.exception("could not write a slow-query log line")


def _write(telemetry: Telemetry, text: str, seconds: float, rows: int) -> None:
    telemetry.slow_queries += 1
    if not SLOW_LOG.isEnabledFor(logging.WARNING):
        return  # counted; the line (redacting costs) only when someone reads it
    current = current_operation.get()
    parent = traceparent()
    SLOW_LOG.warning(
        slow_query_line(
            operation=current[0].name if current is not None else None,
            sql=redact_sql(text),
            seconds=seconds,
            rows=rows if rows >= 0 else None,
            tenant=tenant_of(current[1]) if current is not None else None,
            trace_id=parent.split("-")[1] if parent is not None else None,
        )
    )


async def untimed(conn: AsyncConnection[Any], query: Any, params: Any = None) -> AsyncCursor[Any]:
    """``conn.execute(query, params)`` for the layer's bookkeeping, left out of the slow log."""
    cursor = conn.cursor()
    if isinstance(cursor, ObservedCursor):
        cursor.untimed = True
    return await cursor.execute(query, params)


def cursor_class(telemetry: Telemetry, *, comments: bool) -> type[ObservedCursor] | None:
    """The cursor class for ``telemetry``'s pools, or None when nothing needs watching."""
    threshold = telemetry.config.slow_query_ms / 1000
    if not threshold and not comments:
        return None
    return type(
        "ObservedCursor",
        (ObservedCursor,),
        {"telemetry": telemetry, "threshold": threshold, "comments": comments},
    )


def with_trace_comment(query: Any, parent: str) -> Any:
    """``query`` with a sqlcommenter ``traceparent`` comment after it.

    On a line of its own, so a ``--`` comment ending the query cannot swallow it.
    """
    comment = f"\n/*traceparent='{parent}'*/"
    if isinstance(query, str):
        return query + comment
    if isinstance(query, sql.Composable):
        return query + sql.SQL(comment)
    if isinstance(query, bytes):
        return query + comment.encode()
    return query


def _text(query: Any, conn: AsyncConnection[Any]) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    if isinstance(query, sql.Composable):
        return query.as_string(conn)
    return str(query)
