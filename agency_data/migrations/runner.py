"""Applying and rolling back migrations, one transaction each, under an advisory lock.

The runner holds a dedicated connection for the whole run: the session-level advisory lock lives
on it, so two migrators (processes or machines) never interleave; the second waits, then finds
the work done. A rollback's plan says what data it destroys (see ``_loss``), and with a backup
directory both directions write a backup first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Literal

import psycopg
import sqlparse
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from agency_data.audit.notes import SYSTEM_TRAIL
from agency_data.errors import MigrationChecksumMismatch, MigrationError
from agency_data.inputs import check_int
from agency_data.migrations._loader import load_migrations, resolve
from agency_data.migrations._loss import data_loss
from agency_data.migrations._model import (
    Migration,
    MigrationReport,
    MigrationSource,
    MigrationState,
    PlannedStep,
)
from agency_data.migrations.backup import create_backup, find_tool, prune_backups
from agency_data.postgres.errors import to_agency_error
from agency_data.security.roles import RoleNames, grant_privileges, use_owner_role

__all__ = ["MigrationRunner"]

_log = logging.getLogger("agency_data.migrations")

_ZERO = ("0", "zero", "base")


class _Applied:
    """A history row."""

    def __init__(self, key: str, checksum: str, applied_at: datetime) -> None:
        self.key = key
        self.checksum = checksum
        self.applied_at = applied_at


class MigrationRunner:
    """Plans and runs the migrations of ``sources`` against the database of ``conninfo``.

    With ``backup_dir``, a non-dry ``up`` or ``down`` that has work to do writes a ``pg_dump``
    backup there first, and keeps the newest ``keep_backups`` of this database's (0: all).
    """

    def __init__(
        self,
        conninfo: str,
        sources: Sequence[MigrationSource],
        *,
        table_name: str = "agency_data_migrations",
        lock_timeout: float = 60.0,
        backup_dir: Path | None = None,
        pg_dump_path: Path | None = None,
        role: RoleNames | None = None,
        keep_backups: int = 5,
    ) -> None:
        self.conninfo = conninfo
        self.role = role
        self.sources: list[MigrationSource] = list(sources)
        self.table = sql.Identifier(table_name)
        self.table_name = table_name
        self.lock_timeout = lock_timeout
        self.backup_dir = backup_dir
        self.pg_dump_path = pg_dump_path
        self.keep_backups = check_int(keep_backups, "keep_backups", 0, 1_000_000)
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"agency_data:{table_name}".encode()).digest()[:8], "big", signed=True
        )

    def migrations(self) -> list[Migration]:
        """Every registered migration, in the order ``up`` applies them."""
        return load_migrations(self.sources)

    async def status(self) -> list[MigrationState]:
        """Each migration's state: pending, applied, changed (file edited since) or missing."""
        migrations = self.migrations()
        async with self._connect() as conn:
            applied = await self._history(conn)
        return _states(migrations, applied)

    async def up(self, *, to: str | None = None, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations (up to and including ``to``), backing up first if configured."""
        migrations = self.migrations()
        report = MigrationReport(direction="up", dry_run=dry_run)
        started = time.perf_counter()
        async with self._connect() as conn, self._locked(conn, take=not dry_run):
            applied = await self._history(conn)
            _refuse_changed(migrations, applied)
            wanted = (
                migrations
                if to is None
                else _with_dependencies(resolve(to, migrations), migrations)
            )
            pending = [m for m in wanted if m.key not in applied]
            report.steps = [PlannedStep(m.key, "up", m.up_sql, m.transactional) for m in pending]
            if dry_run:
                report.seconds = time.perf_counter() - started
                return report
            try:
                if pending and self.backup_dir is not None:
                    report.backup_file = await self._backup(conn)
                if pending:
                    await self._ensure_history_table(conn)
                for migration in pending:
                    await self._apply(conn, migration)
                    report.applied.append(migration.key)
            finally:
                # Also after a failed migration, and when nothing was pending: the tables
                # made so far must not stay writable by the application role.
                if not conn.closed:
                    await self._grant(conn)
        report.seconds = time.perf_counter() - started
        return report

    async def down(
        self,
        *,
        to: str | None = None,
        steps: int | None = None,
        dry_run: bool = False,
        expect: Sequence[str] | None = None,
    ) -> MigrationReport:
        """Roll back the last ``steps`` migrations, or every one applied after ``to``.

        ``to="0"`` rolls back everything. With neither argument, one step is rolled back. Each
        planned step's ``data_loss`` names the tables and columns it destroys, with their rows
        (worked out in a transaction that is rolled back). ``expect``: the keys of a plan shown
        to someone earlier (a dry run's); if the plan differs now, nothing is rolled back.
        """
        if to is not None and steps is not None:
            raise MigrationError("give either to or steps, not both")
        if steps is not None and steps < 1:
            raise MigrationError(f"steps must be at least 1, not {steps}")
        migrations = self.migrations()
        by_key = {m.key: m for m in migrations}
        report = MigrationReport(direction="down", dry_run=dry_run)
        started = time.perf_counter()
        async with self._connect() as conn, self._locked(conn, take=not dry_run):
            applied = await self._history(conn)
            _refuse_changed(migrations, applied)
            newest_first = list(reversed(applied))
            if to is not None and to.lower() not in _ZERO:
                target = resolve(to, migrations)
                if target.key not in applied:
                    raise MigrationError(
                        f"{target.key} is not applied, so there is nothing to roll back to"
                    )
                newest_first = newest_first[: newest_first.index(target.key)]
            elif to is None:
                newest_first = newest_first[: steps or 1]
            rollback: list[Migration] = []
            for key in newest_first:
                migration = by_key.get(key)
                if migration is None:
                    raise MigrationError(
                        f"{key} is applied but no file for it is registered, so it cannot be "
                        "rolled back; register its directory again",
                        migration=key,
                    )
                if migration.down_sql is None:
                    raise MigrationError(
                        f"{key} has no down step ({migration.path.name.replace('.up.', '.down.')}), "
                        "so it cannot be rolled back",
                        migration=key,
                    )
                rollback.append(migration)
            if expect is not None and [m.key for m in rollback] != list(expect):
                planned = ", ".join(m.key for m in rollback) or "nothing"
                raise MigrationError(
                    f"the rollback plan changed since it was shown (it is now: {planned}), "
                    "perhaps another migrator ran; nothing was rolled back. Run the command again"
                )
            losses = await data_loss(conn, rollback)
            report.steps = [
                PlannedStep(
                    m.key,
                    "down",
                    m.down_sql or "",
                    m.transactional,
                    losses[m.key].losses,
                    losses[m.key].note,
                )
                for m in rollback
            ]
            if dry_run:
                report.seconds = time.perf_counter() - started
                return report
            if rollback and self.backup_dir is not None:
                report.backup_file = await self._backup(conn)
            for migration in rollback:
                await self._revert(conn, migration)
                report.applied.append(migration.key)
        report.seconds = time.perf_counter() - started
        return report

    # -- I/O ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        try:
            conn = await AsyncConnection.connect(self.conninfo, autocommit=True)
            if self.role is not None:
                # What migrations create belongs to the owner role, whoever logs in.
                await use_owner_role(conn, self.role.owner)
        except psycopg.Error as exc:
            raise to_agency_error(exc, "connecting to migrate") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            # Reading the history, creating its table: the role may lack the rights.
            raise MigrationError(
                f"migrating failed: {to_agency_error(exc)}; migrations run as the owner role "
                "(postgresql.admin_dsn, or postgresql.dsn when there is none)"
            ) from exc
        finally:
            await conn.close()

    @asynccontextmanager
    async def _locked(self, conn: AsyncConnection[TupleRow], *, take: bool) -> AsyncIterator[None]:
        if not take:
            yield
            return
        try:
            await conn.execute(
                sql.SQL("SET lock_timeout = {}").format(
                    sql.Literal(f"{int(self.lock_timeout * 1000)}ms")
                )
            )
            await conn.execute("SELECT pg_advisory_lock(%s)", [self._lock_key])
            await conn.execute("SET lock_timeout = 0")
        except psycopg.errors.LockNotAvailable as exc:
            raise MigrationError(
                f"another migrator held the migration lock for over {self.lock_timeout:.0f} s; "
                "wait for it to finish, or raise migration.lock_timeout"
            ) from exc
        try:
            yield
        finally:
            # A broken connection has already dropped the lock along with its session.
            if not conn.closed:
                with suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock(%s)", [self._lock_key])

    async def _grant(self, conn: AsyncConnection[TupleRow]) -> None:
        # New tables reach the application and read-only roles by default privileges; the
        # history and the collections catalog must then be taken back from the application.
        if self.role is None:
            return
        cursor = await conn.execute(
            "SELECT current_user = %s AND EXISTS (SELECT FROM pg_roles WHERE rolname = %s) "
            "AND EXISTS (SELECT FROM pg_roles WHERE rolname = %s)",
            [self.role.owner, self.role.app, self.role.readonly],
        )
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return
        try:
            await grant_privileges(conn, self.role, migrations_table=self.table_name)
        except psycopg.Error as exc:
            raise MigrationError(
                f"granting the roles their privileges failed: {to_agency_error(exc)}"
            ) from exc

    async def _history(self, conn: AsyncConnection[TupleRow]) -> dict[str, _Applied]:
        exists = await (
            await conn.execute("SELECT to_regclass(%s)", [self.table.as_string(conn)])
        ).fetchone()
        if exists is None or exists[0] is None:
            return {}
        cursor = await conn.execute(
            sql.SQL("SELECT id, checksum, applied_at FROM {} ORDER BY applied_order").format(
                self.table
            )
        )
        return {row[0]: _Applied(row[0], row[1], row[2]) for row in await cursor.fetchall()}

    async def _ensure_history_table(self, conn: AsyncConnection[TupleRow]) -> None:
        await conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                    id            text PRIMARY KEY,
                    checksum      text NOT NULL,
                    applied_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
                    execution_ms  integer NOT NULL,
                    applied_order bigserial NOT NULL
                )"""
            ).format(self.table)
        )

    async def _apply(self, conn: AsyncConnection[TupleRow], migration: Migration) -> None:
        _log.info("applying %s", migration.key)
        started = time.perf_counter()
        record = sql.SQL("INSERT INTO {} (id, checksum, execution_ms) VALUES (%s, %s, %s)").format(
            self.table
        )
        try:
            if migration.transactional:
                async with conn.transaction():
                    await conn.execute(migration.up_sql)
                    elapsed = int((time.perf_counter() - started) * 1000)
                    await conn.execute(record, [migration.key, migration.checksum, elapsed])
                    await _audit(conn, "migration.up", migration)
            else:
                await _one_by_one(conn, migration, "up", migration.up_sql)
                elapsed = int((time.perf_counter() - started) * 1000)
                await conn.execute(record, [migration.key, migration.checksum, elapsed])
                await _audit(conn, "migration.up", migration)
        except psycopg.Error as exc:
            raise _failed(migration, "up", exc) from exc

    async def _revert(self, conn: AsyncConnection[TupleRow], migration: Migration) -> None:
        _log.info("rolling back %s", migration.key)
        forget = sql.SQL("DELETE FROM {} WHERE id = %s").format(self.table)
        down_sql = migration.down_sql or ""
        try:
            if migration.transactional:
                async with conn.transaction():
                    await conn.execute(down_sql)
                    await conn.execute(forget, [migration.key])
                    await _audit(conn, "migration.down", migration)
            else:
                await _one_by_one(conn, migration, "down", down_sql)
                await conn.execute(forget, [migration.key])
                await _audit(conn, "migration.down", migration)
        except psycopg.Error as exc:
            raise _failed(migration, "down", exc) from exc

    async def _backup(self, conn: AsyncConnection[TupleRow]) -> Path:
        assert self.backup_dir is not None
        server_major = conn.info.server_version // 10000
        tool = await find_tool("pg_dump", server_major, self.pg_dump_path)
        path = await create_backup(self.conninfo, self.backup_dir, tool)
        _log.info("backed up the database to %s before migrating", path)
        if self.keep_backups:
            # Pruned at once, not after success: each failed run would otherwise add one.
            prune_backups(self.backup_dir, self.conninfo, self.keep_backups)
        return path


def _states(migrations: Sequence[Migration], applied: dict[str, _Applied]) -> list[MigrationState]:
    known = {m.key for m in migrations}
    states: list[MigrationState] = []
    for migration in migrations:
        row = applied.get(migration.key)
        if row is None:
            states.append(MigrationState(migration.key, "pending"))
        else:
            state: Literal["applied", "changed"] = (
                "applied" if migration.accepts(row.checksum) else "changed"
            )
            states.append(MigrationState(migration.key, state, row.applied_at))
    states.extend(
        MigrationState(key, "missing", row.applied_at)
        for key, row in applied.items()
        if key not in known
    )
    return states


def _refuse_changed(migrations: Sequence[Migration], applied: dict[str, _Applied]) -> None:
    changed = [
        m.key for m in migrations if m.key in applied and not m.accepts(applied[m.key].checksum)
    ]
    if changed:
        raise MigrationChecksumMismatch(
            f"applied migrations were edited since they ran: {', '.join(changed)}. Applied "
            "migrations never run again; restore their files and put the change in a new migration",
            migration=changed[0],
        )


def _with_dependencies(target: Migration, migrations: Sequence[Migration]) -> list[Migration]:
    by_key = {m.key: m for m in migrations}
    needed: set[str] = set()
    stack = [target.key]
    while stack:
        key = stack.pop()
        if key not in needed:
            needed.add(key)
            stack.extend(by_key[key].depends)
    return [m for m in migrations if m.key in needed]


def _statements(script: str) -> list[str]:
    # Outside a transaction each statement must go on its own: PostgreSQL runs a multi-statement
    # query as one implicit transaction, which CREATE INDEX CONCURRENTLY refuses.
    pieces = (sqlparse.format(s, strip_comments=True).strip() for s in sqlparse.split(script))
    return [piece for piece in pieces if piece and piece != ";"]


async def _audit(conn: AsyncConnection[TupleRow], operation: str, migration: Migration) -> None:
    """Record the migration in the system audit trail, once the database has one (0010)."""
    appended = await conn.execute(
        "SELECT to_regprocedure('agency_data_audit_append(text, text, text, text, jsonb)')"
    )
    found = await appended.fetchone()
    if found is None or found[0] is None:
        return
    async with conn.transaction():
        await conn.execute("SELECT set_config('agency_data.tenant', %s, true)", [SYSTEM_TRAIL])
        await conn.execute(
            "SELECT agency_data_audit_append(%s, %s, 'migration', %s, %s::jsonb)",
            [SYSTEM_TRAIL, operation, migration.key, json.dumps({"checksum": migration.checksum})],
        )


async def _one_by_one(
    conn: AsyncConnection[TupleRow], migration: Migration, direction: str, script: str
) -> None:
    statements = _statements(script)
    for number, statement in enumerate(statements, 1):
        try:
            await conn.execute(statement)
        except psycopg.Error as exc:
            first_line = statement.strip().splitlines()[0]
            if len(first_line) > 120:
                first_line = first_line[:117] + "..."
            done = number - 1
            raise MigrationError(
                f"migration {migration.key} ({direction}) failed at statement {number} of "
                f"{len(statements)} ({first_line}): {to_agency_error(exc)}; it runs outside a "
                f"transaction, so the {done} statement{'' if done == 1 else 's'} before it "
                "took effect, and the migration is not recorded "
                f"as {'applied' if direction == 'up' else 'rolled back'}; its steps should use "
                "IF [NOT] EXISTS so that it can be run again",
                migration=migration.key,
            ) from exc


def _failed(migration: Migration, direction: str, exc: psycopg.Error) -> MigrationError:
    cause = to_agency_error(exc)
    if migration.transactional:
        outcome = "it was rolled back and the schema is as before"
    else:
        outcome = (
            "it runs outside a transaction, so the statements before the failing one stay "
            "applied; its steps should use IF [NOT] EXISTS so that it can be run again"
        )
    return MigrationError(
        f"migration {migration.key} ({direction}) failed: {cause}; {outcome}",
        migration=migration.key,
    )
