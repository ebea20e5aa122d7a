"""One batch of the LangGraph store: checked, embedded, then read and written.

A batch's ops are all checked first (a bad one runs none). Texts are embedded next, before
any transaction opens. Then its gets (one statement), filter searches and namespace listings
go out together in one round trip, its ranked searches go through the store's collection, and
its puts (the last of each item wins) are written: the items' rows first, sorted, so that
concurrent batches lock shared rows in one order and a second writer of an item waits for the
first; then the embeddings a new value no longer has are deleted by id, and the new ones
stored (an embedding of the same item and field is replaced in place).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from langgraph.store.base import (
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import MAX_PAGE, as_items, brief, check_bool, check_int, encode_json
from agency_data.integrations.langgraph import _store_sql as q
from agency_data.integrations.langgraph._store_input import (
    Fields,
    IndexSettings,
    check_fields,
    check_filter,
    check_key,
    check_namespace,
    check_pattern,
    check_ttl,
)
from agency_data.integrations.langgraph._store_vectors import (
    Embedded,
    hit_of,
    search_filter,
    texts_of,
)
from agency_data.postgres.database import Database
from agency_data.vectors.collection import Collection
from agency_data.vectors.filter_ast import FilterNode, parse_filter

__all__ = ["MAX_LIST", "MAX_OFFSET", "Batch", "Plan", "embed", "merge", "plan_ops"]

MAX_OFFSET = 1_000_000
MAX_LIST = 10_000
_MAX_QUERY = 10_000


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
class Plan:
    """A batch, checked: each op's place in the results, grouped by kind."""

    size: int
    gets: list[tuple[int, str, str, bool]] = field(default_factory=list)
    searches: list[_Search] = field(default_factory=list)
    lists: list[tuple[int, list[tuple[str, tuple[str, ...]]], int | None, int, int]] = field(
        default_factory=list
    )
    # The last put of each item wins, as in LangGraph's stores.
    puts: dict[tuple[str, str], _Put] = field(default_factory=dict)

    @property
    def ranked(self) -> bool:
        """Whether a search ranks by a query (and so needs the collection)."""
        return any(search.query for search in self.searches)


def merge(plans: list[Plan]) -> Plan:
    """One plan of several callers' plans, in order (a later put of an item wins)."""
    merged = Plan(size=sum(plan.size for plan in plans))
    offset = 0
    for plan in plans:
        merged.gets += [(at + offset, prefix, key, fresh) for at, prefix, key, fresh in plan.gets]
        merged.searches += [
            replace(search, index=search.index + offset) for search in plan.searches
        ]
        merged.lists += [(at + offset, *rest) for at, *rest in plan.lists]  # type: ignore[misc]
        for item, put in plan.puts.items():
            merged.puts.pop(item, None)
            merged.puts[item] = put
        offset += plan.size
    return merged


def plan_ops(
    ops: list[Any], name: str | None, settings: IndexSettings | None, max_json: int
) -> Plan:
    """``ops`` checked and grouped. ``name``: "ops" for a batch (errors name ``ops[3].key``);
    None for the one op of a convenience method (errors name ``key``)."""
    plan = Plan(size=len(ops))
    for index, op in enumerate(ops):
        where = f"{name}[{index}]." if name is not None else ""
        if isinstance(op, GetOp):
            namespace = check_namespace(op.namespace, where + "namespace", stored=False)
            key = check_key(op.key, where + "key")
            refresh = check_bool(op.refresh_ttl, where + "refresh_ttl")
            plan.gets.append((index, q.prefix_of(namespace), key, refresh))
        elif isinstance(op, PutOp):
            put = _put(op, where, max_json)
            plan.puts.pop((put.prefix, put.key), None)
            plan.puts[(put.prefix, put.key)] = put
        elif isinstance(op, SearchOp):
            plan.searches.append(_search(index, op, where, settings))
        elif isinstance(op, ListNamespacesOp):
            plan.lists.append(_listing(index, op, where))
        else:
            raise ValidationError(
                f"{where or 'op '}is not a GetOp, PutOp, SearchOp or ListNamespacesOp but "
                f"{brief(op)}",
                field=where.rstrip(".") or "op",
            )
    return plan


def _put(op: PutOp, where: str, max_json: int) -> _Put:
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
    if not all(isinstance(k, str) for k in op.value):
        raise ValidationError(f"{where}value's keys must be strings", field=where + "value")
    encoded = encode_json(dict(op.value), where + "value", max_json)
    # What is embedded and copied to the embeddings is what is stored (and read back): the
    # JSON form, with datetimes and UUIDs as strings.
    value = orjson.loads(encoded)
    fields: Fields | Literal[False] | None
    if op.index is None:
        fields = None
    elif op.index is False:
        fields = False
    else:
        fields = check_fields(op.index, where + "index")
    ttl = check_ttl(op.ttl, where + "ttl")
    return _Put(namespace, key, value, encoded, fields, ttl, where)


def _search(index: int, op: SearchOp, where: str, settings: IndexSettings | None) -> _Search:
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
        if settings is not None and limit + offset > MAX_PAGE:
            raise ValidationError(
                f"{where}offset + limit is {offset + limit}; a search with a query reaches "
                f"at most the {MAX_PAGE} nearest items",
                field=where + "offset",
            )
    refresh = check_bool(op.refresh_ttl, where + "refresh_ttl")
    node = parse_filter(translated) if translated else None
    # Without an index config a query cannot rank anything: the search is by filter
    # alone, as in LangGraph's own stores.
    ranked = query if query and settings is not None else None
    return _Search(index, namespace, translated, node, limit, offset, ranked, refresh)


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


async def embed(
    plan: Plan, settings: IndexSettings | None
) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """The puts' embeddings as the collection's items, and each ranked search's vector."""
    if settings is None:
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
    return rows, {search.index: vector for search, vector in zip(searches, vectors, strict=True)}


class Batch:
    """Reads and writes of planned batches, for one tenant's store."""

    def __init__(
        self,
        db: Database,
        tenant: str,
        store: str,
        settings: IndexSettings | None,
        *,
        omit_expired: bool,
    ) -> None:
        self.db = db
        self.tenant = tenant
        self.store = store
        self.settings = settings
        self.omit_expired = omit_expired

    async def read(
        self,
        plan: Plan,
        queries: dict[int, Any],
        collection: Collection | None,
        results: list[Result],
    ) -> None:
        """Fill ``results`` with the answers of the plan's gets, searches and listings."""
        omit = self.omit_expired
        tenant, store = self.tenant, self.store
        db = self.db
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
                results[search.index] = await self.ranked(
                    search, queries[search.index], collection, omit
                )

    async def ranked(
        self, search: _Search, vector: Any, collection: Collection, omit: bool
    ) -> list[SearchItem]:
        """A search with a query: the collection's nearest embeddings under the namespace and
        filter, one hit per item (its best), then those items read back."""
        settings = self.settings
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
            rows = await self.db.fetch(
                *q.hits_sql(
                    self.tenant,
                    self.store,
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

    async def write(
        self, plan: Plan, embedded: list[dict[str, Any]], collection: Collection | None
    ) -> bool:
        """Write the plan's puts, keeping ``collection`` in step; False when the collection
        turned out not to exist (for a store without an index config: nothing to keep)."""
        ids: dict[tuple[str, str], list[str]] = {}
        for row in embedded:
            metadata = row["metadata"]
            ids.setdefault((q.prefix_of(metadata["ns"]), metadata["key"]), []).append(row["id"])
        # Sorted, so that concurrent batches lock the rows they share in the same order.
        puts = sorted(plan.puts.values(), key=lambda p: (p.prefix, p.key))
        deletes = [(p.prefix, p.key) for p in puts if p.value is None]
        upserts = [
            (
                p.prefix,
                p.key,
                p.encoded or "",
                p.ttl,
                orjson.dumps(ids.get((p.prefix, p.key), [])).decode(),
            )
            for p in puts
            if p.value is not None
        ]
        # The items first: their rows stay locked to the end, so a concurrent put of the same
        # item waits here, then replaces the embeddings this one writes below. The ids its
        # embeddings had come back, so that the stale ones go by primary key.
        rows = await self.db.fetch(*q.write_sql(self.tenant, self.store, deletes, upserts))
        stale = [id_ for row in rows for id_ in set(row["before"] or ()) - set(row["after"] or ())]
        if collection is None:
            return True
        try:
            if stale:
                await collection.delete(stale)
        except NotFound:
            if self.settings is not None:
                raise
            return False
        if embedded:
            # Stored by id: an embedding the item had before is replaced in place.
            await _store_rows(collection, embedded, plan)
        return True

    async def sweep(self, collection: Collection | None, most: int) -> int:
        """Delete up to ``most`` expired items, with their embeddings; how many went."""
        rows = await self.db.fetch(*q.sweep_sql(self.tenant, self.store, most))
        stale = [id_ for row in rows for id_ in row["embedding_ids"]]
        if collection is not None and stale:
            await collection.delete(stale)
        return len(rows)


def _fill_gets(plan: Plan, rows: list[dict[str, Any]], results: list[Result]) -> None:
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


async def _store_rows(collection: Collection, rows: list[dict[str, Any]], plan: Plan) -> None:
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
