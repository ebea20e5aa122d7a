"""One collection of embeddings, as one tenant sees it: storing, reading and searching.

Bulk writes send a slice of rows per INSERT, as whole columns in binary arrays; searches are
one statement (two with per-query settings, sent together in a pipeline); batches of searches
share one round trip.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import random
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from time import perf_counter
from typing import Any, Self, TypeAlias

import numpy as np
import numpy.typing as npt
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from agency_data.batching import GroupCommit, PointReads
from agency_data.errors import NotFound, QueryError, ValidationError
from agency_data.inputs import (
    MAX_PAGE,
    as_items,
    check_bool,
    check_int,
    check_iterable,
    check_mapping,
    check_number,
    check_text,
    encode_json,
    encode_json_batch,
    located,
)
from agency_data.models import (
    CollectionInfo,
    Embedding,
    SimilarityQuery,
    SimilarityResult,
)
from agency_data.observability import observed
from agency_data.observability.instrument import ProbeQuery, Telemetry
from agency_data.postgres.database import TENANT_SETTING, Database
from agency_data.postgres.errors import refused_a_row, translate_errors
from agency_data.security.fields import COLLECTION_COLUMNS, sealed_limit
from agency_data.vectors import _binary, _sql, indexes
from agency_data.vectors.catalog import Catalog, CollectionSpec
from agency_data.vectors.compat import HalfVector, vector_to_list
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.filter_ast import FilterNode, parse_filter
from agency_data.vectors.ids import lookup_id, lookup_ids, stored_id
from agency_data.vectors.metrics import MetricSpec, metric_spec
from agency_data.vectors.validation import as_matrix, as_vector

__all__ = ["Collection"]

_ITEM_KEYS = {"id", "entity_type", "entity_id", "vector", "metadata", "content"}
_QUERY_KEYS = {"vector", "limit", "threshold", "filter"}
_MAX_ENTITY = 1000
_MAX_BATCH_QUERIES = 1000
_MAX_STREAM_BATCH = 100_000
_MAX_TEXT_QUERY = 10_000
_MAX_CONTENT = 1_000_000
_SLICE = 1000
# The most vector bytes one INSERT carries. Both sides run faster on slices that fit their
# caches (measured on 768-d rows: 500-row slices took 0.35 s of server CPU per 20,000 rows,
# 5,000-row ones 0.45 s), and the server's copy of a slice stays well within work_mem.
_SLICE_BYTES = 2 << 20
# A search as checked: vector, limit, threshold, parsed filter, and the vector's name in errors.
_Query: TypeAlias = "tuple[Any, int, float | None, FilterNode | None, str]"


class Collection:
    """A named collection of embeddings, scoped to one tenant."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tenant: str,
        name: str,
        *,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._db = db
        # The layer's own searches (warming up) pass a silent one: they are not the app's.
        self._telemetry = telemetry if telemetry is not None else db.telemetry
        self._catalog = catalog
        self.tenant = tenant
        self.name = name
        # A text embedder given for this view (collection(name, embedder=...)); else the
        # collection's own, if create_collection was given one.
        self._embedder: Embedder | None = None
        # Whether reads are recorded in the audit trail (audit.reads names embeddings).
        self._reads_audited = db.notes.reads_of("embeddings")
        # Concurrent single reads and stores outside transactions share round trips (see
        # agency_data.batching); the store hands out one Collection per name, so they meet.
        self._reads: PointReads[str, Embedding] = PointReads(self._read_one, self._read_many)
        self._stores: GroupCommit[Embedding | Mapping[str, Any], str] = GroupCommit(
            self._store_one, self._store_group, retry_alone=refused_a_row
        )

    async def aclose(self) -> None:
        """Wait for the reads and stores gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        await self._reads.aclose()
        await self._stores.aclose()

    async def _spec(self) -> CollectionSpec:
        return await self._catalog.get(self.name)

    async def spec(self) -> CollectionSpec:
        """The collection's shape: dimension, metric, storage and index (cached)."""
        return await self._spec()

    def with_embedder(self, embedder: Any) -> Self:
        """This collection, embedding texts with ``embedder`` (see
        :mod:`agency_data.vectors.embedders`); reads and writes still share round trips with
        the other views of it."""
        view = copy.copy(self)
        view._embedder = Embedder.of(embedder)
        return view

    @property
    def embedder(self) -> Embedder | None:
        """The text embedder used by :meth:`store_texts` and :meth:`search_text`, if any."""
        return self._embedder or self._catalog.embedders.get(self.name)

    def _embedder_or_fail(self, method: str) -> Embedder:
        embedder = self.embedder
        if embedder is None:
            raise ValidationError(
                f"{method} needs a text embedder and collection {self.name!r} has none here: "
                "pass embedder= to create_collection or to collection(name, embedder=...)",
                field="embedder",
            )
        return embedder

    # -- storing -------------------------------------------------------------------------------

    @observed("embeddings.store")
    async def store(self, item: Embedding | Mapping[str, Any]) -> str:
        """Store one embedding (replacing the one with its ``id``, if given); return its id.

        Concurrent calls outside a transaction are written together in one transaction; each
        returns once that has committed, and a bad item fails only its own call.
        """
        try:
            if self._db.in_transaction:
                return await self._store_one(item)
            return await self._stores.write(item)
        except ValidationError as exc:
            # The checks name a batch's items ("items[0].vector"); here there is one: "item".
            if exc.field is None or not exc.field.startswith("items[0]"):
                raise
            field = "item" + exc.field.removeprefix("items[0]")
            raise ValidationError(str(exc).replace("items[0]", "item", 1), field=field) from None

    async def _store_one(self, item: Embedding | Mapping[str, Any]) -> str:
        return (await self._store([item], 0))[0]

    async def _store_group(
        self, items: builtins.list[Embedding | Mapping[str, Any]]
    ) -> builtins.list[str]:
        return await self._store(items, 0)

    @observed("embeddings.store_many")
    async def store_many(
        self, items: Iterable[Embedding | Mapping[str, Any]]
    ) -> builtins.list[str]:
        """Store embeddings in one transaction, all or none; return their ids in order.

        ``items`` is a list, tuple or other iterable of :class:`Embedding` objects or mappings
        with ``entity_type``, ``entity_id``, ``vector`` and optionally ``id``, ``metadata``,
        ``content``. A bad item anywhere in the batch stores nothing, and the error names it
        (``items[3].vector``). Items with an ``id`` (any string of up to 512 characters, see
        :mod:`agency_data.vectors.ids`) replace this tenant's embedding of that id; the others
        get a random UUID's text.
        """
        return await self._store(as_items(items, "items"), 0)

    async def _store(
        self, batch: builtins.list[Embedding | Mapping[str, Any]], start: int
    ) -> builtins.list[str]:
        # ``start``: the index of the batch's first item in what the caller passed (for errors).
        spec = await self._spec()
        if not batch:
            return []
        if self._seals("content") or self._seals("metadata"):
            # The tenant's data key read (off the event loop) before rows are sealed.
            await self._db.cipher.ensure(self.tenant)
        upsert = any(_given_id(item) is not None for item in batch)
        insert = _sql.insert_sql(spec.table, spec.storage, upsert)
        size = _slice_rows(spec)
        seen: set[str] = set()
        ids: builtins.list[str] = []
        async with self._db.transaction() as tx, self._db.connection() as conn:
            with translate_errors(f"storing into {self.name!r}"):
                if tx.nested:
                    # The caller's transaction may belong to another tenant's view; our own
                    # named the tenant with its BEGIN.
                    await self._db.enter_tenant(conn)
                vector_oid = await _vector_oid(conn, spec.storage)
                encoding = conn.info.encoding
                # One INSERT per slice. A bad item in any slice fails the transaction, so the
                # batch stays all or none. (Not pipelined: psycopg's pipeline spends more CPU
                # pushing megabytes of parameters than the client spends making them.)
                cursor = conn.cursor()
                cursor.adapters.register_dumper(_binary.BinaryArray, _binary.ArrayDumper)
                for offset in range(0, len(batch), size):
                    slice_ids, params = self._prepare(
                        batch[offset : offset + size],
                        spec,
                        start + offset,
                        seen,
                        vector_oid,
                        encoding,
                    )
                    ids += slice_ids
                    await cursor.execute(insert, params)
        return ids

    @observed("embeddings.store_texts")
    async def store_texts(
        self,
        texts: Iterable[str],
        metadatas: Iterable[Mapping[str, Any] | None] | None = None,
        ids: Iterable[str | uuid.UUID | None] | None = None,
        *,
        entity_type: str = "document",
        entity_ids: Iterable[str] | None = None,
    ) -> builtins.list[str]:
        """Embed ``texts`` with the collection's embedder and store them (as ``content``) in
        one transaction, all or none; return their ids in order.

        ``metadatas``, ``ids`` and ``entity_ids``, when given, have one entry per text (an id
        of None: a new one is made). The texts are embedded in batches, several at once
        (see :class:`Embedder`), before anything is written.
        """
        embedder = self._embedder_or_fail("store_texts")
        contents = [
            check_text(text, f"texts[{n}]", max_length=_MAX_CONTENT)
            for n, text in enumerate(as_items(texts, "texts"))
        ]
        columns = {
            "metadata": _column_of(metadatas, "metadatas", len(contents)),
            "id": _column_of(ids, "ids", len(contents)),
            "entity_id": _column_of(entity_ids, "entity_ids", len(contents)),
        }
        check_text(entity_type, "entity_type", max_length=_MAX_ENTITY)
        spec = await self._spec()
        matrix = await embedder.documents(contents, spec.dimension)
        items: builtins.list[Embedding | Mapping[str, Any]] = [
            {
                "entity_type": entity_type,
                "entity_id": "",
                "content": content,
                "vector": vector,
                **{key: values[n] for key, values in columns.items() if values is not None},
            }
            for n, (content, vector) in enumerate(zip(contents, matrix, strict=True))
        ]
        return await self._store(items, 0)

    async def stream_store(
        self,
        items: AsyncIterable[Embedding | Mapping[str, Any]]
        | Iterable[Embedding | Mapping[str, Any]],
        *,
        batch_size: int = 1000,
    ) -> int:
        """Store an unbounded stream in batches of ``batch_size``; return how many were stored.

        Each batch is atomic; a bad item stops the stream with the batches before it stored, and
        the error names its place in the stream (``items[12345].vector``).
        """
        check_iterable(items, "items")
        check_int(batch_size, "batch_size", 1, _MAX_STREAM_BATCH)
        stored = 0
        batch: builtins.list[Embedding | Mapping[str, Any]] = []
        async for item in _aiter(items):
            batch.append(item)
            if len(batch) >= batch_size:
                stored += len(await self._store(batch, stored))
                batch = []
        if batch:
            stored += len(await self._store(batch, stored))
        return stored

    def _prepare(
        self,
        items: builtins.list[Embedding | Mapping[str, Any]],
        spec: CollectionSpec,
        offset: int,
        seen: set[str],
        vector_oid: int,
        encoding: str,
    ) -> tuple[builtins.list[str], builtins.list[Any]]:
        # One slice, checked, as its ids and the parameters of ``_sql.insert_sql``.
        given: builtins.list[str | None] = []
        entity_types: builtins.list[str] = []
        entity_ids: builtins.list[str] = []
        metadatas: builtins.list[dict[str, Any]] = []
        contents: builtins.list[str | None] = []
        raw_vectors: builtins.list[Any] = []
        for index, item in enumerate(items, start=offset):
            # Messages are only built on failure: this loop runs once per vector ingested.
            values = item if type(item) is dict else _as_mapping(item, index)
            if not _ITEM_KEYS.issuperset(values):
                unknown = sorted(str(key) for key in set(values) - _ITEM_KEYS)
                raise ValidationError(
                    f"items[{index}] has unknown fields {unknown}; an item has "
                    f"{', '.join(sorted(_ITEM_KEYS))}",
                    field=f"items[{index}]",
                )
            given_id = values.get("id")
            if given_id is None:
                given.append(None)
            else:
                id_ = stored_id(given_id, f"items[{index}].id")
                if id_ in seen:
                    raise ValidationError(
                        f"items[{index}].id {id_!r} appears twice in one batch",
                        field=f"items[{index}].id",
                    )
                seen.add(id_)
                given.append(id_)
            entity_types.append(_text(values.get("entity_type"), index, "entity_type", blank=False))
            entity_id = values.get("entity_id")
            if isinstance(entity_id, int | uuid.UUID) and not isinstance(entity_id, bool):
                entity_id = str(entity_id)
            entity_ids.append(_text(entity_id, index, "entity_id", blank=True))
            metadata = values.get("metadata")
            if metadata is None:
                metadata = {}
            elif not isinstance(metadata, dict):
                raise ValidationError(
                    f"items[{index}].metadata must be a dict", field=f"items[{index}].metadata"
                )
            metadatas.append(metadata)
            content = values.get("content")
            if content is not None:
                content = _text(content, index, "content", blank=True, limit=_MAX_CONTENT)
            contents.append(content)
            if "vector" not in values:
                raise ValidationError(
                    f"items[{index}].vector is missing", field=f"items[{index}].vector"
                )
            raw_vectors.append(values["vector"])
        limit = self._db.config.max_json_bytes
        documents = encode_json_batch(metadatas, "items[{}].metadata", limit, offset=offset)
        # The slice's vectors are checked at once, as one numpy matrix.
        matrix = as_matrix(raw_vectors, spec.dimension, spec.storage, offset=offset, items="items")
        missing = given.count(None)
        if missing == len(given):
            ids = _binary.random_ids(missing)
        else:
            fresh = iter(_binary.random_ids(missing))
            ids = [next(fresh) if id_ is None else id_ for id_ in given]
        cipher = self._db.cipher
        if self._seals("metadata"):
            sealed = [
                cipher.seal(self.tenant, spec.table, "metadata", id_, metadata)
                for id_, metadata in zip(ids, metadatas, strict=True)
            ]
            documents = encode_json_batch(
                sealed, "items[{}].metadata", sealed_limit(limit), offset=offset
            )
        if self._seals("content"):
            contents = [
                cipher.seal(self.tenant, spec.table, "content", id_, content, text=True)
                for id_, content in zip(ids, contents, strict=True)
            ]
        try:
            texts = [
                _binary.text_array(entity_types, encoding),
                _binary.text_array(entity_ids, encoding),
            ]
            contents_array = _binary.text_array(contents, encoding)
        except UnicodeEncodeError as exc:
            raise _unencodable(exc, offset, entity_types, entity_ids, contents, encoding) from None
        return ids, [
            self.tenant,
            _binary.id_array(ids),
            *texts,
            _binary.vector_array(matrix, spec.storage, vector_oid),
            _binary.jsonb_array(documents),
            contents_array,
        ]

    # -- reading -------------------------------------------------------------------------------

    @observed("embeddings.get")
    async def get(self, embedding_id: str | uuid.UUID, *, consistent: bool = False) -> Embedding:
        """The embedding with ``embedding_id``; :class:`NotFound` if this tenant has none.

        Concurrent calls outside a transaction share one query. A read replica may serve it
        (see :mod:`agency_data.postgres.replicas`); ``consistent`` asks for one that has
        replayed every commit acknowledged so far, or the primary.
        """
        id_ = lookup_id(embedding_id, "embedding_id")
        check_bool(consistent, "consistent")
        if id_ is None:
            found = None
        elif consistent or self._db.in_transaction:
            # Alone: a consistent read waits for its own replica; a transaction's stays its own.
            found = await self._read_one(id_, consistent=consistent)
        else:
            found = await self._reads.get(id_)
        if found is None:
            raise NotFound(
                f"embedding {embedding_id!r} does not exist in {self.name!r}", entity="embedding"
            )
        if self._reads_audited:
            await self._audit_read([found.id])
        return found

    async def _audit_read(self, ids: Sequence[str]) -> None:
        await self._db.notes.read(self.tenant, f"emb_{self.name}", ids)

    async def _read_one(self, embedding_id: str, consistent: bool = False) -> Embedding | None:
        found = await self._db.read(
            lambda on: self._load_many([embedding_id], on), consistent=consistent
        )
        return found[0] if found else None

    async def _read_many(self, ids: Sequence[str]) -> dict[str, Embedding]:
        found = await self._db.read(lambda on: self._load_many(list(ids), on))
        return {one.id: one for one in found}

    @observed("embeddings.get_many")
    async def get_many(
        self, embedding_ids: Iterable[str | uuid.UUID], *, consistent: bool = False
    ) -> builtins.list[Embedding]:
        """The embeddings that exist among ``embedding_ids``, in no particular order.

        A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        ids = lookup_ids(embedding_ids, "embedding_ids")
        found = await self._db.read(lambda on: self._load_many(ids, on), consistent=consistent)
        if self._reads_audited:
            await self._audit_read([one.id for one in found])
        return found

    async def _load_many(self, ids: builtins.list[str], db: Database) -> builtins.list[Embedding]:
        spec = await self._spec()  # first: a collection that does not exist is still an error
        if not ids:
            return []
        rows = await db.fetch(
            sql.SQL(
                "SELECT "
                + _sql.ROW_COLUMNS
                + ", tenant_id, vector FROM {} WHERE tenant_id = %s AND id = ANY(%s)"
            ).format(spec.table_id),
            [self.tenant, ids],
        )
        rows = self._opened(spec, rows)
        return [Embedding(**{**row, "vector": vector_to_list(row["vector"])}) for row in rows]

    def _seals(self, column: str) -> bool:
        cipher = self._db.cipher
        return cipher.chosen("embeddings", column) or cipher.chosen(self.name, column)

    def _opened(self, spec: CollectionSpec, rows: builtins.list[Any]) -> builtins.list[Any]:
        # Sealed contents and metadata opened (whether or not they are still chosen).
        cipher = self._db.cipher
        return [cipher.open_row(self.tenant, spec.table, row, COLLECTION_COLUMNS) for row in rows]

    @observed("embeddings.count")
    async def count(
        self, filter: Mapping[str, Any] | None = None, *, consistent: bool = False
    ) -> int:
        """How many of this tenant's embeddings match ``filter`` (all, without one).

        A read replica may answer; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        node = _parse(filter)
        spec = await self._spec()
        where, params = _sql.where_sql(self.tenant, node)
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(spec.table_id, where)
        return int(
            await self._db.read(lambda on: on.fetch_value(query, params), consistent=consistent)
        )

    @observed("embeddings.delete")
    async def delete(
        self,
        ids: Iterable[str | uuid.UUID] | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
    ) -> int:
        """Delete by ids, or every embedding matching ``filter``; return how many went (ids
        this tenant does not have are skipped)."""
        if (ids is None) == (filter is None):
            raise ValidationError("delete takes ids or a filter (one of them)", field="ids")
        if ids is not None:
            wanted = lookup_ids(ids, "ids")
            spec = await self._spec()
            if not wanted:
                return 0
            return await self._db.execute(
                sql.SQL("DELETE FROM {} WHERE tenant_id = %s AND id = ANY(%s)").format(
                    spec.table_id
                ),
                [self.tenant, wanted],
            )
        node = _parse(filter)
        spec = await self._spec()
        where, params = _sql.where_sql(self.tenant, node)
        return await self._db.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(spec.table_id, where), params
        )

    async def _update_sealed_metadata(
        self, spec: CollectionSpec, uid: str, metadata: dict[str, Any], merge: bool
    ) -> Embedding:
        # Sealed metadata cannot be merged by PostgreSQL: read, merge and seal here, the row
        # locked meanwhile.
        async with self._db.transaction():
            row = await self._db.fetch_one(
                sql.SQL(
                    "SELECT metadata FROM {} WHERE tenant_id = %s AND id = %s FOR UPDATE"
                ).format(spec.table_id),
                [self.tenant, uid],
            )
            if row is None:
                raise NotFound(
                    f"embedding {uid!r} does not exist in {self.name!r}", entity="embedding"
                )
            cipher = self._db.cipher
            await cipher.ensure(self.tenant)
            current = cipher.open(self.tenant, spec.table, "metadata", uid, row["metadata"])
            merged = {**current, **metadata} if merge else metadata
            sealed = (
                cipher.seal(self.tenant, spec.table, "metadata", uid, merged)
                if self._seals("metadata")
                else merged
            )
            await self._db.execute(
                sql.SQL(
                    "UPDATE {} SET metadata = %s::jsonb WHERE tenant_id = %s AND id = %s"
                ).format(spec.table_id),
                [
                    encode_json(sealed, "metadata", sealed_limit(self._db.config.max_json_bytes)),
                    self.tenant,
                    uid,
                ],
            )
            found = await self._load_many([uid], self._db)
        return found[0]

    @observed("embeddings.update_metadata")
    async def update_metadata(
        self, embedding_id: str | uuid.UUID, metadata: dict[str, Any], *, merge: bool = True
    ) -> Embedding:
        """Replace the metadata, or (``merge=True``) add and overwrite top-level keys."""
        uid = lookup_id(embedding_id, "embedding_id")
        check_mapping(metadata, "metadata")
        check_bool(merge, "merge")
        if uid is None:
            raise NotFound(
                f"embedding {embedding_id!r} does not exist in {self.name!r}", entity="embedding"
            )
        encoded = encode_json(metadata, "metadata", self._db.config.max_json_bytes)
        spec = await self._spec()
        if self._db.cipher.keyring is not None:
            # Stored metadata may be sealed (chosen now, or while it was): merged here.
            return await self._update_sealed_metadata(spec, uid, metadata, merge)
        assign: sql.Composable = sql.SQL("metadata || %s::jsonb" if merge else "%s::jsonb")
        updated = await self._db.execute(
            sql.SQL("UPDATE {} SET metadata = {} WHERE tenant_id = %s AND id = %s").format(
                spec.table_id, assign
            ),
            [encoded, self.tenant, uid],
        )
        # Its own write, read back on the primary (a replica may not have replayed it yet).
        found = await self._load_many([uid], self._db) if updated else []
        if not found:
            raise NotFound(f"embedding {uid!r} does not exist in {self.name!r}", entity="embedding")
        return found[0]

    # -- searching -----------------------------------------------------------------------------

    @observed("embeddings.find_similar")
    async def find_similar(
        self,
        vector: Any,
        limit: int = 10,
        *,
        threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """The ``limit`` nearest embeddings to ``vector``, best first.

        ``threshold`` keeps only results at least that good (see :mod:`.metrics` for what
        score means per metric). ``filter`` narrows by metadata and columns; with pgvector
        0.8's iterative index scans a selective filter still returns ``limit`` results when
        that many match. ``ef_search`` / ``probes`` tune HNSW / IVFFlat for this query;
        ``exact`` skips the index. With a binary-quantized index, ``rerank`` x ``limit``
        candidates are re-ranked by full-precision distance. A read replica may serve it
        (see :mod:`agency_data.postgres.replicas`); ``consistent`` as for :meth:`get`.
        """
        start = perf_counter()
        (results,) = await self._search(
            [_checked_query(vector, limit, threshold, filter, "")],
            include_vectors=include_vectors,
            ef_search=ef_search,
            probes=probes,
            exact=exact,
            rerank=rerank,
            consistent=consistent,
        )
        telemetry = self._telemetry
        if telemetry.metrics:
            kind = "exact" if exact else "filtered" if filter else "ann"
            telemetry.search(self.name, kind).observe(perf_counter() - start)
        if telemetry.probe_rate and not exact and random.random() < telemetry.probe_rate:
            # Kept for the recall probe (agency_data.observability.recall), which replays it.
            telemetry.keep_probe_query(
                self.name,
                self.tenant,
                ProbeQuery(copy.deepcopy(vector), limit, copy.deepcopy(filter), ef_search, probes),
            )
        return results

    @observed("embeddings.measure_recall")
    async def measure_recall(
        self,
        queries: Iterable[SimilarityQuery | Mapping[str, Any]],
        *,
        ef_search: int | None = None,
        probes: int | None = None,
    ) -> float | None:
        """The recall of this collection's index for ``queries``: the share of each query's
        true ``limit`` nearest neighbours that the index search returns, averaged.

        Each query runs twice, through the index (with ``ef_search`` / ``probes``) and
        exactly; an exact search reads every row of this tenant, so keep the queries few on
        a large collection. Thresholds are ignored. None when no query has a neighbour.
        """
        plain = [
            (vector, limit, None, node, where)
            for vector, limit, _, node, where in (
                _as_query(raw, index)
                for index, raw in enumerate(as_items(queries, "queries", most=_MAX_BATCH_QUERIES))
            )
        ]
        found = await self._search(
            plain, include_vectors=False, ef_search=ef_search, probes=probes, exact=False, rerank=10
        )
        truth = await self._search(
            plain, include_vectors=False, ef_search=None, probes=None, exact=True, rerank=10
        )
        shares = [
            len({r.id for r in ann} & {r.id for r in true}) / len(true)
            for ann, true in zip(found, truth, strict=True)
            if true
        ]
        return sum(shares) / len(shares) if shares else None

    @observed("embeddings.batch_search")
    async def batch_search(
        self,
        queries: Iterable[SimilarityQuery | Mapping[str, Any]],
        *,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[builtins.list[SimilarityResult]]:
        """Run many searches in one round trip (a pipeline); one result list per query.

        Each query is a :class:`SimilarityQuery` or a mapping with ``vector`` and optionally
        ``limit``, ``threshold`` and ``filter``; errors name the query (``queries[2].limit``).
        A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        start = perf_counter()
        plain = [
            _as_query(raw, index)
            for index, raw in enumerate(as_items(queries, "queries", most=_MAX_BATCH_QUERIES))
        ]
        results = await self._search(
            plain,
            include_vectors=include_vectors,
            ef_search=ef_search,
            probes=probes,
            exact=exact,
            rerank=rerank,
            consistent=consistent,
        )
        if self._telemetry.metrics:
            self._telemetry.search(self.name, "batch").observe(perf_counter() - start)
        return results

    async def _search(
        self,
        queries: Sequence[_Query],
        *,
        include_vectors: bool,
        ef_search: int | None,
        probes: int | None,
        exact: bool,
        rerank: int,
        consistent: bool | None = None,
    ) -> builtins.list[builtins.list[SimilarityResult]]:
        # consistent: None keeps the search on the primary; a bool lets a replica serve it.
        _check_rerank(rerank)
        check_bool(include_vectors, "include_vectors")
        check_bool(exact, "exact")

        def search(on: Database) -> Awaitable[builtins.list[builtins.list[SimilarityResult]]]:
            return self._search_on(on, queries, include_vectors, ef_search, probes, exact, rerank)

        if consistent is None:
            return await search(self._db)
        check_bool(consistent, "consistent")
        results = await self._db.read(search, consistent=consistent)
        if self._reads_audited:
            await self._audit_read([hit.id for hits in results for hit in hits])
        return results

    async def _search_on(
        self,
        db: Database,
        queries: Sequence[_Query],
        include_vectors: bool,
        ef_search: int | None,
        probes: int | None,
        exact: bool,
        rerank: int,
    ) -> builtins.list[builtins.list[SimilarityResult]]:
        spec = await self._spec()
        metric = metric_spec(spec.metric)
        binary = spec.index_quantization == "binary" and not exact
        if (
            len(queries) == 1
            and queries[0][3] is None
            and ef_search is None
            and probes is None
            and not exact
            and not binary
            and spec.index_kind is not None
            and self._one_statement()
        ):
            return [await self._search_alone(db, queries[0], spec, metric, include_vectors)]
        planned = []
        candidates = 0
        for vector, limit, threshold, node, where in queries:
            param = self._query_param(vector, spec, where)
            pool = min(MAX_PAGE, max(40, limit * rerank))
            candidates = max(candidates, pool)
            statement, params = _sql.search_sql(
                spec,
                self.tenant,
                param,
                limit,
                node,
                include_vectors=include_vectors,
                rerank_candidates=pool if binary else None,
                exact=exact,
            )
            planned.append((statement, params, threshold))
        settings = _settings(ef_search, probes, candidates if binary else None)
        with translate_errors("searching"):
            results = await db.fetch_many([(q, p) for q, p, _ in planned], settings=settings)
        return [
            _results(self._opened(spec, rows), metric, threshold)
            for rows, (_, _, threshold) in zip(results, planned, strict=True)
        ]

    async def _search_alone(
        self,
        db: Database,
        query: _Query,
        spec: CollectionSpec,
        metric: MetricSpec,
        include_vectors: bool,
    ) -> builtins.list[SimilarityResult]:
        # The commonest search (one, unfiltered, served by the index, default settings) as one
        # statement that names the tenant itself: no pipeline, whose bookkeeping in psycopg
        # costs more than the rest of the call.
        vector, limit, threshold, _, where = query
        statement, params = _sql.tenant_search_sql(
            spec,
            self.tenant,
            self._query_param(vector, spec, where),
            limit,
            include_vectors=include_vectors,
            setting=TENANT_SETTING,
        )
        async with db.connection() as conn:
            with translate_errors("searching"):
                rows = await (await conn.execute(statement, params)).fetchall()
        return _results(self._opened(spec, rows), metric, threshold)

    @property
    def span_collection(self) -> str:
        """The name spans give this collection (``db.collection.name``)."""
        return self.name

    def _one_statement(self) -> bool:
        # Whether a search may name the tenant in its own statement (see _sql.tenant_search_sql)
        # rather than through the database layer, which sends the setting as a statement of its
        # own, pipelined with the search. Not inside a transaction, whose statements the layer
        # orders; not through PgBouncer (postgresql.pgbouncer), whose connections need more
        # settings with each transaction than the tenant; not when no tenant is named (the
        # layer sends a single statement then).
        return (
            self._db.tenant_statement() is not None
            and not self._db.in_transaction
            and not self._db.config.pgbouncer
        )

    async def search_stream(
        self,
        vector: Any,
        *,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
        include_vectors: bool = False,
        batch_size: int = 500,
    ) -> AsyncGenerator[SimilarityResult, None]:
        """Every matching embedding, nearest first, fetched ``batch_size`` at a time.

        A server-side cursor keeps memory flat however many rows match; stop iterating at any
        point (a ``threshold`` stops it once results get worse than that). The connection is
        held until the generator finishes or is closed: to stop early and free it at once,
        iterate inside ``contextlib.aclosing(collection.search_stream(...))``.
        """
        check_int(batch_size, "batch_size", 1, _MAX_STREAM_BATCH)
        if threshold is not None:
            check_number(threshold, "threshold")
        check_bool(include_vectors, "include_vectors")
        node = _parse(filter)
        spec = await self._spec()
        metric = metric_spec(spec.metric)
        param = self._query_param(vector, spec, "vector")
        where, params = _sql.where_sql(self.tenant, node)
        columns = sql.SQL(_sql.ROW_COLUMNS + (", vector" if include_vectors else ""))
        query = sql.SQL(
            "SELECT {}, vector "
            + metric.operator
            + " %b AS distance FROM {} WHERE {} ORDER BY distance"
        ).format(columns, spec.table_id, where)
        # What was handed out, recorded a batch at a time when reads are audited.
        seen: builtins.list[str] = []
        try:
            async with self._db.connection() as conn, conn.transaction():
                with translate_errors("streaming search"):
                    await self._db.enter_tenant(conn)
                    name = f"agency_stream_{uuid.uuid4().hex[:12]}"
                    async with conn.cursor(name=name) as cursor:
                        cursor.itersize = batch_size
                        await cursor.execute(query, [param, *params])
                        async for row in cursor:
                            (row,) = self._opened(spec, [row])
                            result = _result(row, metric.score)
                            if threshold is not None and not metric.passes(result.score, threshold):
                                break
                            if self._reads_audited:
                                seen.append(result.id)
                                if len(seen) == batch_size:
                                    await self._audit_read(seen)
                                    seen = []
                            yield result
        finally:
            if seen:
                # Also when the caller stops early: what it was given was read.
                await self._audit_read(seen)

    @observed("embeddings.search_text")
    async def search_text(
        self,
        query: str,
        limit: int = 10,
        *,
        threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """The ``limit`` embeddings nearest to ``query``'s vector (made by the collection's
        embedder), best first; the other arguments are :meth:`find_similar`'s."""
        vector = await self.embed_query(query)
        return await self.find_similar(
            vector,
            limit,
            threshold=threshold,
            filter=filter,
            include_vectors=include_vectors,
            ef_search=ef_search,
            probes=probes,
            exact=exact,
            rerank=rerank,
            consistent=consistent,
        )

    async def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        """The vector the collection's embedder makes of a search query."""
        embedder = self._embedder_or_fail("searching by text")
        check_text(query, "query", max_length=_MAX_TEXT_QUERY)
        return await embedder.query(query, (await self._spec()).dimension)

    @observed("embeddings.hybrid_search")
    async def hybrid_search(
        self,
        text: str,
        vector: Any = None,
        limit: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        k: int = 60,
        candidates: int | None = None,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """Full-text and vector results fused by reciprocal rank fusion, best first.

        Each side contributes its top ``candidates`` (default 4 x limit); an embedding's score
        is the sum of ``1 / (k + rank)`` over the sides that found it. ``distance`` is still
        the vector distance. Without ``vector``, the collection's embedder makes it from
        ``text``. A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        start = perf_counter()
        check_bool(consistent, "consistent")
        check_text(text, "text", max_length=_MAX_TEXT_QUERY)
        if vector is None:
            vector = await self.embed_query(text)
        check_int(limit, "limit", 1, MAX_PAGE)
        check_int(k, "k", 1, 1_000_000)
        if candidates is None:
            pool_size = min(MAX_PAGE, limit * 4)
        else:
            pool_size = check_int(candidates, "candidates", 1, MAX_PAGE)
        node = _parse(filter)
        spec = await self._spec()
        metric = metric_spec(spec.metric)
        param = self._query_param(vector, spec, "vector")
        statements = [
            _sql.hybrid_text_sql(spec, self.tenant, text, param, pool_size, node),
            _sql.search_sql(spec, self.tenant, param, pool_size, node, include_vectors=False),
        ]
        with translate_errors("searching"):
            text_rows, vector_rows = await self._db.read(
                lambda on: on.fetch_many(statements), consistent=consistent
            )
        fused: dict[str, float] = {}
        rows_by_id: dict[str, dict[str, Any]] = {}
        text_rows, vector_rows = self._opened(spec, text_rows), self._opened(spec, vector_rows)
        for rows in (text_rows, sorted(vector_rows, key=lambda r: r["distance"])):
            for rank, row in enumerate(rows, start=1):
                fused[row["id"]] = fused.get(row["id"], 0.0) + 1.0 / (k + rank)
                rows_by_id[row["id"]] = row
        best = sorted(fused, key=lambda i: (-fused[i], rows_by_id[i]["distance"]))[:limit]
        if self._telemetry.metrics:
            self._telemetry.search(self.name, "hybrid").observe(perf_counter() - start)
        if self._reads_audited:
            await self._audit_read(best)
        return [
            dataclasses.replace(_result(rows_by_id[i], metric.score), score=fused[i]) for i in best
        ]

    def _query_param(self, vector: Any, spec: CollectionSpec, where: str) -> Any:
        array = as_vector(vector, spec.dimension, spec.storage, where=where)
        return HalfVector(array) if spec.storage == "halfvec" else array

    # -- what it is ----------------------------------------------------------------------------

    @observed("embeddings.describe")
    async def describe(self) -> CollectionInfo:
        """Rows (this tenant's), sizes, bytes per vector, and the index with its validity."""
        await self._spec()  # the default collection is made on first use
        return await indexes.describe(self._db, await self._catalog.load(self.name), self.tenant)


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _slice_rows(spec: CollectionSpec) -> int:
    vector = 8 + spec.dimension * (2 if spec.storage == "halfvec" else 4)
    return max(1, min(_SLICE, _SLICE_BYTES // vector))


async def _vector_oid(conn: AsyncConnection[DictRow], storage: str) -> int:
    # The oid names the elements of the vector array in its binary form. pgvector's types are
    # registered on each pooled connection opened once the extension exists; the catalog
    # answers for the others.
    info = conn.adapters.types.get(storage)
    if info is not None:
        return info.oid
    row = await (await conn.execute("SELECT %s::regtype::oid AS oid", [storage])).fetchone()
    if row is None:  # pragma: no cover - a cast to regtype returns a row or raises
        raise QueryError(f"the type {storage} was not found; is pgvector installed?")
    return int(row["oid"])


def _unencodable(
    exc: UnicodeEncodeError,
    offset: int,
    entity_types: Sequence[str],
    entity_ids: Sequence[str],
    contents: Sequence[str | None],
    encoding: str,
) -> ValidationError:
    """The error naming the first text of the slice the connection's encoding cannot carry."""
    for name, values in (
        ("entity_type", entity_types),
        ("entity_id", entity_ids),
        ("content", contents),
    ):
        for index, value in enumerate(values, start=offset):
            try:
                if value is not None:
                    value.encode(encoding)
            except UnicodeEncodeError:
                where = f"items[{index}].{name}"
                return ValidationError(
                    f"{where} holds characters the database's encoding ({encoding}) cannot "
                    "store, such as unpaired surrogates",
                    field=where,
                )
    return ValidationError(f"items: {exc}", field="items")


def _column_of(values: Any, field: str, count: int) -> builtins.list[Any] | None:
    # One entry per text, or None when the caller gave none.
    if values is None:
        return None
    column = as_items(values, field)
    if len(column) != count:
        raise ValidationError(
            f"{field} has {len(column)} entries for {count} texts; give one per text",
            field=field,
        )
    return column


def _given_id(item: Any) -> Any:
    if isinstance(item, Mapping):
        return item.get("id")
    return getattr(item, "id", None)


def _as_mapping(item: Any, index: int) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    if isinstance(item, Embedding):
        return item.model_dump(include=_ITEM_KEYS)
    raise ValidationError(
        f"items[{index}] is not an Embedding or a mapping, but a {type(item).__name__}",
        field=f"items[{index}]",
    )


def _as_query(raw: Any, index: int) -> _Query:
    where = f"queries[{index}]"
    if isinstance(raw, SimilarityQuery):
        return _checked_query(raw.vector, raw.limit, raw.threshold, raw.filter, f"{where}.")
    if not isinstance(raw, Mapping):
        raise ValidationError(
            f"{where} must be a SimilarityQuery or a mapping with a vector, not "
            f"a {type(raw).__name__}",
            field=where,
        )
    unknown = set(raw) - _QUERY_KEYS
    if unknown:
        raise ValidationError(
            f"{where} has unknown keys {sorted(str(key) for key in unknown)}; a query has "
            f"{', '.join(sorted(_QUERY_KEYS))}",
            field=where,
        )
    if "vector" not in raw:
        raise ValidationError(f"{where}.vector is missing", field=f"{where}.vector")
    return _checked_query(
        raw["vector"], raw.get("limit", 10), raw.get("threshold"), raw.get("filter"), f"{where}."
    )


def _checked_query(vector: Any, limit: Any, threshold: Any, filter_: Any, prefix: str) -> _Query:
    # ``prefix`` names the query in errors: "" for a single search, "queries[2]." in a batch.
    check_int(limit, f"{prefix}limit", 1, MAX_PAGE)
    if threshold is not None:
        check_number(threshold, f"{prefix}threshold")
    return vector, limit, threshold, _parse(filter_, f"{prefix}filter"), f"{prefix}vector"


def _text(value: Any, index: int, name: str, *, blank: bool, limit: int = _MAX_ENTITY) -> str:
    if (
        isinstance(value, str)
        and (blank or value.strip())
        and len(value) <= limit
        and "\x00" not in value
    ):
        return value
    where = f"items[{index}].{name}"
    if not isinstance(value, str):
        raise ValidationError(f"{where} must be a string", field=where)
    if not blank and not value.strip():
        raise ValidationError(f"{where} must not be blank", field=where)
    raise ValidationError(f"{where} is over {limit} characters or holds NUL", field=where)


def _parse(raw: Any, field: str = "filter") -> FilterNode | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValidationError(
            f"{field} must be a dict of conditions (such as {{'kind': 'note'}}), not "
            f"a {type(raw).__name__}",
            field=field,
        )
    if field == "filter":
        return parse_filter(raw)
    # In a batch, say which query's filter: "queries[2].filter.kind.$bogus: ...".
    with located(field):
        return parse_filter(raw)


def _check_rerank(rerank: int) -> None:
    check_int(rerank, "rerank", 1, 100)


def _settings(
    ef_search: int | None, probes: int | None, candidates: int | None
) -> builtins.list[tuple[str, str]]:
    settings: builtins.list[tuple[str, str]] = []
    for name, value, top in (
        ("hnsw.ef_search", ef_search, 1000),
        ("ivfflat.probes", probes, 32768),
    ):
        if value is not None:
            check_int(value, name.split(".")[1], 1, top)
            settings.append((name, str(value)))
    if candidates is not None and ef_search is None:
        # HNSW hands back at most ef_search rows per scan: enough for the candidate pool.
        settings.append(("hnsw.ef_search", str(candidates)))
    return settings


def _result(row: dict[str, Any], score: Callable[[float], float]) -> SimilarityResult:
    vector = row.get("vector")
    return SimilarityResult(
        id=row["id"],
        score=score(row["distance"]),
        distance=row["distance"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        metadata=row["metadata"],
        content=row["content"],
        created_at=row["created_at"],
        vector=vector_to_list(vector) if vector is not None else None,
    )


def _results(
    rows: builtins.list[dict[str, Any]], metric: MetricSpec, threshold: float | None
) -> builtins.list[SimilarityResult]:
    # Iterative index scans in relaxed order may return near-ties out of order: sort here.
    ordered = (_result(row, metric.score) for row in sorted(rows, key=lambda r: r["distance"]))
    return [r for r in ordered if threshold is None or metric.passes(r.score, threshold)]
