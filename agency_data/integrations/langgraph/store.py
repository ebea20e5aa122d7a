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
from dataclasses import dataclass, field
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

from agency_data.errors import (
    Conflict,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.inputs import (
    MAX_PAGE,
    as_items,
    brief,
    check_bool,
    check_int,
    check_seconds,
    encode_json,
)
from agency_data.integrations.langgraph import _store_sql as q
from agency_data.integrations.langgraph._store_input import (
    Fields,
    IndexSettings,
    InvalidNamespace,
    check_fields,
    check_filter,
    check_key,
    check_namespace,
    check_pattern,
    check_ttl,
    index_settings,
    ttl_settings,
)
from agency_data.integrations.langgraph._store_vectors import (
    ENTITY_TYPE,
    Embedded,
    hit_of,
    item_ref,
    search_filter,
    texts_of,
)
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT
from agency_data.postgres.database import Database
from agency_data.scope import TenantScope
from agency_data.sync.portal import Portal
from agency_data.vectors.catalog import check_name
from agency_data.vectors.collection import Collection
from agency_data.vectors.filter_ast import FilterNode, parse_filter

__all__ = ["AgencyStore", "InvalidNamespace"]

_log = logging.getLogger("agency_data.integrations.langgraph")
T = TypeVar("T")

MAX_OFFSET = 1_000_000
MAX_LIST = 10_000
MAX_OPS = 10_000
_MAX_QUERY = 10_000
# Expired items deleted per statement by the sweeper (and their embeddings with them).
_SWEEP_CHUNK = 500
# Item references per delete of embeddings: within the filter language's $in limit.
_REF_CHUNK = 500
_DEFAULT_SWEEP_MINUTES = 5.0


@dataclass
class _Put:
    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any] | None
    encoded: str | None
    fields: Fields | Literal[False] | None
    ttl: float | None
    where: str

    @property
    def prefix(self) -> str:
        return q.prefix_of(self.namespace)


@dataclass
class _Search:
    index: int
    namespace: tuple[str, ...]
    filter: dict[str, Any]
    node: FilterNode | None
    limit: int
    offset: int
    query: str | None
    refresh: bool


@dataclass
class _Plan:
    """A batch, checked: each op's place in the results, grouped by kind."""

    size: int
    gets: list[tuple[int, str, str, bool]] = field(default_factory=list)
    searches: list[_Search] = field(default_factory=list)
    lists: list[tuple[int, list[tuple[str, tuple[str, ...]]], int | None, int, int]] = field(
        default_factory=list
    )
    # The last put of each item wins, as in LangGraph's stores.
    puts: dict[tuple[str, str], _Put] = field(default_factory=dict)


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
        layer: DataLayer | TenantScope,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        name: str = "lg_store",
        portal: Portal | None = None,
    ) -> None:
        if not isinstance(layer, DataLayer | TenantScope):
            raise ValidationError(
                f"layer must be a DataLayer or a tenant's view of one (dl.tenant(...)), not "
                f"{brief(layer)}",
                field="layer",
            )
        self.name = check_name(name)
        self._settings: IndexSettings | None = index_settings(index)
        self._ttl = ttl_settings(ttl)
        self.index_config = index
        self.ttl_config = ttl
        if portal is None:
            try:
                portal = Portal.of(asyncio.get_running_loop())
            except RuntimeError:
                raise UsageError(
                    "AgencyStore needs the event loop its DataLayer runs on: make it inside "
                    "that loop (in async code), or pass portal= (the synchronous DataLayer's)"
                ) from None
        elif not isinstance(portal, Portal):
            raise ValidationError(f"portal must be a Portal, not {brief(portal)}", field="portal")
        self._portal = portal
        self._layer = layer if isinstance(layer, DataLayer) else None
        self._scope = layer if isinstance(layer, TenantScope) else None
        # The store's collection, once looked up: None while unknown; False when it does not
        # exist (a store without an index config then has no embeddings to keep in step).
        self._collection: Collection | Literal[False] | None = None
        self._ready = asyncio.Lock()
        # The unscoped layer's store builds the collection's ANN index (see _vectors).
        self._index_pending = (
            self._settings is not None and self._layer is not None and self._settings.kind != "flat"
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
        return self._view()._database()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Awaited on the DataLayer's loop, wherever the caller's loop is.
        return await self._portal.acall(coro)

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.call(coro)

    async def _vectors(self) -> Collection | None:
        """The store's collection (created with its index when the store has an index config
        and was built from the unscoped DataLayer), or None when there is none."""
        if self._collection is None or self._index_pending:
            async with self._ready:
                if self._collection is None:
                    self._collection = await self._find_collection()
                # A concurrent index build waits for every older transaction to end, the
                # caller's too: inside one, it waits for a later call (searches meanwhile
                # scan exactly).
                if self._index_pending and not self._db().in_transaction:
                    await self._build_index()
        return self._collection or None

    async def _find_collection(self) -> Collection | Literal[False]:
        settings = self._settings
        view = self._view()
        if settings is None:
            found = view.embeddings.collection(self.name)
            try:
                await found.count(filter={"entity_type": ENTITY_TYPE, "entity_id": ""})
            except NotFound:
                return False
            return found
        if self._layer is not None:
            await self._create_collection(self._layer, settings)
        collection = view.embeddings.collection(self.name, embedder=settings.embedder)
        try:
            # Cheap (the entity index answers it): does the collection exist?
            await collection.count(filter={"entity_type": ENTITY_TYPE, "entity_id": ""})
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

    async def _build_index(self) -> None:
        settings, layer = self._settings, self._layer
        assert settings is not None
        assert layer is not None
        options = dict(settings.options)
        if "nlist" in options:
            options["lists"] = options.pop("nlist")
        collection = layer.embeddings.collection(self.name)
        with contextlib.suppress(Conflict):  # it has an index already (or was given one)
            await collection.create_index(settings.kind, **options)  # type: ignore[arg-type]
        self._index_pending = False

    # -- set-up and lifecycle ------------------------------------------------------------------

    async def asetup(self) -> None:
        """Create the store's collection and its index (when the store has an index config
        and was built from the unscoped DataLayer), or check that it exists. The table comes
        with the DataLayer's migrations. Optional: the first call that needs it does it too."""
        await self._call(self._vectors())

    def setup(self) -> None:
        """:meth:`asetup`, from synchronous code."""
        self._sync(self.asetup())

    async def aclose(self) -> None:
        """Stop the TTL sweeper, if it runs. The DataLayer stays open (it is the caller's)."""
        await self.astop_ttl_sweeper()

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
        # ``name``: "ops" for a batch (errors name ops[3].key); None for one op of a
        # convenience method (errors name key).
        plan = self._plan(ops, name)
        needs_vectors = (self._settings is not None and any(s.query for s in plan.searches)) or (
            bool(plan.puts)
        )
        collection = await self._vectors() if needs_vectors else None
        embedded, queries = await self._embed(plan, collection)
        results: list[Result] = [None] * plan.size
        if not plan.puts:
            await self._read(plan, queries, collection, results)
            return results

        async def apply(_: object) -> list[Result]:
            await self._read(plan, queries, collection, results)
            await self._write(plan, embedded, collection)
            return results

        return await self._db().run_in_transaction(apply)

    def _plan(self, ops: list[Any], name: str | None) -> _Plan:
        plan = _Plan(size=len(ops))
        max_json = self._db().config.max_json_bytes
        for index, op in enumerate(ops):
            where = f"{name}[{index}]." if name is not None else ""
            if isinstance(op, GetOp):
                namespace = check_namespace(op.namespace, where + "namespace", stored=False)
                key = check_key(op.key, where + "key")
                refresh = check_bool(op.refresh_ttl, where + "refresh_ttl")
                plan.gets.append((index, q.prefix_of(namespace), key, refresh))
            elif isinstance(op, PutOp):
                put = self._put(op, where, max_json)
                plan.puts.pop((put.prefix, put.key), None)
                plan.puts[(put.prefix, put.key)] = put
            elif isinstance(op, SearchOp):
                plan.searches.append(self._search(index, op, where))
            elif isinstance(op, ListNamespacesOp):
                plan.lists.append(_listing(index, op, where))
            else:
                raise ValidationError(
                    f"{where or 'op '}is not a GetOp, PutOp, SearchOp or ListNamespacesOp but "
                    f"{brief(op)}",
                    field=where.rstrip(".") or "op",
                )
        return plan

    def _put(self, op: PutOp, where: str, max_json: int) -> _Put:
        deleting = op.value is None
        namespace = check_namespace(op.namespace, where + "namespace", stored=not deleting)
        key = check_key(op.key, where + "key")
        if deleting:
            return _Put(namespace, key, None, None, None, None, where)
        if not isinstance(op.value, Mapping):
            raise ValidationError(
                f"{where}value must be a dict with string keys (or None to delete), not "
                f"{brief(op.value)}",
                field=where + "value",
            )
        value = dict(op.value)
        if not all(isinstance(k, str) for k in value):
            raise ValidationError(f"{where}value's keys must be strings", field=where + "value")
        encoded = encode_json(value, where + "value", max_json)
        fields: Fields | Literal[False] | None
        if op.index is None:
            fields = None
        elif op.index is False:
            fields = False
        else:
            fields = check_fields(op.index, where + "index")
        ttl = check_ttl(op.ttl, where + "ttl")
        return _Put(namespace, key, value, encoded, fields, ttl, where)

    def _search(self, index: int, op: SearchOp, where: str) -> _Search:
        namespace = check_namespace(op.namespace_prefix, where + "namespace_prefix", stored=False)
        translated = check_filter(op.filter, where + "filter")
        limit = check_int(op.limit, where + "limit", 1, MAX_PAGE)
        offset = check_int(op.offset, where + "offset", 0, MAX_OFFSET)
        query = op.query
        if query is not None:
            if not isinstance(query, str) or len(query) > _MAX_QUERY or "\x00" in query:
                raise ValidationError(
                    f"{where}query must be a string of at most {_MAX_QUERY} characters without "
                    f"NUL (or None), not {brief(query)}",
                    field=where + "query",
                )
            if self._settings is not None and limit + offset > MAX_PAGE:
                raise ValidationError(
                    f"{where}offset + limit is {offset + limit}; a search with a query reaches "
                    f"at most the {MAX_PAGE} nearest items",
                    field=where + "offset",
                )
        refresh = check_bool(op.refresh_ttl, where + "refresh_ttl")
        node = parse_filter(translated) if translated else None
        # Without an index config a query cannot rank anything: the search is by filter
        # alone, as in LangGraph's own stores.
        ranked = query if query and self._settings is not None else None
        return _Search(index, namespace, translated, node, limit, offset, ranked, refresh)

    # -- embedding, before any transaction ---------------------------------------------------

    async def _embed(
        self, plan: _Plan, collection: Collection | None
    ) -> tuple[list[dict[str, Any]], dict[int, Any]]:
        """The puts' embeddings as the collection's items, and each ranked search's vector."""
        settings = self._settings
        if settings is None or collection is None:
            return [], {}
        pending: list[Embedded] = []
        for put in plan.puts.values():
            if put.value is None or put.fields is False:
                continue
            texts = texts_of(put.value, settings.fields if put.fields is None else put.fields)
            if texts:
                pending.append(Embedded(put.namespace, put.prefix, put.key, put.value, texts))
        every_text = [text for item in pending for _, text in item.texts]
        embedder = settings.embedder
        searches = [search for search in plan.searches if search.query]
        documents, *vectors = await asyncio.gather(
            embedder.documents(every_text, settings.dims),
            *(embedder.query(search.query or "", settings.dims) for search in searches),
        )
        rows: list[dict[str, Any]] = []
        start = 0
        for item in pending:
            count = len(item.texts)
            rows += item.rows(documents[start : start + count])
            start += count
        return rows, {
            search.index: vector for search, vector in zip(searches, vectors, strict=True)
        }

    # -- reading -------------------------------------------------------------------------------

    async def _read(
        self,
        plan: _Plan,
        queries: dict[int, Any],
        collection: Collection | None,
        results: list[Result],
    ) -> None:
        omit = self._ttl is not None and self._ttl.omit_expired
        tenant, store = self.tenant, self.name
        db = self._db()
        statements: list[q.Statement] = []
        places: list[tuple[str, int]] = []
        if plan.gets:
            wanted = [(prefix, key) for _, prefix, key, _ in plan.gets]
            refreshed = [(prefix, key) for _, prefix, key, fresh in plan.gets if fresh]
            statements.append(q.get_sql(tenant, store, wanted, refreshed, omit_expired=omit))
            places.append(("get", -1))
        for search in plan.searches:
            if search.index in queries:
                continue
            statements.append(
                q.search_sql(
                    tenant,
                    store,
                    search.namespace,
                    search.node,
                    search.limit,
                    search.offset,
                    refresh=search.refresh,
                    omit_expired=omit,
                )
            )
            places.append(("search", search.index))
        for at, conditions, depth, limit, offset in plan.lists:
            statements.append(
                q.list_sql(tenant, store, conditions, depth, limit, offset, omit_expired=omit)
            )
            places.append(("list", at))
        if statements:
            # One round trip for all of them (a pipeline).
            answers = await db.fetch_many(statements)
            for (kind, at), rows in zip(places, answers, strict=True):
                if kind == "get":
                    _fill_gets(plan, rows, results)
                elif kind == "search":
                    results[at] = _search_items(rows)
                else:
                    results[at] = [tuple(row["namespace"]) for row in rows]
        for search in plan.searches:
            if search.index in queries:
                assert collection is not None
                results[search.index] = await self._ranked(
                    search, queries[search.index], collection, omit
                )

    async def _ranked(
        self, search: _Search, vector: Any, collection: Collection, omit: bool
    ) -> list[SearchItem]:
        """A search with a query: the collection's nearest embeddings under the namespace and
        filter, one hit per item (its best), then those items read back."""
        settings = self._settings
        assert settings is not None
        wanted = search.offset + search.limit
        per_item = max(1, len(settings.fields))
        candidates = min(MAX_PAGE, max(10, wanted * per_item * 2 + 1))
        where = search_filter(search.namespace, search.filter)
        while True:
            found = await collection.find_similar(vector, candidates, filter=where)
            best: dict[tuple[str, str], float] = {}
            for result in found:
                prefix, key, score = hit_of(result, settings.metric)
                best.setdefault((prefix, key), score)
            more = len(found) == candidates and candidates < MAX_PAGE
            if len(best) < wanted and more:
                candidates = min(MAX_PAGE, candidates * 4)
                continue
            if not best:
                return []
            hits = [(prefix, key, score) for (prefix, key), score in best.items()]
            rows = await self._db().fetch(
                *q.hits_sql(
                    self.tenant,
                    self.name,
                    hits,
                    search.limit,
                    search.offset,
                    refresh=search.refresh,
                    omit_expired=omit,
                )
            )
            if len(rows) < search.limit and more:
                # Some hits were of expired items, left out: look further.
                candidates = min(MAX_PAGE, candidates * 4)
                continue
            return _search_items(rows)

    # -- writing -------------------------------------------------------------------------------

    async def _write(
        self, plan: _Plan, embedded: list[dict[str, Any]], collection: Collection | None
    ) -> None:
        # Sorted, so that concurrent batches lock the rows they share in the same order.
        puts = sorted(plan.puts.values(), key=lambda p: (p.prefix, p.key))
        deletes = [(p.prefix, p.key) for p in puts if p.value is None]
        upserts = [(p.prefix, p.key, p.encoded or "", p.ttl) for p in puts if p.value is not None]
        db = self._db()
        # The items first: their rows stay locked to the end, so a concurrent put of the same
        # item waits here, then replaces the embeddings this one writes below.
        await db.execute(*q.write_sql(self.tenant, self.name, deletes, upserts))
        if collection is None:
            return
        refs = [item_ref(p.prefix, p.key) for p in puts]
        try:
            for start in range(0, len(refs), _REF_CHUNK):
                await collection.delete(
                    filter={
                        "entity_type": ENTITY_TYPE,
                        "entity_id": {"$in": refs[start : start + _REF_CHUNK]},
                    }
                )
        except NotFound:
            if self._settings is not None:
                raise
            # The collection went (dropped): nothing of it to keep in step.
            self._collection = False
            return
        if embedded:
            await _store_rows(collection, embedded, plan)

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

        async def one(_: object) -> int:
            rows = await db.fetch(*q.sweep_sql(self.tenant, self.name, _SWEEP_CHUNK))
            if collection is not None and rows:
                refs = [item_ref(row["prefix"], row["key"]) for row in rows]
                await collection.delete(
                    filter={"entity_type": ENTITY_TYPE, "entity_id": {"$in": refs}}
                )
            return len(rows)

        swept = 0
        while True:
            count = await db.run_in_transaction(one)
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
        (item,) = await self._call(
            self._execute([GetOp(namespace, key, self._refresh(refresh_ttl))], None)
        )
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
        (found,) = await self._call(self._execute([op], None))
        return cast(list[SearchItem], found)

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
        await self._call(self._execute([op], None))

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
        await self._call(self._execute([PutOp(namespace, key, None)], None))

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
        (found,) = await self._call(self._execute([op], None))
        return cast(list[tuple[str, ...]], found)

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


def _listing(
    index: int, op: ListNamespacesOp, where: str
) -> tuple[int, list[tuple[str, tuple[str, ...]]], int | None, int, int]:
    conditions: list[tuple[str, tuple[str, ...]]] = []
    raw = op.match_conditions
    if raw is not None:
        for place, condition in enumerate(as_items(raw, where + "match_conditions")):
            at = f"{where}match_conditions[{place}]"
            if not isinstance(condition, MatchCondition):
                raise ValidationError(
                    f"{at} must be a MatchCondition, not {brief(condition)}", field=at
                )
            if condition.match_type not in ("prefix", "suffix"):
                raise ValidationError(
                    f"{at}.match_type {brief(condition.match_type)} is not prefix or suffix",
                    field=f"{at}.match_type",
                )
            labels = check_pattern(condition.path, f"{at}.path") or ()
            conditions.append((condition.match_type, labels))
    depth = op.max_depth
    if depth is not None:
        check_int(depth, where + "max_depth", 1, 1000)
    limit = check_int(op.limit, where + "limit", 1, MAX_LIST)
    offset = check_int(op.offset, where + "offset", 0, MAX_OFFSET)
    return index, conditions, depth, limit, offset


def _fill_gets(plan: _Plan, rows: list[dict[str, Any]], results: list[Result]) -> None:
    found = {(row["prefix"], row["key"]): row for row in rows}
    for at, prefix, key, _ in plan.gets:
        row = found.get((prefix, key))
        results[at] = None if row is None else _item(row)


def _namespace(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.split("."))


def _item(row: dict[str, Any]) -> Item:
    return Item(
        value=row["value"],
        key=row["key"],
        namespace=_namespace(row["prefix"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _search_items(rows: list[dict[str, Any]]) -> list[SearchItem]:
    return [
        SearchItem(
            namespace=_namespace(row["prefix"]),
            key=row["key"],
            value=row["value"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            score=row.get("score"),
        )
        for row in rows
    ]


async def _store_rows(collection: Collection, rows: list[dict[str, Any]], plan: _Plan) -> None:
    try:
        await collection.store_many(rows)
    except ValidationError as exc:
        # "items[12].metadata: ..." names the collection's item: say which op it came from.
        name = exc.field or ""
        if not name.startswith("items["):
            raise
        row = rows[int(name[len("items[") : name.index("]")])]
        metadata = row["metadata"]
        put = plan.puts[(".".join(metadata["ns"]), metadata["key"])]
        raise ValidationError(
            f"{put.where}value cannot be indexed (its embedding of {metadata['field']!r}: {exc})",
            field=put.where + "value",
        ) from exc
