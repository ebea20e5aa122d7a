"""``agency-data top``: the costliest statements of the database, from ``pg_stat_statements``."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer
from pydantic import TypeAdapter

from agency_data.cli import _common
from agency_data.cli._common import ConfigOption, DataDirOption, load_read_only_config, run_job
from agency_data.manager import DataLayer
from agency_data.observability.statements import StatementStats

__all__ = ["HEADERS", "StatementOrder", "print_statements", "statement_rows", "top"]

HEADERS = ("calls", "total ms", "mean ms", "p95~ ms", "rows", "share %", "query")
# The most dl.admin.top_statements lists; refusing more here spares starting the servers.
_MOST = 1000
# A shortened query keeps at least this much of its text, however narrow the terminal.
_MIN_QUERY = 16
_STATS_LIST = TypeAdapter(list[StatementStats])


class StatementOrder(StrEnum):
    """What ``agency-data top`` ranks the statements by, the largest first."""

    TOTAL = "total"
    MEAN = "mean"
    CALLS = "calls"
    ROWS = "rows"


def top(
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", min=1, max=_MOST, help="How many statements to list."),
    ] = 20,
    order: Annotated[
        StatementOrder,
        typer.Option(
            help="Rank by total time, mean time per call, calls, or rows returned.",
        ),
    ] = StatementOrder.TOTAL,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print a JSON list of the statements: every figure, the whole text."
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List the costliest SQL statements of the database, from pg_stat_statements.

    Columns: calls; total, mean and estimated 95th-percentile execution time (p95~, from the mean and standard deviation); rows returned; share of all this database's statement time. Counted since the statistics were last reset (SELECT pg_stat_statements_reset()). The text is normalised, literals shown as ? or $n, and cut to fit on a terminal (never when piped).

    Read-only: no migration runs. The embedded server has pg_stat_statements ready. Another server needs it in shared_preload_libraries, CREATE EXTENSION pg_stat_statements in the database, and pg_read_all_stats granted to the owner role to see the application role's statements.
    """
    cfg = load_read_only_config(config, data_dir)

    async def job() -> list[StatementStats]:
        async with DataLayer(cfg) as dl:
            return await dl.admin.top_statements(limit, order.value)

    found = run_job(job)
    if as_json:
        typer.echo(_STATS_LIST.dump_json(found, indent=2).decode())
        return
    print_statements(found)


def print_statements(stats: Sequence[StatementStats]) -> None:
    """The statements as a table: whole on a pipe, each query cut to one line on a terminal."""
    width = None if _common.plain() else _common.console.width
    _common.table(HEADERS, statement_rows(stats, width))
    if not stats:
        typer.echo("note: no statement recorded for this database since the last reset", err=True)


def statement_rows(stats: Sequence[StatementStats], width: int | None) -> list[list[str]]:
    """Table cells for ``stats``: the query's text whole, or cut so a row fits in ``width``."""
    rows = [
        [
            str(s.calls),
            f"{s.total_ms:.1f}",
            f"{s.mean_ms:.2f}",
            f"{s.p95_ms:.2f}",
            str(s.rows),
            f"{s.share * 100:.1f}",
            s.query,
        ]
        for s in stats
    ]
    if width is None or not rows:
        return rows
    # A rich table's row: a border before each column and after the last, one space of
    # padding on each side of every cell.
    numbers = sum(
        max(len(HEADERS[i]), *(len(row[i]) for row in rows)) + 3 for i in range(len(HEADERS) - 1)
    )
    room = max(_MIN_QUERY, width - numbers - 4)
    for row in rows:
        if len(row[-1]) > room:
            row[-1] = row[-1][: room - 1] + "…"
    return rows
