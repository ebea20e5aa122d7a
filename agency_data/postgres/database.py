"""Running SQL: bind parameters only, a per-call timeout, rows as dicts or models, transactions.

Inside ``async with db.transaction():`` every call made by the same task (and the store calls
built on this class) runs on the transaction's connection; outside, each call borrows a pooled
connection for its own duration. Nested transaction blocks become savepoints.

A database bound to a tenant (:meth:`Database.for_tenant`) names that tenant to PostgreSQL with
every statement it runs, as the transaction-local setting ``agency_data.tenant`` that the
row-level security policies compare each row's ``tenant_id`` with. The setting travels in the
same round trip as the statement (a pipeline, whose statements share one implicit transaction,
or the caller's), so no cache of "what the connection was told" can go stale after a rollback.

Raw SQL (the query methods of ``dl`` and ``dl.tenant(t)``, and ``tx.conn``) may leave session
state behind: temporary tables, settings, prepared statements, advisory locks. Such a
connection is reset (``DISCARD ALL``) before the pool hands it to anyone else.

Through PgBouncer in transaction mode (``postgresql.pgbouncer``), a connection has no session
of its own: the settings a direct connection gets at connect time (statement_timeout, time
zone, search_path, pgvector's iterative scans) go with the tenant, transaction-locally, into
every transaction, in the same round trip. Raw SQL must then leave no session state behind
(PgBouncer's own rule): it would stay on a server connection that other clients share.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from contextvars import ContextVar
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, LiteralString, TypeAlias, TypeVar, overload
from uuid import UUID

import psycopg
import pydantic
from psycopg import AsyncConnection, AsyncCursor, AsyncTransaction, IsolationLevel, sql
from psycopg.rows import DictRow
from pydantic import BaseModel

from agency_data.actor import ACTOR_SETTING, current_actor
from agency_data.audit.notes import AuditNotes
from agency_data.config import PostgresConfig
from agency_data.errors import SerializationFailure, UsageError, ValidationError
from agency_data.inputs import (
    as_items,
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_seconds,
    check_text,
    encode_json,
    first_problem,
    located,
)
from agency_data.models import DEFAULT_TENANT
from agency_data.observability.cursor import log_if_slow, untimed
from agency_data.observability.instrument import Telemetry
from agency_data.postgres.errors import to_agency_error, translate_errors
from agency_data.postgres.pool import (
    Pool,
    Setting,
    Setup,
    mark_dirty,
    set_config_statement,
    transaction_settings,
)
from agency_data.retry import Backoff
from agency_data.security.fields import FieldCipher

if TYPE_CHECKING:
    from agency_data.postgres.replicas import Replicas

__all__ = [
    "TENANT_SETTING",
    "Database",
    "Isolation",
    "Operation",
    "Params",
    "Query",
    "Transaction",
]

_log = logging.getLogger("agency_data.postgres")

Query: TypeAlias = LiteralString | sql.SQL | sql.Composed
Params: TypeAlias = Sequence[Any] | dict[str, Any] | None
Isolation: TypeAlias = Literal["read_committed", "repeatable_read", "serializable"]
Operation: TypeAlias = "tuple[Query, Params] | Callable[[Transaction], Awaitable[Any]]"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Hook: TypeAlias = Callable[[], Awaitable[None] | None]

# The setting the row-level security policies read (see agency_data_current_tenant()).
TENANT_SETTING: LiteralString = "agency_data.tenant"
_NO_NOTES = AuditNotes.off()
_NO_CIPHER = FieldCipher.off()
# Not an actor: what a transaction's actor is after a savepoint's rollback.
_UNKNOWN_ACTOR = object()
_SET_TENANT: LiteralString = "SELECT set_config('" + TENANT_SETTING + "', %s, true)"

_ISOLATION = {
    "read_committed": IsolationLevel.READ_COMMITTED,
    "repeatable_read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


class Transaction:
    """An open transaction (or savepoint, when nested): its connection and on-commit hooks."""

    def __init__(
        self, conn: AsyncConnection[DictRow], parent: Transaction | None, db: Database
    ) -> None:
        self._conn = conn
        self.parent = parent
        # The view that opened it: its tenant is the one tx.publish writes for.
        self._db = db
        self._open = True
        self._publishes = False
        # False for a read-only transaction on a read replica that had not been asked to
        # have replayed every commit acknowledged when it began (transaction(consistent=...)).
        self.consistent: bool = parent.consistent if parent is not None else True
        self._hooks: list[Hook] = []
        # Tasks that share the transaction (asyncio.gather inside it) take turns: a statement
        # and its tenant setting must not interleave with another task's.
        self._lock: asyncio.Lock = parent._lock if parent is not None else asyncio.Lock()
        # The actor the transaction last named to PostgreSQL (shared with its savepoints): a
        # statement made under another sends the new one first.
        self._actor: list[object] = parent._actor if parent is not None else [current_actor.get()]

    @property
    def conn(self) -> AsyncConnection[DictRow]:
        """The transaction's connection, for statements of your own (reset when returned)."""
        mark_dirty(self._conn)
        return self._conn

    @property
    def nested(self) -> bool:
        """True for a savepoint inside another transaction."""
        return self.parent is not None

    def on_commit(self, hook: Hook) -> None:
        """Run ``hook`` (sync or async) after the outermost transaction commits; never on rollback."""
        self._hooks.append(hook)

    async def publish(self, destination: str, message: Any, *, kind: str = "stream") -> UUID:
        """Publish ``message`` (JSON-shaped) to a Redis stream (or, ``kind="channel"``, a
        pub/sub channel) of this transaction's tenant if and only if the transaction commits;
        return the id consumers deduplicate on.

        The message is written to the outbox in this transaction; the relay
        (:mod:`agency_data.outbox`) delivers committed messages at least once, in order,
        whatever happens to Redis or to this process after the commit.
        """
        if not self._open:
            raise UsageError(
                "this transaction has ended: publish inside its `async with` block, or use "
                "dl.streams.publish for a message of no transaction"
            )
        current = self._db._current.get()
        while current is not None and current is not self:
            current = current.parent
        if current is None:
            # The statement would join whatever the calling task has open, not this one.
            raise UsageError(
                "tx.publish was called from a task (or thread) that is not running this "
                "transaction: call it inside the transaction's block"
            )
        check_choice(kind, "kind", ("stream", "channel"))
        check_text(destination, "destination", max_length=256, max_bytes=256)
        if not destination:
            raise ValidationError("destination must not be empty", field="destination")
        document = encode_json(message, "message", self._db.config.max_json_bytes)
        message_id: UUID = await self._db.fetch_value(
            "INSERT INTO outbox (tenant_id, kind, destination, message) "
            "VALUES (%s, %s, %s, %s::json) RETURNING message_id",
            [self._db.tenant or DEFAULT_TENANT, kind, destination, document],
        )
        wake = self._db.outbox_wake
        if wake is not None and not self._publishes:
            self._publishes = True
            self.on_commit(wake)
        return message_id


class Database:
    """Query execution and transactions over the pool, for one tenant or for none."""

    def __init__(
        self,
        pool: Pool,
        config: PostgresConfig,
        *,
        tenant: str | None = None,
        setup: Setup | None = None,
        raw: bool = False,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.pool = pool
        # The DataLayer's instruments, which the stores built on this database record into.
        self.telemetry = telemetry if telemetry is not None else Telemetry.off()
        self.config = config
        self.tenant = tenant
        # A view for the caller's own SQL: its connections are reset before reuse.
        self.raw = raw
        # Whether statements name the tenant to PostgreSQL. Only the benchmark turns it off, to
        # measure what row-level security costs against tables without it.
        self.names_tenant = True
        self._setup = setup
        # The read replicas (agency_data.postgres.replicas), shared by every tenant's view.
        self.replicas: Replicas | None = None
        # A replica's views note the connections they have out, which the replica's checks
        # cut off when it stops answering (the reads then go to the primary).
        self.lent: set[AsyncConnection[DictRow]] | None = None
        self._raw_view: Database | None = None
        # What the layer records in the audit trail beyond the triggers (audit config).
        self.notes: AuditNotes = _NO_NOTES
        # Field encryption: rows of the models it names are opened as they load.
        self.cipher: FieldCipher = _NO_CIPHER
        # Tenants whose data lives in another region (residency): never scoped to here.
        self.foreign: frozenset[str] = frozenset()
        # Called once a transaction that published (tx.publish) commits: wakes the relay.
        self.outbox_wake: Hook | None = None
        self._current: ContextVar[Transaction | None] = ContextVar("agency_data_tx", default=None)

    def for_tenant(self, tenant: str | None, *, raw: bool = False) -> Database:
        """The same pool and ambient transaction, with every statement scoped to ``tenant``.

        ``raw`` marks a view that runs the caller's own SQL (see the module's docstring).
        A tenant pinned to another region is refused: its data is never read or written here.
        """
        if tenant is not None and tenant in self.foreign:
            raise ValidationError(
                f"tenant {tenant} is pinned to another region (residency.tenants): its data is "
                "never read or written in this one; reach it through dl.tenant(...)",
                field="tenant_id",
            )
        view = Database(
            self.pool,
            self.config,
            tenant=tenant,
            setup=self._setup,
            raw=raw,
            telemetry=self.telemetry,
        )
        view.names_tenant = self.names_tenant
        view.replicas = self.replicas
        view.notes = self.notes
        view.cipher = self.cipher
        view.foreign = self.foreign
        view.outbox_wake = self.outbox_wake
        # One transaction per task, whichever tenant's view opened it.
        view._current = self._current
        return view

    def outside_transactions(self, tenant: str | None) -> Database:
        """A view for ``tenant`` on the same pool that never joins the caller's transaction:
        what it writes stays even if that transaction rolls back."""
        view = Database(
            self.pool, self.config, tenant=tenant, setup=self._setup, telemetry=self.telemetry
        )
        view.names_tenant = self.names_tenant
        view.cipher = self.cipher
        return view

    def on_pool(self, pool: Pool, lent: set[AsyncConnection[DictRow]] | None = None) -> Database:
        """This view (tenant, raw) on another server's pool: a replica's, with no transaction
        of this one's and no replicas of its own; ``lent`` collects the connections it has
        out."""
        view = Database(
            pool, self.config, tenant=self.tenant, raw=self.raw, telemetry=self.telemetry
        )
        view.names_tenant = self.names_tenant
        view.notes = self.notes
        view.cipher = self.cipher
        view.lent = lent
        return view

    async def read(self, fn: Callable[[Database], Awaitable[T]], *, consistent: bool = False) -> T:
        """Run ``fn``, a read that tolerates lag, on a read replica's view if one fits.

        Inside a transaction, or with no replicas, ``fn`` gets this view. ``consistent``: only
        a replica that has replayed every commit acknowledged so far (or the primary).
        """
        replicas = self.replicas
        current = self._current.get()
        if current is not None:
            if consistent and not current.consistent:
                raise ValidationError(
                    "consistent=True inside a read-only transaction that runs on a read "
                    "replica: the transaction sees what the replica had replayed when it "
                    "began. Open it with transaction(readonly=True, consistent=True)",
                    field="consistent",
                )
            return await fn(self)
        if replicas is None:
            return await fn(self)
        return await replicas.run(self, fn, consistent)

    def as_raw(self) -> Database:
        """This view for the caller's own SQL: its connections are reset before reuse."""
        if self.raw:
            return self
        if self._raw_view is None:
            self._raw_view = self.for_tenant(self.tenant, raw=True)
        return self._raw_view

    # -- connections ---------------------------------------------------------------------------

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        """The current transaction's connection, or a pooled one for the block's duration."""
        current = self._current.get()
        if current is not None:
            if self.raw:
                mark_dirty(current._conn)
            yield current._conn
            return
        with translate_errors():
            async with self.pool.connection() as conn:
                if self.raw:
                    mark_dirty(conn)
                lent = self.lent
                if lent is None:
                    yield conn
                    return
                lent.add(conn)
                try:
                    yield conn
                finally:
                    lent.discard(conn)

    @asynccontextmanager
    async def dedicated(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of its own, outside the pool and set up like the pool's (long DDL)."""
        conn = await self.open_dedicated()
        try:
            with translate_errors():
                yield conn
        finally:
            await conn.close()

    async def open_dedicated(self, **kwargs: Any) -> AsyncConnection[Any]:
        """A connection of its own, set up like the pool's; the caller closes it.

        ``kwargs`` go to ``AsyncConnection.connect`` (``row_factory``, ``connect_timeout``).
        """
        try:
            conn = await AsyncConnection.connect(self.conninfo, autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise to_agency_error(exc, "opening a connection") from exc
        try:
            with translate_errors():
                if self._setup is not None:
                    await self._setup(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    @property
    def conninfo(self) -> str:
        """The pool's connection string, for the rare job that needs a connection of its own."""
        conninfo = self.pool.conninfo
        if not isinstance(conninfo, str):
            raise TypeError("the pool was built with a conninfo callable; no plain string to give")
        return conninfo

    def current_transaction(self) -> Transaction | None:
        """The calling task's open transaction, if any."""
        return self._current.get()

    @property
    def in_transaction(self) -> bool:
        """True inside a ``transaction()`` block of the calling task."""
        return self._current.get() is not None

    # -- queries -------------------------------------------------------------------------------

    async def execute(
        self, query: Query, params: Params = None, *, timeout: float | None = None
    ) -> int:
        """Run a statement; return the number of rows it affected."""
        async with self.connection() as conn:
            with translate_errors():
                cursor = await self._run(conn, query, params, timeout)
                return cursor.rowcount

    @overload
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        binary: bool = False,
    ) -> list[dict[str, Any]]: ...
    @overload
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        binary: bool = False,
    ) -> list[M]: ...
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        binary: bool = False,
    ) -> list[dict[str, Any]] | list[M]:
        """All rows, as dicts or as instances of ``model``.

        ``binary``: the rows come in PostgreSQL's binary format, which is several times
        cheaper to read for large bytea values (and arrays of them) than their hex text.
        """
        if model is not None:
            _check_model(model)
        async with self.connection() as conn:
            with translate_errors():
                cursor = await self._run(conn, query, params, timeout, binary)
                rows = await cursor.fetchall() if cursor.description else []
        if model is None:
            return rows
        await self.cipher.ensure_rows(model, rows, self.tenant)
        rows = self.cipher.open_rows(model, rows, self.tenant)
        with _rows_fit(model):
            return [model.model_validate(row) for row in rows]

    @overload
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        binary: bool = False,
    ) -> dict[str, Any] | None: ...
    @overload
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        binary: bool = False,
    ) -> M | None: ...
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        binary: bool = False,
    ) -> dict[str, Any] | M | None:
        """The first row (or None), as a dict or an instance of ``model``; ``binary`` as
        :meth:`fetch`."""
        if model is not None:
            _check_model(model)
        async with self.connection() as conn:
            with translate_errors():
                cursor = await self._run(conn, query, params, timeout, binary)
                row = await cursor.fetchone() if cursor.description else None
        if row is None or model is None:
            return row
        await self.cipher.ensure_rows(model, [row], self.tenant)
        (row,) = self.cipher.open_rows(model, [row], self.tenant)
        with _rows_fit(model):
            return model.model_validate(row)

    async def fetch_value(
        self, query: Query, params: Params = None, *, timeout: float | None = None
    ) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = await self.fetch_one(query, params, timeout=timeout)
        return None if row is None else next(iter(row.values()))

    async def enter_tenant(self, conn: AsyncConnection[DictRow]) -> None:
        """Name this view's tenant to ``conn``'s open transaction.

        For the few jobs that run statements on the transaction's connection themselves
        (COPY, server-side cursors); ordinary calls do this on their own. Through PgBouncer,
        the connection's settings go with it (the transaction may not be one of ours).
        """
        if (prelude := self._prelude(conn, False)) is not None:
            await untimed(conn, *prelude)

    def tenant_statement(self) -> tuple[LiteralString, list[str]] | None:
        """The statement that names this view's tenant, if it has one."""
        if self.tenant is None or not self.names_tenant:
            return None
        return _SET_TENANT, [self.tenant]

    def _settings(self, conn: AsyncConnection[Any], in_transaction: bool) -> list[Setting]:
        # What a statement must run with: the tenant, and (through PgBouncer) the connection's
        # settings, unless our transaction already carries them since its BEGIN.
        settings = [] if in_transaction else list(transaction_settings(conn))
        if self.tenant is not None and self.names_tenant:
            settings.insert(0, (TENANT_SETTING, self.tenant))
        actor = current_actor.get()
        if not in_transaction:
            if actor is not None:
                settings.append((ACTOR_SETTING, actor))
        elif (tx := self._current.get()) is not None and tx._actor[0] != actor:
            # as_actor() entered or left inside the transaction ("" names nobody).
            settings.append((ACTOR_SETTING, actor or ""))
            tx._actor[0] = actor
        return settings

    def _prelude(
        self, conn: AsyncConnection[Any], in_transaction: bool
    ) -> tuple[LiteralString, list[str]] | None:
        return _set_all(self._settings(conn, in_transaction))

    async def fetch_many(
        self,
        statements: Sequence[tuple[Query, Params]],
        *,
        settings: Sequence[tuple[str, str]] = (),
    ) -> list[list[dict[str, Any]]]:
        """The rows of several read-only queries, sent together in one round trip (a pipeline).

        ``settings`` (``(name, value)`` pairs, such as ``hnsw.ef_search``) hold for these
        queries only.
        """
        current = self._current.get()
        async with self.connection() as conn, _turn(current):
            prelude = self._prelude(conn, current is not None)
            with translate_errors():
                if prelude is None and not settings and len(statements) == 1:
                    cursor = await conn.execute(*statements[0])
                    return [await cursor.fetchall()]
                started = perf_counter()
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(conn.pipeline())
                    if prelude is not None:
                        await untimed(conn, *prelude)
                    if settings and current is not None:
                        # Inside the caller's transaction, a savepoint rolled back after the
                        # queries takes the settings away again (releasing it would not);
                        # outside, the pipeline's implicit transaction ends them, with no
                        # BEGIN or COMMIT to send.
                        await stack.enter_async_context(conn.transaction(force_rollback=True))
                    for name, value in settings:
                        await untimed(conn, "SELECT set_config(%s, %s, true)", [name, value])
                    if len(statements) == 1:
                        cursors = [await conn.execute(*statements[0])]
                    else:
                        # Their results all arrive at the pipeline's end: the batch is timed
                        # as one, lest a fast first statement be logged as slow.
                        cursors = [await untimed(conn, q, p) for q, p in statements]
                if len(statements) > 1:
                    log_if_slow(conn, [q for q, _ in statements], perf_counter() - started)
                return [await cursor.fetchall() for cursor in cursors]

    async def _run(
        self,
        conn: AsyncConnection[DictRow],
        query: Query,
        params: Params,
        timeout: float | None,
        binary: bool = False,
    ) -> AsyncCursor[DictRow]:
        if type(query) is not str or timeout is not None or type(params) not in _PLAIN_PARAMS:
            _check_query(query, params, timeout)
        current = self._current.get()
        if current is None:
            return await self._send(conn, False, query, params, timeout, binary)
        async with current._lock:
            return await self._send(conn, True, query, params, timeout, binary)

    async def _send(
        self,
        conn: AsyncConnection[DictRow],
        in_transaction: bool,
        query: Query,
        params: Params,
        timeout: float | None,
        binary: bool = False,
    ) -> AsyncCursor[DictRow]:
        settings = self._settings(conn, in_transaction)
        if timeout is None and not settings:
            return await conn.execute(query, params, binary=binary)
        if params is None and timeout is None and not in_transaction and not binary:
            # No parameters: the simple protocol, which runs several statements in one query
            # (pipelines cannot); one implicit transaction covers the settings and the query.
            prefix = sql.SQL("SELECT {}; ").format(
                sql.SQL(", ").join(
                    sql.SQL("set_config({}, {}, true)").format(
                        sql.Literal(name), sql.Literal(value)
                    )
                    for name, value in settings
                )
            )
            body = sql.SQL(query) if isinstance(query, str) else query
            cursor = await conn.execute(prefix + body)
            if not cursor.nextset():
                raise ValidationError("the query holds no statement", field="query")
            return cursor
        # Statements up to the pipeline's sync share one implicit transaction (or the caller's),
        # so the settings hold for the query: one round trip in all. Inside the caller's
        # transaction a timeout is put back as it was, with the value the server saved.
        async with conn.pipeline():
            if (prelude := _set_all(settings)) is not None:
                await untimed(conn, *prelude)
            if timeout is not None:
                await untimed(conn, _SAVE_AND_SET_TIMEOUT, [_millis(timeout)])
            cursor = await conn.execute(query, params, binary=binary)
            if timeout is not None and in_transaction:
                await untimed(conn, _RESTORE_TIMEOUT)
        return cursor

    # -- transactions --------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(
        self,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        consistent: bool = False,
        on_primary: bool = False,
    ) -> AsyncIterator[Transaction]:
        """A transaction, or a savepoint when one is already open in this task.

        A read-only one runs on a read replica when one fits (``consistent``: one that has
        replayed every commit acknowledged so far), except at serializable isolation, which a
        standby cannot give, or with ``on_primary``.
        """
        if isolation is not None:
            check_choice(isolation, "isolation", _ISOLATION)
        check_bool(readonly, "readonly")
        check_bool(consistent, "consistent")
        parent = self._current.get()
        async with AsyncExitStack() as stack:
            on_replica = False
            if parent is None:
                conn = None
                if (
                    readonly
                    and self.replicas is not None
                    and isolation != "serializable"
                    and not on_primary
                ):
                    conn = await self.replicas.borrow(stack, consistent)
                    on_replica = conn is not None
                if conn is None:
                    conn = await stack.enter_async_context(self.connection())
                await _prepare(conn, isolation, readonly)
                stack.push_async_callback(_unprepare, conn)
            else:
                conn = parent.conn
                if isolation is not None and isolation != "read_committed":
                    _log.debug(
                        "isolation %s of a nested block is the outer transaction's", isolation
                    )
            tx = Transaction(conn, parent, self)
            if on_replica:
                tx.consistent = consistent
            token = self._current.set(tx)
            try:
                with translate_errors():
                    async with AsyncExitStack() as block:
                        prelude = None if parent is not None else self._prelude(conn, False)
                        if prelude is not None:
                            # BEGIN and the tenant (and settings) in one round trip, so that
                            # even statements sent on tx.conn directly run as this tenant.
                            # (AsyncTransaction itself: conn.transaction() entered in a
                            # pipeline would keep the whole block in pipeline mode.)
                            async with conn.pipeline():
                                await block.enter_async_context(AsyncTransaction(conn))
                                await untimed(conn, *prelude)
                        elif parent is None:
                            await block.enter_async_context(conn.transaction())
                        else:
                            # Other tasks (a framework's threads, through the sync front end)
                            # may be sending statements of the same transaction: the savepoint
                            # is opened and closed in turn with them, as statements are.
                            await block.enter_async_context(_Savepoint(conn, parent._lock))
                        yield tx
            except BaseException:
                if parent is not None:
                    # A savepoint rolled back takes its settings with it: name the actor again.
                    tx._actor[0] = _UNKNOWN_ACTOR
                raise
            finally:
                tx._open = False
                self._current.reset(token)
        if parent is not None:
            parent._hooks.extend(tx._hooks)
        else:
            await _run_hooks(tx._hooks)

    async def run_in_transaction(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> T:
        """Run ``fn`` in a transaction, retrying it on serialization conflicts and deadlocks.

        ``fn`` must be safe to run again: it is called afresh for each attempt. Retries wait
        with jittered exponential backoff; after ``retries`` (default: the config's
        ``max_retries``) a :class:`SerializationFailure` says how many attempts were made.
        """
        check_callable(fn, "fn")
        if isolation is not None:
            check_choice(isolation, "isolation", _ISOLATION)
        if retries is not None:
            check_int(retries, "retries", 0, _MAX_RETRIES)
        if self.in_transaction:
            # Only the outermost transaction can be retried; a savepoint's conflict aborts it.
            async with self.transaction() as tx:
                return await _call(fn, tx)
        bound = self.config.max_retries if retries is None else retries
        attempt = 0
        backoff = Backoff(first=0.02, most=1.0, jitter=1.0)
        while True:
            try:
                async with self.transaction(isolation=isolation) as tx:
                    return await _call(fn, tx)
            except SerializationFailure as exc:
                if attempt >= bound:
                    raise SerializationFailure(
                        f"the transaction still conflicted after {attempt + 1} attempts: {exc}; "
                        "retry later, raise postgresql.max_retries, or reduce contention",
                        sqlstate=exc.sqlstate,
                    ) from exc
                attempt += 1
                await backoff.sleep()

    async def execute_transaction(
        self,
        operations: Iterable[Operation],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> list[Any]:
        """Run ``operations`` atomically; return each one's result in order.

        An operation is ``(sql, params)`` (its rows as dicts, or its row count when it returns
        none) or an async callable taking the :class:`Transaction`.
        """
        # Every operation is checked before the first runs, so a bad one runs none.
        checked: list[Operation] = as_items(operations, "operations")
        for index, operation in enumerate(checked):
            if callable(operation):
                check_callable(operation, f"operations[{index}]")
                continue
            if not isinstance(operation, tuple | list) or len(operation) != 2:
                raise ValidationError(
                    f"operations[{index}] is neither a (sql, params) pair nor an async callable",
                    field=f"operations[{index}]",
                )
            with located(f"operations[{index}]"):
                _check_query(operation[0], operation[1], None)

        async def run_all(tx: Transaction) -> list[Any]:
            results: list[Any] = []
            for index, operation in enumerate(checked):
                if callable(operation):
                    results.append(await _call(operation, tx, f"operations[{index}]"))
                    continue
                query, params = operation
                with translate_errors():
                    cursor = await self._run(tx._conn, query, params, None)
                    results.append(
                        await cursor.fetchall() if cursor.description else cursor.rowcount
                    )
            return results

        return await self.run_in_transaction(run_all, isolation=isolation, retries=retries)


_SAVE_AND_SET_TIMEOUT: LiteralString = (
    "SELECT set_config('agency_data.saved_timeout', current_setting('statement_timeout'), true), "
    "set_config('statement_timeout', %s, true)"
)
_RESTORE_TIMEOUT: LiteralString = (
    "SELECT set_config('statement_timeout', current_setting('agency_data.saved_timeout'), true)"
)


_PLAIN_PARAMS = frozenset({list, tuple, dict, type(None)})
_MAX_RETRIES = 100


def _set_all(settings: list[Setting]) -> tuple[LiteralString, list[str]] | None:
    """The statement that gives ``settings`` to the current transaction, or None for none."""
    if not settings:
        return None
    if len(settings) == 1 and settings[0][0] == TENANT_SETTING:
        # The tenant alone (every direct connection's case): the statement as it always was.
        return _SET_TENANT, [settings[0][1]]
    return set_config_statement(settings)


def _check_query(query: Any, params: Any, timeout: Any) -> None:
    if not isinstance(query, str | sql.Composable):
        raise ValidationError(
            f"query must be a string or psycopg.sql object, not {type(query).__name__}",
            field="query",
        )
    if params is not None and (
        isinstance(params, str | bytes | bytearray) or not isinstance(params, Sequence | Mapping)
    ):
        raise ValidationError(
            "params must be a list (or tuple) of values for %s placeholders, or a dict for "
            f"%(name)s ones, not {type(params).__name__}",
            field="params",
        )
    if timeout is not None:
        check_seconds(timeout, "timeout", low=0.001)


def _check_model(model: Any) -> None:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValidationError(
            "model must be a pydantic BaseModel subclass, not "
            + (f"the type {model.__name__}" if isinstance(model, type) else type(model).__name__),
            field="model",
        )


@contextmanager
def _rows_fit(model: type[BaseModel]) -> Iterator[None]:
    try:
        yield
    except pydantic.ValidationError as exc:
        where, problem = first_problem(exc)
        raise ValidationError(
            f"a row does not fit model {model.__name__} ({where}: {problem}); select "
            "columns named like its fields",
            field="model",
        ) from None


async def _call(fn: Callable[[Transaction], Awaitable[T]], tx: Transaction, field: str = "fn") -> T:
    result = fn(tx)
    if not inspect.isawaitable(result):
        raise ValidationError(
            f"{field} must be an async function (one returning an awaitable) so that it runs "
            f"inside the transaction; it returned {type(result).__name__}",
            field=field,
        )
    return await result


class _Savepoint:
    """``conn.transaction()`` nested in an open transaction, entered and left holding the
    transaction's lock (what its statements take in turn: see :func:`_turn`)."""

    def __init__(self, conn: AsyncConnection[DictRow], lock: asyncio.Lock) -> None:
        self._inner = conn.transaction()
        self._lock = lock

    async def __aenter__(self) -> None:
        async with self._lock:
            await self._inner.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        async with self._lock:
            return bool(await self._inner.__aexit__(exc_type, exc, tb))


@asynccontextmanager
async def _turn(current: Transaction | None) -> AsyncIterator[None]:
    if current is None:
        yield
        return
    async with current._lock:
        yield


def _millis(timeout: float) -> str:
    return f"{max(1, int(timeout * 1000))}ms"


async def _prepare(
    conn: AsyncConnection[DictRow], isolation: Isolation | None, readonly: bool
) -> None:
    # Setting these changes only the BEGIN that psycopg sends: no round trip of its own.
    await conn.set_isolation_level(_ISOLATION[isolation] if isolation else None)
    await conn.set_read_only(True if readonly else None)


async def _unprepare(conn: AsyncConnection[DictRow]) -> None:
    # A connection the server ended (a standby's recovery conflict, a restart) has nothing to
    # put back, and the error that ended the block says what happened.
    if conn.closed or conn.broken:
        return
    await _prepare(conn, None, False)


async def _run_hooks(hooks: list[Hook]) -> None:
    for hook in hooks:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001
            # The transaction is committed; a failing hook must not make it look failed.
            _log.exception("an on-commit hook failed")
