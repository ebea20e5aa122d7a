"""What one tenant sees: its stores, plus the query and transaction API every view shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from agency_data.audit import AuditTrail
from agency_data.cache.backend import CacheBackend
from agency_data.cache.store import Cache
from agency_data.config import DataLayerConfig
from agency_data.coord.locks import Lock
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.sessions import SessionStore
from agency_data.errors import BackendUnavailable, ValidationError
from agency_data.events import Events
from agency_data.inputs import check_bool
from agency_data.memory import Memory
from agency_data.observability import Telemetry, observed
from agency_data.outbox.changes import ChangeFeed, FeedRuntime
from agency_data.postgres.agents import AgentStore
from agency_data.postgres.database import Database, Isolation, Operation, Params, Query, Transaction
from agency_data.redis.client import RedisClient
from agency_data.redis.keys import Keys
from agency_data.security.export import export_rows
from agency_data.security.masking import Masker
from agency_data.tasks import TaskRuntime, TaskStore
from agency_data.vectors.catalog import Catalog
from agency_data.vectors.store import EmbeddingStore

__all__ = ["QueryMethods", "TenantScope", "database_of"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class QueryMethods(ABC):
    """SQL and transactions (the design's executeQuery / executeTransaction), for any view.

    Your SQL may leave session state behind (a setting, a temporary table, a prepared
    statement), so its connection is reset before anyone else uses it: one round trip more
    than the library's own calls, which leave none.
    """

    @abstractmethod
    def _database(self) -> Database: ...

    # What the query methods are timed into (see agency_data.observability.observed).
    _telemetry: Telemetry

    @observed("execute")
    async def execute(
        self, query: Query, params: Params = None, *, timeout: float | None = None
    ) -> int:
        """Run a statement with bind parameters; return the number of rows it affected."""
        return await self._database().as_raw().execute(query, params, timeout=timeout)

    @overload
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[dict[str, Any]]: ...
    @overload
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[M]: ...
    async def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[dict[str, Any]] | list[M]:
        """All rows of a query, as dicts or as instances of a pydantic ``model``.

        ``replica``: the query only reads and may see data up to ``postgresql.max_replica_lag``
        seconds old, so a read replica may serve it (``consistent``: one that has replayed
        every commit acknowledged so far). See :mod:`agency_data.postgres.replicas`.
        """
        return await self._fetch(query, params, model, timeout, _routing(replica, consistent))

    # Timed apart from the overloaded signature, which a wrapper's cannot match.
    @observed("fetch")
    async def _fetch(
        self,
        query: Query,
        params: Params,
        model: type[M] | None,
        timeout: float | None,
        routing: bool | None,
    ) -> list[dict[str, Any]] | list[M]:
        return await _routed(
            self._database().as_raw(),
            routing,
            lambda on: on.fetch(query, params, model=model, timeout=timeout),
        )

    @overload
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> dict[str, Any] | None: ...
    @overload
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> M | None: ...
    async def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> dict[str, Any] | M | None:
        """The first row of a query, or None. ``replica``, ``consistent``: as :meth:`fetch`."""
        return await self._fetch_one(query, params, model, timeout, _routing(replica, consistent))

    @observed("fetch_one")
    async def _fetch_one(
        self,
        query: Query,
        params: Params,
        model: type[M] | None,
        timeout: float | None,
        routing: bool | None,
    ) -> dict[str, Any] | M | None:
        return await _routed(
            self._database().as_raw(),
            routing,
            lambda on: on.fetch_one(query, params, model=model, timeout=timeout),
        )

    @observed("fetch_value")
    async def fetch_value(
        self,
        query: Query,
        params: Params = None,
        *,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> Any:
        """The first column of the first row, or None. ``replica``, ``consistent``: as
        :meth:`fetch`."""
        return await _routed(
            self._database().as_raw(),
            _routing(replica, consistent),
            lambda on: on.fetch_value(query, params, timeout=timeout),
        )

    @asynccontextmanager
    async def transaction(
        self,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        consistent: bool = False,
    ) -> AsyncIterator[Transaction]:
        """``async with dl.transaction() as tx:`` every store call inside joins it.

        Nested blocks are savepoints. ``tx.on_commit(hook)`` runs ``hook`` only after the
        outermost commit. A serialization conflict inside this form raises; use
        :meth:`run_in_transaction` to have it retried. A ``readonly`` transaction runs on a
        read replica when one is configured and close enough behind (``consistent``: one that
        has replayed every commit acknowledged so far).
        """
        async with self._database().transaction(
            isolation=isolation, readonly=readonly, consistent=consistent
        ) as tx:
            yield tx

    async def run_in_transaction(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> T:
        """Run ``fn(tx)`` in a transaction, retried with backoff on conflicts and deadlocks."""
        return await self._database().run_in_transaction(fn, isolation=isolation, retries=retries)

    async def execute_transaction(
        self,
        operations: Iterable[Operation],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> list[Any]:
        """Run ``(sql, params)`` pairs or ``async fn(tx)`` callables atomically; return each result."""
        return (
            await self._database()
            .as_raw()
            .execute_transaction(operations, isolation=isolation, retries=retries)
        )


class TenantScope(QueryMethods):
    """The data layer as one tenant sees it: the same API, scoped to ``tenant_id``.

    PostgreSQL enforces the scope: every statement runs with the tenant named to the row-level
    security policies, so raw SQL through this view sees and changes only this tenant's rows
    (when the pool's role is not a superuser; see ``agency-data health``).
    """

    def __init__(
        self,
        db: Database,
        tenant_id: str,
        tasks: TaskRuntime,
        catalog: Catalog,
        config: DataLayerConfig,
        backend: CacheBackend,
        client: RedisClient,
        feed: FeedRuntime,
        *,
        masker: Masker | None = None,
    ) -> None:
        db = db.for_tenant(tenant_id)
        self._catalog = catalog
        self._masker = masker if masker is not None else Masker(())
        self._db = db
        self._telemetry = db.telemetry
        self._backend = backend
        self._keys = Keys(tenant_id)
        self.tenant_id = tenant_id
        self.cache = Cache(backend, tenant_id)
        self.agents = AgentStore(
            db, tenant_id, self.cache.with_namespace("records"), config.cache.record_ttl
        )
        self.tasks = TaskStore(db, tenant_id, tasks)
        self.audit = AuditTrail(db, tenant_id)
        self.embeddings = EmbeddingStore(db, catalog, tenant_id)
        telemetry = backend.telemetry
        self.sessions = SessionStore(
            backend.pipeline,
            self._keys,
            config.cache.default_ttl,
            telemetry=telemetry,
            tenant=tenant_id,
            notes=db.notes,
            cipher=db.cipher,
        )
        self.pubsub = PubSub(client, self._keys, telemetry=telemetry)
        self.streams = Streams(client, self._keys, telemetry=telemetry)
        # Row changes of the tracked tables, in commit order (agency_data.outbox.changes).
        self.changes = ChangeFeed(db, tenant_id, feed)
        # What the tenant's agents remember (agency_data.memory).
        self.memory = Memory(db, catalog, tenant_id, config.memory, self.changes)
        # Reads wait at most half the client's socket timeout, which would end them as errors.
        self.events = Events(
            client, self._keys, self.streams, block=min(1.0, config.redis.socket_timeout / 2)
        )

    async def aclose(self) -> None:
        """Wait for this tenant's reads and writes still gathered with other callers'."""
        await self.agents.aclose()
        await self.tasks.aclose()
        await self.embeddings.aclose()
        await self.memory.aclose()

    def lock(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        auto_renew: bool = False,
        holder: str | None = None,
    ) -> Lock:
        """A distributed lock (see :mod:`agency_data.coord.locks`); use ``async with``.

        ``holder`` (a :attr:`Lock.holder` token) makes a handle for that holder's grant, to
        extend or release it from another request or process."""
        if self._backend.scripts is None:
            raise BackendUnavailable(
                "locks need Redis, and this DataLayer has no Redis client", backend="redis"
            )
        return Lock(
            self._backend.scripts,
            self._keys,
            name,
            ttl=ttl,
            wait=wait,
            auto_renew=auto_renew,
            on_wait=self._backend.record_lock_wait,
            telemetry=self._backend.telemetry,
            holder=holder,
        )

    def export(
        self, source: str, *, masked: bool = True, batch_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row of ``source`` (``agents``, ``tasks`` or a collection's name) of this
        tenant, oldest first, as JSON-ready dicts; ``masked`` (the default) hides the values
        under ``masking.paths`` and masks every string by ``masking.rules``. Use ``async for``;
        see :mod:`agency_data.security.export`."""
        return export_rows(
            self._db,
            self._catalog,
            self.tenant_id,
            source,
            self._masker,
            masked=masked,
            batch_size=batch_size,
        )

    def _database(self) -> Database:
        return self._db


def database_of(scope: QueryMethods) -> Database:
    """The :class:`Database` a DataLayer or a tenant's view runs the library's own SQL on: its
    tenant, pool, retries and error translation, without the reset that callers' raw SQL
    needs. For the layer's integrations (LangChain, LangGraph), which store data of their own."""
    return scope._database()


def _routing(replica: bool, consistent: bool) -> bool | None:
    """None: the primary; else a replica may serve, consistent or not."""
    check_bool(replica, "replica")
    check_bool(consistent, "consistent")
    if consistent and not replica:
        raise ValidationError(
            "consistent=True applies to reads sent to a replica: pass replica=True too",
            field="consistent",
        )
    return consistent if replica else None


async def _routed(
    db: Database, routing: bool | None, call: Callable[[Database], Awaitable[T]]
) -> T:
    """``call`` on ``db`` (routing None), or as a read a replica may serve."""
    if routing is None:
        return await call(db)
    return await db.read(call, consistent=routing)
