"""LangGraph's long-term memory store (``BaseStore``) on agency-data.

Items live in the ``langgraph_store`` table (migration 0013), one row per (tenant, store name,
namespace, key), under row-level security: a store built from ``dl.tenant("a")`` sees and
writes only tenant a's items. With an ``index`` config, the store keeps the items' embeddings
in an agency-data collection named after the store, embedded by the config's ``embed``, and a
search with a ``query`` is a search of that collection's vector index, filtered there by
namespace prefix and the caller's filter, whose hits are then read back from the items.

``abatch`` is the one primitive: a batch's gets are one statement, its filter searches and
namespace listings go out with them in one round trip, and its puts (deduplicated, last one
wins) are one transaction: the items' rows, their old embeddings deleted and new ones stored,
all or nothing. Texts are embedded before that transaction opens, so a slow embedder never holds
a connection, and cancelling a call while it embeds writes nothing. Reads see the batch's
state before its puts, as in LangGraph's own stores. Inside ``async with dl.transaction():``
the store's reads and writes join the caller's transaction.

Concurrent single calls (``aget``, ``aput``, ``asearch``... and their sync twins from any
thread) gather into one batch per event-loop turn (:mod:`agency_data.batching`), as LangGraph's
async stores batch theirs; a call made while nothing else is in flight goes at once, alone.
A gathered call that its caller stops waiting for may still be written with the others.

Synchronous methods (``get``, ``put``, ... ``batch``) run the async ones on the event loop the
DataLayer runs on (through :class:`agency_data.sync.portal.Portal`); called on that loop's own
thread they raise :class:`UsageError` rather than wait forever, as LangGraph's async stores
refuse them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

from langgraph.store.base import (
    NOT_PROVIDED,
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    NamespacePath,
    NotProvided,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)

from agency_data.batching import GroupCommit
from agency_data.errors import (
    Conflict,
    EmbedderError,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.inputs import (
    as_items,
    check_bool,
    check_seconds,
)
from agency_data.integrations.bridge import reach
from agency_data.integrations.langgraph._store_batch import Batch, Plan, embed, merge, plan_ops
from agency_data.integrations.langgraph._store_input import (
    IndexSettings,
    InvalidNamespace,
    check_pattern,
    check_ttl,
    index_settings,
    ttl_settings,
)
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT
from agency_data.postgres.database import Database
from agency_data.postgres.errors import refused_a_row
from agency_data.scope import QueryMethods, TenantScope, database_of
from agency_data.sync.portal import Portal
from agency_data.vectors.catalog import check_name
from agency_data.vectors.collection import Collection

__all__ = ["AgencyStore", "InvalidNamespace"]

_log = logging.getLogger("agency_data.integrations.langgraph")
T = TypeVar("T")

MAX_OPS = 10_000
# Expired items deleted per statement by the sweeper (and their embeddings with them).
_SWEEP_CHUNK = 500
_DEFAULT_SWEEP_MINUTES = 5.0


class AgencyStore(BaseStore):
    """LangGraph's ``BaseStore`` (long-term memory) on agency-data, async and sync.

    Usage::

        async with DataLayer() as dl:
            store = AgencyStore(dl, index={"dims": 384, "embed": embeddings, "fields": ["text"]})
            await store.aput(("users", "u1", "memories"), "m1", {"text": "likes tea"})
            hits = await store.asearch(("users", "u1"), query="drinks", limit=3)
            graph = builder.compile(store=store)

        alice = AgencyStore(dl.tenant("alice"), index=...)   # only tenant alice's items

    ``index`` is LangGraph's ``IndexConfig`` (``dims``, ``embed``: an ``Embeddings``, a
    function of a list of texts, async or not, or a ``"provider:model"`` name when LangChain's
    ``init_embeddings`` is installed; ``fields``, default ``["$"]``), plus the Postgres store's
    ``distance_type`` (cosine, l2, inner_product) and ``ann_index_config`` (``kind`` hnsw, the
    default, ivfflat or flat; ``vector_type``). The collection, named ``name``, is created with
    its index by the first store built from the unscoped DataLayer; a tenant's view uses it.
    ``ttl`` is LangGraph's ``TTLConfig`` (minutes). ``portal`` is the way into the event loop
    the DataLayer runs on, for the sync methods: by default, the loop running when the store
    is made (give the synchronous DataLayer's portal when there is none).
    """

    supports_ttl: bool = True

    def __init__(
        self,
        layer: Any,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        name: str = "lg_store",
        portal: Portal | None = None,
    ) -> None:
        inner, self._portal = reach(
            layer, QueryMethods, "layer", portal, what="DataLayer or tenant view"
        )
        self.name = check_name(name)
        self._settings: IndexSettings | None = index_settings(index)
        self._ttl = ttl_settings(ttl)
        self.index_config = index
        self.ttl_config = ttl
        self._layer = inner if isinstance(inner, DataLayer) else None
        self._scope = inner if isinstance(inner, TenantScope) else None
        # The store's collection, once looked up: None while unknown; False when it does not
        # exist (a store without an index config then has no embeddings to keep in step).
        self._collection: Collection | Literal[False] | None = None
        self._ready = asyncio.Lock()
        # Concurrent single ops, gathered; a group that fails because of one op's values (a
        # constraint, an embedder refusing a text) is run again op by op, so that only that
        # op's caller gets the error.
        self._gathered: GroupCommit[Plan, Result] = GroupCommit(
            self._run_one, self._run_many, retry_alone=_own_fault
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_sweeping = asyncio.Event()

    # -- what it runs on -----------------------------------------------------------------------

    def _view(self) -> TenantScope:
        if self._scope is not None:
            return self._scope
        assert self._layer is not None
        return self._layer.tenant(DEFAULT_TENANT)

    @property
    def tenant(self) -> str:
        """The tenant whose items this store reads and writes."""
        return self._scope.tenant_id if self._scope is not None else DEFAULT_TENANT

    def _db(self) -> Database:
        # The tenant's own view (not the raw one that resets connections after the caller's
        # SQL): the layer's pool, ambient transactions, retries and error translation.
        return database_of(self._view())

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Awaited on the DataLayer's loop, wherever the caller's loop is.
        return await self._portal.acall(coro)

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.call(coro)

    async def _vectors(self) -> Collection | None:
        """The store's collection (created, without its index, when the store has an index
        config and was built from the unscoped DataLayer), or None when there is none."""
        if self._collection is None:
            async with self._ready:
                if self._collection is None:
                    self._collection = await self._find_collection()
        return self._collection or None

    async def _find_collection(self) -> Collection | Literal[False]:
        settings = self._settings
        view = self._view()
        if settings is None:
            found = view.embeddings.collection(self.name)
            try:
                await found.get_many([])  # no rows read: the catalog says whether it exists
            except NotFound:
                return False
            return found
        if self._layer is not None:
            await self._create_collection(self._layer, settings)
        collection = view.embeddings.collection(self.name, embedder=settings.embedder)
        try:
            await collection.get_many([])  # no rows read: the catalog says whether it exists
        except NotFound:
            raise NotFound(
                f"the store's collection {self.name!r} does not exist yet: a tenant's view "
                "cannot create collections, so build the store once from the unscoped "
                "DataLayer (AgencyStore(dl, index=...)), which creates it and its index",
                entity="collection",
                key=self.name,
            ) from None
        return collection

    async def _create_collection(self, layer: DataLayer, settings: IndexSettings) -> None:
        try:
            await layer.embeddings.create_collection(
                self.name, settings.dims, settings.metric, settings.storage, exist_ok=True
            )
        except Conflict as exc:
            raise Conflict(
                f"the store's collection {self.name!r} exists with another shape than the "
                f"index config's ({settings.dims} dimensions, {settings.metric}, "
                f"{settings.storage}): {exc}; give the store another name",
                field="index",
            ) from exc

    async def _build_index(self, layer: DataLayer, settings: IndexSettings) -> None:
        if self._db().in_transaction:
            raise UsageError(
                "asetup() builds the collection's index concurrently, which waits for every "
                "transaction open in the database to end, this one too: call it outside "
                "dl.transaction()"
            )
        options = dict(settings.options)
        if "nlist" in options:
            options["lists"] = options.pop("nlist")
        collection = layer.embeddings.collection(self.name)
        with contextlib.suppress(Conflict):  # it has an index already (or was given one)
            await collection.create_index(settings.kind, **options)  # type: ignore[arg-type]

    # -- set-up and lifecycle ------------------------------------------------------------------

    async def asetup(self) -> None:
        """Create the store's collection and build its ANN index (as LangGraph's Postgres
        store's ``setup()`` does) when the store has an index config and was built from the
        unscoped DataLayer; from a tenant's view, check that the collection exists. Call it
        once, outside any transaction. Without it the first write creates the collection, and
        searches scan it exactly until the index is built. The table comes with the
        DataLayer's migrations."""
        await self._call(self._setup())

    async def _setup(self) -> None:
        await self._vectors()
        settings, layer = self._settings, self._layer
        if settings is not None and layer is not None and settings.kind != "flat":
            await self._build_index(layer, settings)

    def setup(self) -> None:
        """:meth:`asetup`, from synchronous code."""
        self._sync(self.asetup())

    async def aclose(self) -> None:
        """Stop the TTL sweeper, if it runs, and wait for gathered calls still running. The
        DataLayer stays open (it is the caller's)."""
        await self.astop_ttl_sweeper()
        await self._call(self._gathered.aclose())

    def close(self) -> None:
        """:meth:`aclose`, from synchronous code."""
        self._sync(self.aclose())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the primitive -------------------------------------------------------------------------

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (GetOp, PutOp, SearchOp, ListNamespacesOp): one result per op, in
        order (None for a put). Every op is checked before anything runs."""
        checked = as_items(ops, "ops", most=MAX_OPS)
        return await self._call(self._execute(checked, "ops"))

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`abatch`, from synchronous code."""
        checked = as_items(ops, "ops", most=MAX_OPS)
        return self._sync(self._execute(checked, "ops"))

    async def _execute(self, ops: list[Any], name: str | None) -> list[Result]:
        # ``name``: "ops" for a batch (errors name ``ops[3].key``).
        return await self._run(self._plan(ops, name))

    def _plan(self, ops: list[Any], name: str | None) -> Plan:
        return plan_ops(ops, name, self._settings, self._db().config.max_json_bytes)

    async def _one(self, op: Op) -> Result:
        """One op of a convenience method: checked here, so that a bad one fails its own
        call; then, outside a transaction, gathered with other callers' ops of the moment
        into one batch (one round trip for their reads, one transaction for their writes)."""
        plan = self._plan([op], None)
        if self._db().in_transaction:
            return (await self._run(plan))[0]
        return await self._gathered.write(plan)

    async def _run_one(self, plan: Plan) -> Result:
        return (await self._run(plan))[0]

    async def _run_many(self, plans: list[Plan]) -> list[Result]:
        return await self._run(merge(plans))

    async def _run(self, plan: Plan) -> list[Result]:
        db = self._db()
        ranked = self._settings is not None and plan.ranked
        collection = await self._vectors() if ranked or plan.puts else None
        embedded, queries = await embed(plan, self._settings if collection else None)
        batch = self._batch(db)
        results: list[Result] = [None] * plan.size
        if not plan.puts:
            await batch.read(plan, queries, collection, results)
            return results

        async def apply(_: object) -> list[Result]:
            await batch.read(plan, queries, collection, results)
            if not await batch.write(plan, embedded, collection):
                # The collection went (dropped): nothing of it to keep in step any more.
                self._collection = False
            return results

        return await db.run_in_transaction(apply)

    def _batch(self, db: Database) -> Batch:
        omit = self._ttl is not None and self._ttl.omit_expired
        return Batch(db, self.tenant, self.name, self._settings, omit_expired=omit)

    # -- TTL -----------------------------------------------------------------------------------

    async def asweep_ttl(self) -> int:
        """Delete this tenant's expired items of the store, with their embeddings; return how
        many went. A batch of items in one transaction at a time; items a writer holds at
        that moment are left for the next sweep."""
        return await self._call(self._sweep())

    def sweep_ttl(self) -> int:
        """:meth:`asweep_ttl`, from synchronous code."""
        return self._sync(self.asweep_ttl())

    async def _sweep(self) -> int:
        collection = await self._vectors()
        db = self._db()
        batch = self._batch(db)
        swept = 0
        while True:
            count: int = await db.run_in_transaction(
                lambda _: batch.sweep(collection, _SWEEP_CHUNK)
            )
            swept += count
            if count < _SWEEP_CHUNK:
                return swept

    async def astart_ttl_sweeper(
        self, sweep_interval_minutes: float | None = None
    ) -> asyncio.Task[None]:
        """Sweep expired items every ``sweep_interval_minutes`` (default: the TTL config's
        ``sweep_interval_minutes``, else 5) in a background task on the DataLayer's loop, until
        :meth:`astop_ttl_sweeper`; return the task (already running: the same one)."""
        interval = check_ttl(sweep_interval_minutes, "sweep_interval_minutes")
        return await self._call(self._start_sweeper(interval))

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> None:
        """:meth:`astart_ttl_sweeper`, from synchronous code."""
        self._sync(self.astart_ttl_sweeper(sweep_interval_minutes))

    async def _start_sweeper(self, interval: float | None) -> asyncio.Task[None]:
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        configured = self._ttl.sweep_interval_minutes if self._ttl is not None else None
        minutes = interval or configured or _DEFAULT_SWEEP_MINUTES
        self._stop_sweeping.clear()
        self._sweeper = asyncio.create_task(self._sweep_every(minutes * 60.0))
        self._sweeper.set_name(f"agency-data-store-sweeper-{self.name}")
        return self._sweeper

    async def _sweep_every(self, seconds: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_sweeping.wait(), seconds)
            if self._stop_sweeping.is_set():
                return
            try:
                swept = await self._sweep()
            except Exception:  # noqa: BLE001 - the next round tries again; this one is logged
                _log.exception("the TTL sweep of store %s failed", self.name)
                continue
            if swept:
                _log.info("the TTL sweep of store %s deleted %d expired items", self.name, swept)

    async def astop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper; True once it has stopped (or was not running), False if it did
        not within ``timeout`` seconds (None: wait as long as it takes)."""
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout")
        return await self._call(self._stop_sweeper(timeout))

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """:meth:`astop_ttl_sweeper`, from synchronous code."""
        return self._sync(self.astop_ttl_sweeper(timeout))

    async def _stop_sweeper(self, timeout: float | None) -> bool:
        task = self._sweeper
        if task is None or task.done():
            return True
        self._stop_sweeping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return False
        self._sweeper = None
        return True

    # -- LangGraph's methods, checked here so that errors are agency-data's -------------------

    async def aget(
        self,
        namespace: tuple[str, ...],
        key: str,
        *,
        refresh_ttl: bool | None = None,
    ) -> Item | None:
        """The item at ``namespace`` / ``key``, or None; ``refresh_ttl`` (default: the TTL
        config's ``refresh_on_read``) restarts its TTL."""
        item = await self._call(self._one(GetOp(namespace, key, self._refresh(refresh_ttl))))
        return item if isinstance(item, Item) else None

    def get(
        self,
        namespace: tuple[str, ...],
        key: str,
        *,
        refresh_ttl: bool | None = None,
    ) -> Item | None:
        """:meth:`aget`, from synchronous code."""
        return self._sync(self.aget(namespace, key, refresh_ttl=refresh_ttl))

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """Items under ``namespace_prefix`` matching ``filter`` (equality, or ``$eq $ne $gt
        $gte $lt $lte`` on value fields); with a ``query`` (and an index config), nearest to
        it first, with their scores; else most recently updated first."""
        op = SearchOp(namespace_prefix, filter, limit, offset, query, self._refresh(refresh_ttl))
        return cast(list[SearchItem], await self._call(self._one(op)))

    def search(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """:meth:`asearch`, from synchronous code."""
        return self._sync(
            self.asearch(
                namespace_prefix,
                query=query,
                filter=filter,
                limit=limit,
                offset=offset,
                refresh_ttl=refresh_ttl,
            )
        )

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """Store ``value`` (a JSON-able dict) at ``namespace`` / ``key``, replacing what was
        there. ``index``: the fields to embed (default: the index config's), or False for none.
        ``ttl``: minutes it lives after its last write (or read), None for ever; by default
        the TTL config's ``default_ttl``."""
        if value is None:
            raise ValidationError(
                "value must be a dict; to delete an item use adelete()", field="value"
            )
        op = PutOp(namespace, key, value, index, self._default_ttl(ttl))
        await self._call(self._one(op))

    def put(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        """:meth:`aput`, from synchronous code."""
        self._sync(self.aput(namespace, key, value, index, ttl=ttl))

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        """Delete the item at ``namespace`` / ``key`` (and its embeddings), if there is one."""
        await self._call(self._one(PutOp(namespace, key, None)))

    def delete(self, namespace: tuple[str, ...], key: str) -> None:
        """:meth:`adelete`, from synchronous code."""
        self._sync(self.adelete(namespace, key))

    async def alist_namespaces(
        self,
        *,
        prefix: NamespacePath | None = None,
        suffix: NamespacePath | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """The namespaces that hold items, starting with ``prefix`` and ending with
        ``suffix`` (a ``"*"`` label matches any one), cut to ``max_depth`` labels, sorted."""
        conditions = []
        for kind, pattern in (("prefix", prefix), ("suffix", suffix)):
            labels = check_pattern(pattern, kind)
            if labels:
                conditions.append(MatchCondition(kind, labels))  # type: ignore[arg-type]
        op = ListNamespacesOp(tuple(conditions), max_depth, limit, offset)
        return cast(list[tuple[str, ...]], await self._call(self._one(op)))

    def list_namespaces(
        self,
        *,
        prefix: NamespacePath | None = None,
        suffix: NamespacePath | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """:meth:`alist_namespaces`, from synchronous code."""
        return self._sync(
            self.alist_namespaces(
                prefix=prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset
            )
        )

    def _refresh(self, refresh_ttl: bool | None) -> bool:
        if refresh_ttl is None:
            return self._ttl.refresh_on_read if self._ttl is not None else True
        return check_bool(refresh_ttl, "refresh_ttl")

    def _default_ttl(self, ttl: float | NotProvided | None) -> float | None:
        if isinstance(ttl, NotProvided):
            return self._ttl.default_ttl if self._ttl is not None else None
        return check_ttl(ttl, "ttl")


def _own_fault(exc: Exception) -> bool:
    # What one op's values cause: run alone, only that op fails.
    return isinstance(exc, ValidationError | EmbedderError) or refused_a_row(exc)
