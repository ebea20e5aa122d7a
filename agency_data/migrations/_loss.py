"""What a rollback destroys: the tables and columns its down steps drop, with their rows.

Each transactional down step is tried in a transaction that is then rolled back, and the catalog
is compared before and after it, so tables that dynamic SQL drops are found too (0006's down
drops every collection's table from a loop). A step that cannot be tried (it runs outside a
transaction, or its trial fails or waits too long for a lock) is read instead, and the tables its
``DROP TABLE`` statements name are listed. Rows are counted after the rollback, up to a cap, with
row-level security off: a role that cannot see every row gets no count rather than a wrong one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import sqlparse
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from agency_data.migrations._model import DataLoss, Migration
from agency_data.postgres.errors import to_agency_error

__all__ = ["StepLoss", "data_loss"]

# A plan must not sit for long in the lock queue behind a long transaction: every query on
# those tables would queue up behind the plan in turn.
_TRIAL_LOCK_TIMEOUT = "2s"
_COUNT_TIMEOUT = "10s"
_COUNT_CAP = 1_000_000

_SNAPSHOT_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname, a.attnum, a.attname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""
_RESOLVE_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
"""
_DROP_TABLE = re.compile(
    r"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<names>.+?)(?:\s+(?:CASCADE|RESTRICT))?\s*;?$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class _Table:
    oid: int
    schema: str
    name: str

    @property
    def label(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


@dataclass
class _Snapshot:
    tables: dict[int, _Table]
    columns: dict[tuple[int, int], str]


@dataclass(frozen=True)
class StepLoss:
    """What one down step destroys, and how that was found when it was not by a trial run."""

    losses: tuple[DataLoss, ...]
    note: str | None


async def data_loss(
    conn: AsyncConnection[TupleRow], migrations: Sequence[Migration]
) -> dict[str, StepLoss]:
    """What rolling back ``migrations`` (newest first, as they will run) destroys, by key.

    Nothing is changed: the trial runs in a transaction that is always rolled back.
    """
    if not migrations:
        return {}
    found: dict[str, tuple[list[tuple[_Table, str | None]], str | None]] = {}
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_TRIAL_LOCK_TIMEOUT))
            )
            before = await _snapshot(conn)
            tried = True
            for migration in migrations:
                script = migration.down_sql or ""
                if not migration.transactional:
                    note = "it runs outside a transaction, so it was not tried"
                elif not tried:
                    note = "an earlier step could not be tried, so neither was this one"
                else:
                    try:
                        async with conn.transaction():
                            await conn.execute(script)
                            after = await _snapshot(conn)
                    except psycopg.Error as exc:
                        tried = False
                        note = f"its trial run failed ({to_agency_error(exc)})"
                    else:
                        found[migration.key] = (_compare(before, after), None)
                        before = after
                        continue
                named = await _named_in_drops(conn, script)
                found[migration.key] = (
                    [(table, None) for table in named],
                    f"{note}: only the tables its DROP TABLE statements name are listed",
                )
        counted = {
            key: StepLoss(tuple([await _loss(conn, t, c) for t, c in items]), note)
            for key, (items, note) in found.items()
        }
    except psycopg.Error as exc:
        note = f"what it destroys could not be worked out ({to_agency_error(exc)})"
        return {m.key: StepLoss((), note) for m in migrations}
    return counted


def _compare(before: _Snapshot, after: _Snapshot) -> list[tuple[_Table, str | None]]:
    lost: list[tuple[_Table, str | None]] = [
        (table, None) for oid, table in before.tables.items() if oid not in after.tables
    ]
    lost.extend(
        (before.tables[oid], name)
        for (oid, attnum), name in before.columns.items()
        if oid in after.tables and (oid, attnum) not in after.columns
    )
    return lost


async def _snapshot(conn: AsyncConnection[TupleRow]) -> _Snapshot:
    snapshot = _Snapshot({}, {})
    cursor = await conn.execute(_SNAPSHOT_SQL)
    for oid, schema, name, attnum, column in await cursor.fetchall():
        snapshot.tables.setdefault(oid, _Table(oid, schema, name))
        if attnum is not None:
            snapshot.columns[(oid, attnum)] = column
    return snapshot


async def _named_in_drops(conn: AsyncConnection[TupleRow], script: str) -> list[_Table]:
    tables: list[_Table] = []
    for statement in sqlparse.split(script):
        text = sqlparse.format(statement, strip_comments=True).strip()
        match = _DROP_TABLE.match(text)
        if match is None:
            continue
        for name in (part.strip() for part in match["names"].split(",")):
            try:
                async with conn.transaction():
                    row = await (await conn.execute(_RESOLVE_SQL, [name])).fetchone()
            except psycopg.Error:
                continue  # a name PostgreSQL cannot parse is no table of ours to count
            if row is not None and all(t.oid != row[0] for t in tables):
                tables.append(_Table(row[0], row[1], row[2]))
    return tables


async def _loss(conn: AsyncConnection[TupleRow], table: _Table, column: str | None) -> DataLoss:
    where = (
        sql.SQL("")
        if column is None
        else sql.SQL(" WHERE {} IS NOT NULL").format(sql.Identifier(column))
    )
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}{} LIMIT {}) AS capped").format(
        sql.Identifier(table.schema, table.name), where, sql.Literal(_COUNT_CAP + 1)
    )
    try:
        async with conn.transaction():
            # Off, row-level security makes a hidden row an error instead of a wrong count.
            await conn.execute("SET LOCAL row_security = off")
            await conn.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(_COUNT_TIMEOUT))
            )
            await conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_TRIAL_LOCK_TIMEOUT))
            )
            row = await (await conn.execute(query)).fetchone()
    except psycopg.Error:
        return DataLoss(table.label, column)
    rows = int(row[0]) if row is not None else 0
    if rows > _COUNT_CAP:
        return DataLoss(table.label, column, _COUNT_CAP, at_least=True)
    return DataLoss(table.label, column, rows)
