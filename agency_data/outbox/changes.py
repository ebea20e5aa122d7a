"""The change feed: row changes of chosen tables, per tenant, in commit order, by cursor.

A table is captured once it is tracked (``changes.tables`` or :meth:`Changes.track`): a trigger
writes each insert, update and delete, with the chosen columns' values before and after, to
``changes`` in the writer's own transaction, so a change exists if and only if its
transaction committed. Readers walk the commits in the order they became visible
(``commit_order``, migration 0016) from their cursor; row-level security keeps each tenant's
reader to its own changes.

Why triggers and a table, not logical decoding: decoding needs ``wal_level = logical`` (a
server restart) and a role with REPLICATION, which a PostgreSQL reached by DSN often does not
allow; its slot ignores row-level security, so every tenant's changes would pass through the
reader; and each consumer would need a slot of its own, which holds WAL back for as long as it
stops. A table serves any number of consumers from one copy, each tenant sees its own rows by
the same policies as everywhere else, and it is bounded by :class:`ChangesConfig`: changes are
kept ``keep`` seconds, and longer only for named consumers that have not read them, up to
``max_rows``; past that the oldest go, the consumers behind are marked lost (their next read
raises :class:`~agency_data.errors.ChangesLost`) and an alert fires. The cost is a row per
change written by the writer's transaction (measured by the bench's ``changes`` scenario).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Literal, LiteralString

from psycopg import sql
from pydantic import BaseModel

from agency_data.config import SQL_NAME, ChangesConfig
from agency_data.errors import (
    ChangesLost,
    DecryptionError,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.inputs import as_items, brief, check_int, check_tenant, check_text
from agency_data.models import DEFAULT_TENANT
from agency_data.postgres.database import Database
from agency_data.security.fields import sealed_key
from agency_data.tasks.wakeups import TaskWakeups

__all__ = [
    "RETAINED_SQL",
    "Change",
    "ChangeConsumer",
    "ChangeFeed",
    "Changes",
    "FeedStatus",
    "erase_changes",
]

_log = logging.getLogger("agency_data.changes")

_TRIGGER = "agency_data_changes"
_TRUNCATE_TRIGGER = "agency_data_changes_truncate"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CURSOR = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")
_LAST_ID = 2**63 - 1
# The pruner's advisory lock (any constant no other part of the layer uses).
_PRUNE_LOCK = 0x6167_6F64  # "agod"
# The layer's own bookkeeping, never captured (a change of changes would capture itself).
_INTERNAL = frozenset(
    {"changes", "change_consumers", "change_feed", "commit_order", "outbox", "outbox_relay"}
)
# Columns left out unless asked for: vectors are large, and their changes are the store's.
_BULKY_TYPES = ("vector", "halfvec", "sparsevec", "bit", "bytea")

# A page: the next commits from the cursor on, in order (at most %(walk)s of them, so a reader
# far behind, or of a tenant with few of the commits, walks the feed a stretch at a time), with
# their changes of the reader's tables and tenant; and, in the same snapshot, how far the walk
# went and how far the pruner has deleted. Driven by commit_order's primary key whatever the
# statistics say (a planner that thinks changes is small would scan it whole).
_PAGE_SQL = (
    "WITH walk AS MATERIALIZED (SELECT seq, xid, committed_at FROM commit_order "
    "WHERE seq >= %(seq)s ORDER BY seq LIMIT %(walk)s), "
    "span AS (SELECT max(seq) AS walked, count(*) AS commits FROM walk) "
    "SELECT span.walked, span.commits, (SELECT pruned_seq FROM change_feed) AS pruned, p.* "
    "FROM span LEFT JOIN LATERAL ("
    "SELECT w.seq, ch.* FROM walk w CROSS JOIN LATERAL ("
    # Its own ORDER BY keeps this a lookup by xid for each commit, not a join the planner
    # may turn into a scan of every change.
    "SELECT ch.id, ch.table_name, ch.op, ch.row_id, ch.old, ch.new, ch.tenant_id, "
    "w.committed_at FROM changes ch WHERE ch.xid = w.xid "
    "AND (w.seq > %(seq)s OR ch.id > %(id)s) AND ch.table_name = ANY(%(tables)s) "
    "ORDER BY ch.id LIMIT %(limit)s) ch ORDER BY w.seq, ch.id LIMIT %(limit)s) p ON true"
)

# The changes kept: the id span (two index probes) well under the cap; counted once it
# passes %(near)s (the span also counts the ids rolled-back writes used).
RETAINED_SQL: LiteralString = (
    "SELECT CASE WHEN s.span > %(near)s THEN (SELECT count(*) FROM changes) ELSE s.span END "
    "FROM (SELECT coalesce(max(id) - min(id) + 1, 0) AS span FROM changes) AS s"
)

# Named consumers (of the tenant, or of every tenant for the owner) and how many changes each
# would still read (row-level security counts a tenant's own).
_CONSUMERS_SQL = (
    "SELECT tenant_id, name, seq, change_id, updated_at, lost_at, "
    "(SELECT count(*) FROM commit_order c JOIN changes ch ON ch.xid = c.xid "
    " WHERE c.seq > k.seq OR (c.seq = k.seq AND ch.id > k.change_id)) AS behind "
    "FROM change_consumers k ORDER BY tenant_id, name"
)


class Change(BaseModel):
    """One row's insert, update or delete, as committed; ``cursor`` resumes after it."""

    cursor: str
    table: str
    # truncate: every row of the table (of this tenant) is gone; its id is "".
    op: Literal["insert", "update", "delete", "truncate"]
    # The row's key (its id) as text.
    id: str
    tenant_id: str
    # The tracked columns' values before (None for an insert) and after (None for a delete).
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    committed_at: datetime


class ChangeConsumer(BaseModel):
    """A named consumer's place in the feed."""

    tenant_id: str
    name: str
    cursor: str
    updated_at: datetime
    # Changes it had not read were pruned (changes.max_rows): its next read fails.
    lost_at: datetime | None = None
    # Changes after its cursor that it would read (of its tenant, any tracked table).
    behind: int = 0


class FeedStatus(BaseModel):
    """How full the change feed is, for monitoring (``dl.changes.status()``)."""

    retained: int
    max_rows: int
    consumers: int
    lost: int
    # The consumer furthest behind, and by how many changes.
    laggard: str | None = None
    lag: int = 0

    @property
    def fill(self) -> float:
        """retained / max_rows."""
        return self.retained / self.max_rows if self.max_rows else 0.0


async def erase_changes(db: Database, tenant: str, table: str, ids: list[str]) -> None:
    """Remove what the feed holds of rows being erased (in the caller's transaction): their
    changes go, but the deletes just captured stay, their values cleared, so that consumers
    still learn the rows are gone."""
    await db.execute(
        "WITH gone AS (DELETE FROM changes WHERE tenant_id = %(tenant)s "
        "AND table_name = %(table)s AND row_id = ANY(%(ids)s) AND xid <> pg_current_xact_id()) "
        "UPDATE changes SET old = NULL WHERE tenant_id = %(tenant)s AND table_name = %(table)s "
        "AND row_id = ANY(%(ids)s) AND xid = pg_current_xact_id()",
        {"tenant": tenant, "table": table, "ids": ids},
    )


def _cursor(seq: int, change_id: int) -> str:
    return f"{seq}-{change_id}"


def _parse_cursor(cursor: Any) -> tuple[int, int]:
    if isinstance(cursor, str) and (match := _CURSOR.match(cursor)):
        seq, change_id = int(match[1]), int(match[2])
        if seq <= _LAST_ID and change_id <= _LAST_ID:
            return seq, change_id
    raise ValidationError(
        f"since {brief(cursor)} is not a change-feed cursor: pass a Change's cursor, "
        "'now' (changes committed from now on) or 'start' (every change the feed keeps)",
        field="since",
    )


def _check_consumer(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            f"consumer {brief(name)} must be 1-128 letters, digits or _ . : -", field="consumer"
        )
    return name


def _check_table(table: Any) -> str:
    name = check_text(table, "table", max_length=63)
    if not re.match(SQL_NAME, name):
        raise ValidationError(
            f"table {brief(table)} is not a table name (lower-case letters, digits and _)",
            field="table",
        )
    return name


class _Reader:
    """One read of the feed: its position, its page of changes, its saves."""

    def __init__(
        self, feed: ChangeFeed, tables: list[str], consumer: str | None, batch: int
    ) -> None:
        self._feed = feed
        self._tables = tables
        self._consumer = consumer
        self._batch = batch
        self.position = (0, 0)
        self._saved = self.position
        self._through: int | None = None
        self.more = False

    async def start(self, since: Any) -> None:
        self.position = await self._feed._start(self._tables, since, self._consumer)
        self._saved = self.position

    async def page(self) -> list[tuple[tuple[int, int], Change]]:
        """The next changes, each with its position; ``more`` says whether the feed may have
        others right after."""
        seq, change_id = self.position
        walk = self._batch * 4
        rows = await self._feed._db.fetch(
            _PAGE_SQL,
            {
                "seq": seq,
                "id": change_id,
                "tables": self._tables,
                "limit": self._batch,
                "walk": walk,
            },
        )
        head = rows[0]
        # Commits up to pruned are gone: a position before the end of that commit has missed
        # some of them.
        if (seq, change_id) < (head["pruned"], _LAST_ID):
            raise self._feed._lost(_cursor(seq, change_id), self._consumer)
        found = [r for r in rows if r["id"] is not None]
        full = len(found) == self._batch
        self.more = full or head["commits"] == walk
        # Every change of the walked commits is in a page that is not full: once it has been
        # handed out, the position moves past those commits (also past commits with none).
        self._through = None if full else head["walked"]
        if not found:
            self.finish_page()
        await self._open_sealed(found)
        return [
            (
                (r["seq"], r["id"]),
                Change(
                    cursor=_cursor(r["seq"], r["id"]),
                    table=r["table_name"],
                    op=r["op"],
                    id=r["row_id"],
                    tenant_id=r["tenant_id"],
                    old=r["old"],
                    new=r["new"],
                    committed_at=r["committed_at"],
                ),
            )
            for r in found
        ]

    async def _open_sealed(self, rows: list[dict[str, Any]]) -> None:
        # Columns under encryption.fields were captured as stored: opened here, as every
        # other read of the layer opens them. A value whose key was destroyed (crypto-shredded)
        # comes as None rather than stopping the feed at its change.
        cipher = self._feed._db.cipher
        sealed = [
            (row, side, column, key_id)
            for row in rows
            for side in ("old", "new")
            for column, value in (row[side] or {}).items()
            if (key_id := sealed_key(value)) is not None
        ]
        if not sealed:
            return
        wanted: dict[str, set[str]] = {}
        for row, _, _, key_id in sealed:
            wanted.setdefault(row["tenant_id"], set()).add(key_id)
        for tenant, key_ids in wanted.items():
            await cipher.ensure(tenant, key_ids, write=False)
        for row, side, column, _ in sealed:
            try:
                row[side][column] = cipher.open(
                    row["tenant_id"], row["table_name"], column, row["row_id"], row[side][column]
                )
            except DecryptionError:
                row[side][column] = None

    def finish_page(self) -> None:
        """Every change of the page has been handed out: move past what it walked."""
        if self._through is not None and (self._through, _LAST_ID) > self.position:
            self.position = (self._through, _LAST_ID)

    async def save(self) -> None:
        if self._consumer is not None and self.position != self._saved:
            await self._feed._save(self._consumer, self.position)
            self._saved = self.position


class FeedRuntime:
    """What every tenant's feed shares: the config, the owner's database, the wake-ups."""

    def __init__(self, admin: Database, config: ChangesConfig, wakeups: TaskWakeups | None) -> None:
        self.admin = admin
        self.config = config
        self.wakeups = wakeups


class ChangeFeed:
    """One tenant's change feed (``dl.tenant(t).changes``): call it to read."""

    def __init__(self, db: Database, tenant_id: str, runtime: FeedRuntime) -> None:
        self._db = db
        self.tenant_id = tenant_id
        self._runtime = runtime

    def __call__(
        self,
        tables: Any,
        *,
        since: Any = None,
        consumer: str | None = None,
        batch: int = 500,
        wait: bool = True,
        tenant: str | None = None,
    ) -> AsyncIterator[Change]:
        """The changes of ``tables`` (tracked ones), in commit order; use ``async for``.

        ``since``: a :class:`Change`'s cursor (the changes after it), ``"now"`` (changes
        committed from now on; the default) or ``"start"`` (every change the feed keeps).
        ``consumer``: a name under which the feed keeps this reader's cursor (and the changes
        it has not read, up to ``changes.max_rows``); its saved cursor is where it resumes
        (``since`` is where a new one starts; drop it to start again elsewhere), saved as it
        reads: when it asks for the next change
        after a page, and when the iteration ends (``aclose()``, leaving
        ``contextlib.aclosing``, a cancelled wait), up to the change before the last one handed
        out (which may not have been dealt with). After a crash it resumes from the last save,
        so at most a page of changes comes again. ``wait=False`` stops at the end instead of
        waiting.
        """
        if tenant is not None and check_tenant(tenant) != self.tenant_id:
            return self._other(tenant)(
                tables, since=since, consumer=consumer, batch=batch, wait=wait
            )
        names = [_check_table(t) for t in as_items(tables, "tables", most=100)]
        if not names:
            raise ValidationError("tables must name at least one table", field="tables")
        if consumer is not None:
            _check_consumer(consumer)
        if since is not None and since not in ("now", "start"):
            _parse_cursor(since)
        check_int(batch, "batch", 1, 10_000)
        if not isinstance(wait, bool):
            raise ValidationError(f"wait must be True or False, not {brief(wait)}", field="wait")
        reader = _Reader(self, sorted(set(names)), consumer, batch)
        return self._read(reader, since, wait)

    async def _read(self, reader: _Reader, since: Any, wait: bool) -> AsyncIterator[Change]:
        await reader.start(since)
        try:
            while True:
                # Everything handed out so far has been dealt with: the caller asked for more.
                await reader.save()
                page = await reader.page()
                wakeups = self._runtime.wakeups
                if not page and reader.more:
                    continue  # commits with none of this reader's changes: walk on
                if not page and wait and wakeups is not None:
                    # Registered before looking again, so a commit in between wakes it.
                    async with wakeups.changes() as woken:
                        page = await reader.page()
                        if not page:
                            if not reader.more:
                                with contextlib.suppress(TimeoutError):
                                    await asyncio.wait_for(woken.wait(), self._runtime.config.poll)
                            continue
                elif not page and wait:
                    await asyncio.sleep(self._runtime.config.poll)
                    continue
                elif not page:
                    return
                for position, change in page:
                    yield change
                    reader.position = position
                reader.finish_page()
        finally:
            # Closed (aclose(), a cancelled wait, the end): saved up to the change before the
            # last one handed out, unless the connection is what failed.
            with contextlib.suppress(Exception):
                await asyncio.shield(reader.save())

    def _other(self, tenant: str) -> ChangeFeed:
        raise ValidationError(
            f"this feed is tenant {self.tenant_id}'s; read tenant {tenant}'s through "
            f"dl.tenant({tenant!r}).changes or dl.changes(..., tenant={tenant!r})",
            field="tenant",
        )

    async def position(self) -> str:
        """The cursor of now: reading from it gives the changes committed after this call.
        Take it before reading the tables whole, then read from it: nothing is missed between
        the two."""
        return _cursor(await self._top(), _LAST_ID)

    async def _top(self) -> int:
        # The pruner may have deleted every commit row (a feed quiet for longer than keep):
        # the pruned mark is then where "now" is.
        top: int = await self._db.fetch_value(
            "SELECT greatest(max(seq), (SELECT pruned_seq FROM change_feed)) FROM commit_order"
        )
        return top

    async def consumers(self) -> list[ChangeConsumer]:
        """This tenant's named consumers and how far behind each is."""
        rows = await self._db.fetch(_CONSUMERS_SQL)
        return [_consumer(r) for r in rows]

    async def drop(self, consumer: str) -> None:
        """Forget a named consumer (its cursor, and the changes kept for it)."""
        _check_consumer(consumer)
        gone = await self._db.execute(
            "DELETE FROM change_consumers WHERE tenant_id = %s AND name = %s",
            [self.tenant_id, consumer],
        )
        if not gone:
            raise NotFound(
                f"tenant {self.tenant_id} has no change-feed consumer named {consumer}",
                entity="change_consumer",
                key=consumer,
            )

    async def _start(self, tables: list[str], since: Any, consumer: str | None) -> tuple[int, int]:
        if missing := sorted(set(tables) - await _captured(self._db, tables)):
            raise UsageError(
                f"no changes of {', '.join(missing)} are captured: track it first "
                "(changes.tables in the config, or await dl.changes.track(table))"
            )
        if consumer is not None:
            row = await self._db.fetch_one(
                "SELECT seq, change_id, lost_at FROM change_consumers "
                "WHERE tenant_id = %s AND name = %s",
                [self.tenant_id, consumer],
            )
            if row is not None:
                if row["lost_at"] is not None:
                    raise self._lost(_cursor(row["seq"], row["change_id"]), consumer)
                return row["seq"], row["change_id"]
        top = await self._top()
        if since is None or since == "now":
            position = (top, _LAST_ID)
        elif since == "start":
            position = (await self._pruned(), _LAST_ID)
        else:
            position = _parse_cursor(since)
            if position[0] > top:
                raise ValidationError(
                    f"since {since} is ahead of this feed (its last commit is {top}): a cursor "
                    "of another database, or of a backup restored since?",
                    field="since",
                )
        if consumer is not None:
            saved = await self._db.fetch_value(
                "INSERT INTO change_consumers AS k (tenant_id, name, seq, change_id) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO UPDATE SET "
                "seq = excluded.seq, change_id = excluded.change_id, "
                "updated_at = clock_timestamp() WHERE k.lost_at IS NULL RETURNING true",
                [self.tenant_id, consumer, *position],
            )
            if not saved:
                raise self._lost(_cursor(*position), consumer)
        return position

    async def _save(self, consumer: str, position: tuple[int, int]) -> None:
        # Only an update: a consumer dropped while it reads stays dropped.
        row = await self._db.fetch_one(
            "UPDATE change_consumers SET seq = %s, change_id = %s, updated_at = clock_timestamp() "
            "WHERE tenant_id = %s AND name = %s RETURNING lost_at",
            [*position, self.tenant_id, consumer],
        )
        if row is None:
            raise NotFound(
                f"the change-feed consumer {consumer} of tenant {self.tenant_id} was dropped "
                "while it read; start it again to read on as a new consumer",
                entity="change_consumer",
                key=consumer,
            )
        if row["lost_at"] is not None:
            raise self._lost(_cursor(*position), consumer)

    async def _pruned(self) -> int:
        pruned: int = await self._db.fetch_value("SELECT pruned_seq FROM change_feed")
        return pruned

    def _feed_expression(self) -> str:
        if self.tenant_id == DEFAULT_TENANT:
            return "dl.changes"
        return f"dl.tenant({self.tenant_id!r}).changes"

    def _lost(self, cursor: str, consumer: str | None = None) -> ChangesLost:
        who = f"consumer {consumer} of tenant {self.tenant_id}" if consumer else f"cursor {cursor}"
        return ChangesLost(
            f"the change feed no longer keeps every change after {who}: some were pruned "
            f"(kept changes.keep = {self._runtime.config.keep:g} s, and for named consumers "
            f"up to changes.max_rows = {self._runtime.config.max_rows}). Reload what you "
            "derive from the changes and read on from since='now'"
            + (f" after {self._feed_expression()}.drop({consumer!r})" if consumer else ""),
            cursor=cursor,
        )


async def _captured(db: Database, tables: list[str]) -> set[str]:
    """Which of ``tables`` have the capture trigger."""
    rows = await db.fetch(
        "SELECT t.relname AS name FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid "
        "WHERE g.tgname = %s AND t.relname = ANY(%s)",
        [_TRIGGER, tables],
    )
    return {r["name"] for r in rows}


def _consumer(row: dict[str, Any]) -> ChangeConsumer:
    return ChangeConsumer(
        tenant_id=row["tenant_id"],
        name=row["name"],
        cursor=_cursor(row["seq"], row["change_id"]),
        updated_at=row["updated_at"],
        lost_at=row["lost_at"],
        behind=row["behind"],
    )


class Changes(ChangeFeed):
    """``dl.changes``: the default tenant's feed (``tenant=`` for another's), and what the
    owner manages: which tables are captured, pruning, the feed's fill."""

    def __init__(
        self,
        db: Database,
        runtime: FeedRuntime,
        tenant_feed: Callable[[str], ChangeFeed],
    ) -> None:
        super().__init__(db, DEFAULT_TENANT, runtime)
        self._tenant_feed = tenant_feed

    def _other(self, tenant: str) -> ChangeFeed:
        return self._tenant_feed(tenant)

    async def track(self, table: str, columns: Any = None) -> list[str]:
        """Capture ``table``'s changes from now on, with ``columns``' values (default: every
        column but vectors and bytes); the columns captured. Tracking again replaces them.
        Columns the table gains later are captured too, until it is tracked again."""
        _check_table(table)
        if table in _INTERNAL:
            raise ValidationError(f"{table} is the feed's own table", field="table")
        admin = self._runtime.admin
        described = await admin.fetch(
            "SELECT a.attname AS name, format_type(a.atttypid, NULL) AS type, "
            "a.attnotnull AS required, coalesce(a.attnum = ANY(i.indkey), false) AS key "
            "FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid "
            "LEFT JOIN pg_index i ON i.indrelid = t.oid AND i.indisprimary "
            "WHERE t.oid = to_regclass(quote_ident(%s)) AND t.relkind = 'r' "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [table],
        )
        if not described:
            raise NotFound(f"there is no table {table}", entity="table", key=table)
        names = [c["name"] for c in described]
        keys = [c["name"] for c in described if c["key"] and c["name"] != "tenant_id"]
        tenant_required = any(c["name"] == "tenant_id" and c["required"] for c in described)
        if not tenant_required or len(keys) != 1:
            raise ValidationError(
                f"{table} is not a table the feed can capture: it needs a tenant_id column "
                "(NOT NULL) and a primary key of one column besides tenant_id (agents, tasks, "
                "a collection's table)",
                field="table",
            )
        if columns is None:
            chosen = [c["name"] for c in described if c["type"] not in _BULKY_TYPES]
        else:
            chosen = [check_text(c, "columns", max_length=63) for c in as_items(columns, "columns")]
            if not chosen:
                raise ValidationError(
                    "columns must name at least one column (None: every column but vectors "
                    "and bytes)",
                    field="columns",
                )
            unknown = sorted(set(chosen) - set(names))
            if unknown:
                raise ValidationError(
                    f"{table} has no column {', '.join(unknown)}; its columns: {', '.join(names)}",
                    field="columns",
                )
        # The trigger is told what to leave out (see migration 0016): a column added to the
        # table later is captured too, until the table is tracked again.
        left_out = [n for n in names if n not in chosen]
        arguments = sql.SQL(", ").join(sql.Literal(c) for c in [keys[0], *left_out])
        async with admin.transaction():
            await admin.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION agency_data_capture_change({})"
                ).format(sql.Identifier(_TRIGGER), sql.Identifier(table), arguments)
            )
            await admin.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE TRUNCATE ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION agency_data_capture_truncate()"
                ).format(sql.Identifier(_TRUNCATE_TRIGGER), sql.Identifier(table))
            )
        return [n for n in names if n in chosen]

    async def untrack(self, table: str) -> bool:
        """Stop capturing ``table``'s changes (kept ones stay until pruned); whether it was."""
        _check_table(table)
        if not await _captured(self._runtime.admin, [table]):
            return False
        async with self._runtime.admin.transaction():
            for trigger in (_TRIGGER, _TRUNCATE_TRIGGER):
                await self._runtime.admin.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(trigger), sql.Identifier(table)
                    )
                )
        return True

    async def tracked(self) -> dict[str, list[str]]:
        """Each captured table and the columns whose values its changes carry."""
        rows = await self._runtime.admin.fetch(
            "SELECT t.relname AS name, g.tgargs AS args, array("
            " SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = t.oid "
            " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns "
            "FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid "
            "WHERE g.tgname = %s ORDER BY t.relname",
            [_TRIGGER],
        )
        tracked = {}
        for row in rows:
            # tgargs: each argument followed by a NUL byte; the key column, then those left out.
            left_out = {a.decode() for a in bytes(row["args"]).split(b"\0")[1:-1]}
            tracked[row["name"]] = [c for c in row["columns"] if c not in left_out]
        return tracked

    async def consumers(self) -> list[ChangeConsumer]:
        """Every tenant's named consumers and how far behind each is."""
        rows = await self._runtime.admin.fetch(_CONSUMERS_SQL)
        return [_consumer(r) for r in rows]

    async def status(self) -> FeedStatus:
        """How many changes the feed keeps against its cap, and who holds them back."""
        admin = self._runtime.admin
        retained = await admin.fetch_value(
            RETAINED_SQL, {"near": self._runtime.config.max_rows // 2}
        )
        consumers = await self.consumers()
        live = [c for c in consumers if c.lost_at is None]
        laggard = max(live, key=lambda c: c.behind, default=None)
        return FeedStatus(
            retained=retained,
            max_rows=self._runtime.config.max_rows,
            consumers=len(consumers),
            lost=len(consumers) - len(live),
            laggard=None if laggard is None else f"{laggard.tenant_id}/{laggard.name}",
            lag=0 if laggard is None else laggard.behind,
        )

    async def prune(self) -> int:
        """Delete the changes no one needs (older than ``keep`` and read by every named
        consumer) and, past ``max_rows``, the oldest whatever; how many went."""
        config = self._runtime.config
        admin = self._runtime.admin
        async with admin.transaction(isolation="read_committed"):
            # One pruner at a time (relays of several processes all prune).
            if not await admin.fetch_value("SELECT pg_try_advisory_xact_lock(%s)", [_PRUNE_LOCK]):
                return 0
            done = await admin.fetch_value("SELECT pruned_seq FROM change_feed FOR UPDATE")
            aged = await admin.fetch_value(
                "SELECT coalesce(max(seq), 0) FROM commit_order "
                "WHERE committed_at < clock_timestamp() - make_interval(secs => %s)",
                [config.keep],
            )
            needed = await admin.fetch_value(
                "SELECT min(seq) - 1 FROM change_consumers WHERE lost_at IS NULL"
            )
            target = aged if needed is None else min(aged, needed)
            # The cap: the commit of the change max_rows + 1 from the newest, and every one
            # before it, go (ids run roughly in commit order). Counted exactly only once the
            # id span says the cap may be passed.
            capped = 0
            span = await admin.fetch_value("SELECT coalesce(max(id) - min(id) + 1, 0) FROM changes")
            if span > config.max_rows:
                capped = await admin.fetch_value(
                    "SELECT coalesce(max(c.seq), 0) FROM commit_order c JOIN changes ch "
                    "ON ch.xid = c.xid WHERE ch.id = (SELECT id FROM changes "
                    "ORDER BY id DESC OFFSET %s LIMIT 1)",
                    [config.max_rows],
                )
            if capped > target:
                lost = await admin.fetch(
                    "UPDATE change_consumers SET lost_at = clock_timestamp() "
                    "WHERE lost_at IS NULL AND (seq, change_id) < (%s, %s) "
                    "RETURNING tenant_id, name",
                    [capped, _LAST_ID],
                )
                if lost:
                    _log.warning(
                        "the change feed reached changes.max_rows = %d: %d consumer(s) that "
                        "stopped reading lost changes and must start again (first: %s/%s)",
                        config.max_rows,
                        len(lost),
                        lost[0]["tenant_id"],
                        lost[0]["name"],
                    )
                target = capped
            if target <= done:
                return 0
            gone: int = await admin.execute(
                "DELETE FROM changes WHERE xid IN "
                "(SELECT xid FROM commit_order WHERE seq > %s AND seq <= %s)",
                [done, target],
            )
            await admin.execute("UPDATE change_feed SET pruned_seq = %s", [target])
        return gone
