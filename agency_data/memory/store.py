"""``dl.memory``: what agents remember, recalled by relevance that decays.

Usage::

    await dl.memory.setup(dimension=384, embedder=model)          # once, as the owner
    memory = dl.tenant("acme").memory
    await memory.remember("planner", "Alice moved to Berlin", subject="alice.home",
                          kind="fact", importance=0.8)
    for hit in await memory.recall("planner", "where does Alice live?", limit=5):
        print(hit.memory.text, hit.score, hit.parts)

A memory's text and vector live in an embedding collection (``memory.collection``, made by
:meth:`ManagedMemory.setup`), so its index, storage and embedder serve recall; the table
``memories`` holds the rest. Recall takes the nearest ``memory.candidates`` from the index and
ranks them in the same statement by a weighted sum of four signals, each in [0, 1]:

- similarity: cosine similarity to the query;
- recency: ``0.5 ** (age / half_life)``, the age counted from when the memory happened, the
  half-life by its kind (``memory.half_lives``, else ``memory.half_life``);
- importance: as remembered (0 to 1);
- access: ``ln(1 + recalls) / ln(1 + memory.access_saturation)``, at most 1.

Scopes: one agent's memories (``recall("planner", ...)``), a team's (a list of agents), or the
whole tenant's (``None``); memories remembered with ``agent_id=None`` are shared and recalled
in every scope. Every version of a memory is kept (:meth:`Memory.history`) with its vector, so
``recall(as_of=t)`` ranks the versions that were current at ``t``.
"""

from __future__ import annotations

import builtins
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from psycopg import sql

from agency_data.config import MemoryConfig, MemoryWeights
from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import (
    as_items,
    brief,
    check_bool,
    check_callable,
    check_datetime,
    check_int,
    check_mapping,
    check_number,
    check_text,
    validated,
)
from agency_data.memory import _sql
from agency_data.memory.access import AccessLog
from agency_data.memory.graph import KnowledgeGraph
from agency_data.memory.models import (
    MemoryChange,
    MemoryRecord,
    MemoryVersion,
    Recalled,
    Remembered,
    ScoreParts,
)
from agency_data.observability import observed
from agency_data.outbox.changes import ChangeFeed, Changes
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors
from agency_data.security.fields import COLLECTION_COLUMNS
from agency_data.vectors.admin import CollectionAdmin
from agency_data.vectors.catalog import Catalog, CollectionSpec
from agency_data.vectors.collection import Collection
from agency_data.vectors.compat import HalfVector, vector_to_list
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.filter_ast import FilterNode, parse_filter
from agency_data.vectors.validation import as_vector

__all__ = ["ManagedMemory", "Memory"]

_MAX_AGENT = 512
_MAX_TEXT = 100_000
_MAX_LIMIT = 1_000
# The change feed carries these columns of a memory, never its text (see migration 0018).
CHANGE_COLUMNS = ("id", "agent_id", "kind", "version", "forgotten_at")
Query = str | Sequence[float] | npt.NDArray[Any]
Summariser = Callable[[list[MemoryRecord]], str | Awaitable[str]]


class Memory:
    """A tenant's agent memory (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tenant: str,
        config: MemoryConfig,
        feed: ChangeFeed | None = None,
        *,
        collection: str | None = None,
    ) -> None:
        self._db = db
        self._telemetry = db.telemetry
        self._catalog = catalog
        self.tenant = tenant
        self._config = config
        self._feed = feed
        self.collection = collection or config.collection
        self._rows = Collection(db, catalog, tenant, self.collection)
        self._embedder: Embedder | None = None
        self._access = AccessLog(db, tenant, config.access_flush)
        self._scoring = _sql.Scoring(
            config.weights, dict(config.half_lives), config.half_life, config.access_saturation
        )
        self.graph = KnowledgeGraph(db, tenant)

    async def aclose(self) -> None:
        """Write the recall counts still gathered."""
        await self._access.aclose()

    def with_embedder(self, embedder: Any) -> Memory:
        """This memory, embedding texts with ``embedder`` (any of those
        :mod:`agency_data.vectors.embedders` takes)."""
        view = self._view(self.collection)
        view._embedder = Embedder.of(embedder)
        return view

    def using(self, collection: str) -> Memory:
        """The memories kept in another collection (one made by ``setup(collection=...)``)."""
        return self._view(collection)

    def _view(self, collection: str) -> Memory:
        view = Memory(
            self._db, self._catalog, self.tenant, self._config, self._feed, collection=collection
        )
        view._embedder = self._embedder
        view._access = self._access
        return view

    # -- remembering ---------------------------------------------------------------------------

    @observed("memory.remember")
    async def remember(
        self,
        agent_id: str | None,
        content: Query,
        *,
        text: str | None = None,
        kind: str = "fact",
        importance: float = 0.5,
        metadata: Mapping[str, Any] | None = None,
        subject: str | None = None,
        at: datetime | None = None,
        dedup: bool | float = True,
    ) -> Remembered:
        """Remember ``content`` (a text, embedded by the collection's embedder, or a vector
        with an optional ``text``) for ``agent_id`` (None: shared by the tenant's agents).

        ``at`` is when it happened (default: now); recency decays from there. With ``dedup``
        (on by default, the bound ``memory.dedup``; a number sets another), a live memory of
        the same agent and ``subject`` at least that similar is updated instead of a
        near-copy being added: its text and vector become the new ones (``updated``; the old
        version stays in its history), or, when the text is the same, only its importance,
        metadata and time are refreshed (``merged``).
        """
        agent = _agent(agent_id)
        kind = _kind(kind)
        weight = check_number(importance, "importance", low=0.0, high=1.0)
        extra = check_mapping(metadata, "metadata") if metadata is not None else {}
        topic = None if subject is None else check_text(subject, "subject", max_length=512)
        _nonblank(topic, "subject")
        when = None if at is None else check_datetime(at, "at")
        bound = _dedup(dedup, self._config.dedup)
        spec = await self._spec()
        vector, words = await self._content(content, text, spec)
        async with self._db.transaction():
            with translate_errors("remembering"):
                if bound is not None:
                    # Two agents remembering the same subject at once must meet one memory.
                    await self._db.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        [f"memory:{self.tenant}:{self.collection}:{agent}:{topic}"],
                    )
                    found = await self._db.fetch_one(
                        *_sql.duplicate_sql(
                            spec, self.tenant, self.collection, agent, topic, _param(vector, spec)
                        )
                    )
                    if found is not None and 1.0 - found["distance"] >= bound:
                        return await self._update(
                            found, spec, vector, words, kind, weight, extra, when
                        )
                return await self._create(
                    spec, agent, vector, words, kind, weight, extra, topic, when
                )

    async def _create(
        self,
        spec: CollectionSpec,
        agent: str | None,
        vector: npt.NDArray[np.float32],
        text: str | None,
        kind: str,
        importance: float,
        metadata: dict[str, Any],
        subject: str | None,
        at: datetime | None,
    ) -> Remembered:
        memory_id = str(uuid.uuid4())
        row = await self._db.fetch_one(
            "INSERT INTO memories (tenant_id, id, collection, agent_id, kind, subject, "
            "importance, happened_at) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "coalesce(%s, clock_timestamp())) RETURNING happened_at",
            [self.tenant, memory_id, self.collection, agent, kind, subject, importance, at],
        )
        assert row is not None
        await self._store_row(memory_id, agent, kind, vector, metadata, text)
        await self._record(
            memory_id, 1, "created", agent, kind, subject, text, metadata, importance,
            row["happened_at"], vector,
        )  # fmt: skip
        return Remembered(id=memory_id, event="created", version=1)

    async def _update(
        self,
        found: dict[str, Any],
        spec: CollectionSpec,
        vector: npt.NDArray[np.float32],
        text: str | None,
        kind: str,
        importance: float,
        metadata: dict[str, Any],
        at: datetime | None,
    ) -> Remembered:
        memory_id = found["id"]
        old = self._opened(spec, found)
        same = text is None or text == old["content"]
        merged = {**(old["metadata"] or {}), **metadata}
        row = await self._db.fetch_one(
            "UPDATE memories SET importance = greatest(importance, %s), "
            "happened_at = greatest(happened_at, coalesce(%s, clock_timestamp())), kind = %s, "
            "updated_at = clock_timestamp(), version = version + 1 "
            "WHERE tenant_id = %s AND id = %s "
            "RETURNING version, agent_id, subject, importance, happened_at",
            [importance, at, kind, self.tenant, memory_id],
        )
        assert row is not None
        await self._close_version(memory_id)
        if same:
            # A restatement: the memory keeps its text and vector.
            stored_text = old["content"]
            stored_vector = await self._vector_of(spec, memory_id)
        else:
            stored_text, stored_vector = text, vector
        await self._store_row(memory_id, row["agent_id"], kind, stored_vector, merged, stored_text)
        event: Literal["updated", "merged"] = "merged" if same else "updated"
        await self._record(
            memory_id, row["version"], event, row["agent_id"], kind, row["subject"],
            stored_text, merged, row["importance"], row["happened_at"], stored_vector,
        )  # fmt: skip
        return Remembered(
            id=memory_id,
            event=event,
            version=row["version"],
            similarity=1.0 - float(found["distance"]),
        )

    async def _vector_of(self, spec: CollectionSpec, memory_id: str) -> npt.NDArray[np.float32]:
        value = await self._db.fetch_value(
            sql.SQL("SELECT vector FROM {} WHERE tenant_id = %s AND id = %s").format(spec.table_id),
            [self.tenant, memory_id],
        )
        return np.asarray(vector_to_list(value), np.float32)

    async def _store_row(
        self,
        memory_id: str,
        agent: str | None,
        kind: str,
        vector: npt.NDArray[np.float32],
        metadata: dict[str, Any],
        text: str | None,
    ) -> None:
        # Through the collection, which seals the text and metadata when they are chosen.
        await self._rows.store(
            {
                "id": memory_id,
                "entity_type": kind,
                "entity_id": agent or "",
                "vector": vector,
                "metadata": metadata,
                "content": text,
            }
        )

    async def _close_version(self, memory_id: str) -> None:
        await self._db.execute(
            "UPDATE memory_history SET valid_to = clock_timestamp() "
            "WHERE tenant_id = %s AND memory_id = %s AND valid_to IS NULL",
            [self.tenant, memory_id],
        )

    async def _record(
        self,
        memory_id: str,
        version: int,
        event: str,
        agent: str | None,
        kind: str,
        subject: str | None,
        text: str | None,
        metadata: dict[str, Any] | None,
        importance: float | None,
        happened_at: datetime | None,
        vector: npt.NDArray[np.float32] | None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, "
            "agent_id, kind, subject, text, metadata, importance, happened_at, embedding) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                self.tenant, memory_id, version, event, self.collection, agent, kind, subject,
                text, _json(metadata), importance, happened_at, vector,
            ],
        )  # fmt: skip

    # -- recalling -----------------------------------------------------------------------------

    @observed("memory.recall")
    async def recall(
        self,
        agent_id: str | Iterable[str] | None,
        query: Query,
        *,
        limit: int = 5,
        filter: Mapping[str, Any] | None = None,
        kinds: Iterable[str] | None = None,
        as_of: datetime | None = None,
        weights: MemoryWeights | Mapping[str, float] | None = None,
        shared: bool = True,
        expand: bool = False,
    ) -> list[Recalled]:
        """The best ``limit`` memories for ``query`` (a text or a vector), best first.

        ``agent_id``: one agent, a team (several agents) or None (the whole tenant); memories
        shared with every agent come too unless ``shared=False``. ``filter`` applies to the
        memories' metadata (the collections' filter language), ``kinds`` to their kinds.
        ``as_of`` ranks the versions current at that time, as of then. ``weights`` replaces
        ``memory.weights`` for this call. With ``expand``, each result carries the entities
        it mentions and the facts among them (the knowledge graph, as of ``as_of``).
        Each result's ``parts`` add up to its score. Recall counts are written in batches.
        """
        agents = _scope(agent_id, check_bool(shared, "shared"))
        count = check_int(limit, "limit", 1, _MAX_LIMIT)
        node = _filter(filter)
        chosen = None if kinds is None else [_kind(k) for k in as_items(kinds, "kinds")]
        when = None if as_of is None else check_datetime(as_of, "as_of")
        scoring = self._scoring if weights is None else self._weighted(weights)
        check_bool(expand, "expand")
        spec = await self._spec()
        vector = await self._query(query, spec)
        candidates = max(self._config.candidates, count)
        statement, params = _sql.recall_sql(
            spec,
            self.tenant,
            self.collection,
            _param(vector, spec) if when is None else vector,
            agents=agents,
            kinds=chosen,
            node=node,
            candidates=candidates,
            limit=count,
            scoring=scoring,
            as_of=when,
        )
        settings = [("hnsw.ef_search", str(candidates))] if candidates > 40 else []
        with translate_errors("recalling"):
            (rows,) = await self._db.fetch_many([(statement, params)], settings=settings)
        results = [self._recalled(spec, row) for row in rows]
        if when is None:
            self._access.add(hit.memory.id for hit in results)
        if expand and results:
            found = await self.graph.about([hit.memory.id for hit in results], as_of=when)
            results = [
                hit.model_copy(
                    update={
                        "entities": found.get(hit.memory.id, ([], []))[0],
                        "relations": found.get(hit.memory.id, ([], []))[1],
                    }
                )
                for hit in results
            ]
        return results

    def _weighted(self, weights: MemoryWeights | Mapping[str, float]) -> _sql.Scoring:
        chosen = (
            weights
            if isinstance(weights, MemoryWeights)
            else validated(MemoryWeights, check_mapping(weights, "weights"))
        )
        base = self._scoring
        return _sql.Scoring(chosen, base.half_lives, base.default_half_life, base.saturation)

    def _recalled(self, spec: CollectionSpec, row: dict[str, Any]) -> Recalled:
        row = self._opened(spec, row)
        memory = MemoryRecord(
            id=row["id"],
            agent_id=row["agent_id"],
            kind=row["kind"],
            subject=row["subject"],
            text=row["content"],
            metadata=row["metadata"] or {},
            importance=row["importance"],
            happened_at=row["happened_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            version=row["version"],
            access_count=row["access_count"],
            last_accessed_at=row["last_accessed_at"],
        )
        return Recalled(
            memory=memory,
            score=row["score"],
            parts=ScoreParts(
                similarity=row["p_similarity"],
                recency=row["p_recency"],
                importance=row["p_importance"],
                access=row["p_access"],
            ),
            signals=ScoreParts(
                similarity=row["s_similarity"],
                recency=row["s_recency"],
                importance=row["s_importance"],
                access=row["s_access"],
            ),
        )

    async def flush(self) -> int:
        """Write the recall counts gathered so far now (they are written every
        ``memory.access_flush`` seconds and on close); return how many memories they touched."""
        return await self._access.flush()

    # -- reading -------------------------------------------------------------------------------

    @observed("memory.get")
    async def get(self, memory_id: str) -> MemoryRecord:
        """The memory ``memory_id`` (forgotten ones too: their ``forgotten_at`` is set)."""
        wanted = _memory_id(memory_id)
        found = await self._select(ids=[wanted], forgotten=True)
        if not found:
            raise NotFound(f"memory {wanted!r} does not exist", entity="memory", key=wanted)
        return found[0]

    @observed("memory.list")
    async def list(
        self,
        agent_id: str | None = None,
        *,
        shared: bool = False,
        subject: str | None = None,
        kind: str | None = None,
        filter: Mapping[str, Any] | None = None,
        forgotten: bool = False,
        limit: int = 100,
    ) -> builtins.list[MemoryRecord]:
        """Memories newest first: of ``agent_id`` (None: every agent), only the shared ones
        (``shared=True``), of ``subject`` or ``kind``, matching ``filter`` (metadata), the
        forgotten ones too with ``forgotten=True``."""
        return await self._select(
            agent=_agent(agent_id),
            shared=check_bool(shared, "shared"),
            subject=None if subject is None else check_text(subject, "subject", max_length=512),
            kind=None if kind is None else _kind(kind),
            node=_filter(filter),
            forgotten=check_bool(forgotten, "forgotten"),
            limit=check_int(limit, "limit", 1, 10_000),
        )

    async def _select(self, **criteria: Any) -> builtins.list[MemoryRecord]:
        spec = await self._spec()
        query, params = _sql.select_sql(spec, self.tenant, self.collection, **criteria)
        with translate_errors("reading memories"):
            rows = await self._db.fetch(query, params)
        return [_record(self._opened(spec, row)) for row in rows]

    @observed("memory.history")
    async def history(self, memory_id: str) -> builtins.list[MemoryVersion]:
        """Every version of the memory, oldest first, with its time and actor; a forgetting
        is an entry without text."""
        wanted = _memory_id(memory_id)
        with translate_errors("reading a memory's history"):
            rows = await self._db.fetch(
                "SELECT " + _sql.HISTORY_COLUMNS + " FROM memory_history "
                "WHERE tenant_id = %s AND memory_id = %s ORDER BY version",
                [self.tenant, wanted],
            )
        if not rows:
            raise NotFound(f"memory {wanted!r} does not exist", entity="memory", key=wanted)
        return [MemoryVersion(**row) for row in rows]

    # -- forgetting ----------------------------------------------------------------------------

    @observed("memory.forget")
    async def forget(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        agent_id: str | None = None,
        subject: str | None = None,
        filter: Mapping[str, Any] | None = None,
        hard: bool = False,
    ) -> int:
        """Forget memories by id, or all of ``agent_id``'s (and/or of ``subject``, matching
        ``filter``); return how many.

        Soft (the default): they are no longer recalled or listed, their history stays, with
        the forgetting as its last entry. ``hard`` (erasure): the memory, every version of
        it, its vector and the graph's facts learned from it are deleted.
        """
        chosen = None if ids is None else _ids(ids)
        agent = _agent(agent_id)
        topic = None if subject is None else check_text(subject, "subject", max_length=512)
        node = _filter(filter)
        check_bool(hard, "hard")
        if chosen is None and agent is None and topic is None and node is None:
            raise ValidationError(
                "forget needs ids, agent_id, subject or filter: it never forgets everything "
                "by default",
                field="ids",
            )
        spec = await self._spec()
        async with self._db.transaction():
            with translate_errors("forgetting"):
                query, params = _sql.select_sql(
                    spec,
                    self.tenant,
                    self.collection,
                    ids=chosen,
                    agent=agent,
                    subject=topic,
                    node=node,
                    forgotten=hard,
                    lock=True,
                )
                rows = await self._db.fetch(query, params)
                return await self._forget_rows(spec, rows, hard=hard)

    async def _forget_rows(
        self,
        spec: CollectionSpec,
        rows: builtins.list[dict[str, Any]],
        *,
        hard: bool,
        event: Literal["forgotten", "consolidated"] = "forgotten",
        into: str | None = None,
    ) -> int:
        ids = [row["id"] for row in rows]
        if not ids:
            return 0
        await self._db.execute(
            sql.SQL("DELETE FROM {} WHERE tenant_id = %s AND id = ANY(%s)").format(spec.table_id),
            [self.tenant, ids],
        )
        if hard:
            # Versions, links and the graph's facts learned from them go by ON DELETE CASCADE.
            return await self._db.execute(
                "DELETE FROM memories WHERE tenant_id = %s AND id = ANY(%s)", [self.tenant, ids]
            )
        await self._db.execute(
            "UPDATE memory_history SET valid_to = clock_timestamp() "
            "WHERE tenant_id = %s AND memory_id = ANY(%s) AND valid_to IS NULL",
            [self.tenant, ids],
        )
        await self._db.execute(
            "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, "
            "agent_id, kind, subject, valid_to) "
            "SELECT tenant_id, id, version + 1, %s, collection, agent_id, kind, subject, "
            "clock_timestamp() FROM memories WHERE tenant_id = %s AND id = ANY(%s)",
            [event, self.tenant, ids],
        )
        return await self._db.execute(
            "UPDATE memories SET forgotten_at = clock_timestamp(), version = version + 1, "
            "consolidated_into = %s WHERE tenant_id = %s AND id = ANY(%s)",
            [into, self.tenant, ids],
        )

    # -- consolidating and pruning -------------------------------------------------------------

    @observed("memory.consolidate")
    async def consolidate(
        self,
        agent_id: str | None,
        summarise: Summariser,
        *,
        older_than: float | timedelta = 7 * 86_400.0,
        max_importance: float = 0.3,
        min_group: int = 2,
        kind: str = "summary",
    ) -> builtins.list[Remembered]:
        """Replace each subject's old, unimportant memories of ``agent_id`` by one summary.

        Memories that happened more than ``older_than`` ago with importance at most
        ``max_importance`` are grouped by subject (those without one form a group); a group
        of ``min_group`` or more goes to ``summarise`` (any callable, plain or async, taking
        the memories oldest first and returning the summary's text; nothing here calls a
        model by itself). The summary is remembered as a memory of ``kind`` with the group's
        subject, highest importance and latest time; the memories it replaced are forgotten
        with ``consolidated_into`` naming it, and :meth:`replaced` lists them. The summary is
        embedded by the memory's embedder, or, without one, placed at the normalised mean of
        the vectors it replaces. A group that changed while it was being summarised is left
        for the next run.
        """
        agent = _agent(agent_id)
        check_callable(summarise, "summarise")
        age = _seconds(older_than, "older_than")
        ceiling = check_number(max_importance, "max_importance", low=0.0, high=1.0)
        smallest = check_int(min_group, "min_group", 2, 10_000)
        kind = _kind(kind)
        spec = await self._spec()
        query = sql.SQL(
            "SELECT {} FROM memories m JOIN {} e ON e.tenant_id = m.tenant_id AND e.id = m.id "
            "WHERE m.tenant_id = %s AND m.collection = %s AND {} AND m.forgotten_at IS NULL "
            "AND m.importance <= %s AND m.happened_at < now() - make_interval(secs => %s) "
            "ORDER BY m.subject NULLS FIRST, m.happened_at, m.id"
        ).format(
            sql.SQL(_sql.MEMORY_COLUMNS),
            spec.table_id,
            sql.SQL("m.agent_id = %s" if agent is not None else "m.agent_id IS NULL"),
        )
        params = [self.tenant, self.collection, *([agent] if agent else []), ceiling, age]
        with translate_errors("choosing memories to consolidate"):
            rows = await self._db.fetch(query, params)
        groups: dict[str | None, builtins.list[MemoryRecord]] = {}
        for row in rows:
            record = _record(self._opened(spec, row))
            groups.setdefault(record.subject, []).append(record)
        made = []
        for subject, members in groups.items():
            if len(members) < smallest:
                continue
            summary = await _summary(summarise, members)
            done = await self._replace(spec, agent, subject, members, summary, kind)
            if done is not None:
                made.append(done)
        return made

    async def _replace(
        self,
        spec: CollectionSpec,
        agent: str | None,
        subject: str | None,
        members: builtins.list[MemoryRecord],
        summary: str,
        kind: str,
    ) -> Remembered | None:
        ids = [m.id for m in members]
        vector = await self._summary_vector(summary, spec, ids)
        async with self._db.transaction():
            with translate_errors("consolidating"):
                rows = await self._db.fetch(
                    "SELECT id, version FROM memories WHERE tenant_id = %s AND id = ANY(%s) "
                    "AND forgotten_at IS NULL ORDER BY id FOR UPDATE",
                    [self.tenant, ids],
                )
                if {(r["id"], r["version"]) for r in rows} != {(m.id, m.version) for m in members}:
                    return None
                made = await self._create(
                    spec,
                    agent,
                    vector,
                    summary,
                    kind,
                    max(m.importance for m in members),
                    {"consolidated": len(members)},
                    subject,
                    max(m.happened_at for m in members),
                )
                await self._db.execute(
                    "INSERT INTO memory_links (tenant_id, summary_id, replaced_id) "
                    "SELECT %s, %s, unnest(%s::text[])",
                    [self.tenant, made.id, ids],
                )
                await self._forget_rows(spec, rows, hard=False, event="consolidated", into=made.id)
        return made

    async def _summary_vector(
        self, summary: str, spec: CollectionSpec, ids: builtins.list[str]
    ) -> npt.NDArray[np.float32]:
        if self.embedder is not None:
            return await self._embed(summary, spec)
        # Memories remembered as vectors: the summary sits at their normalised mean.
        rows = await self._db.fetch(
            sql.SQL("SELECT vector FROM {} WHERE tenant_id = %s AND id = ANY(%s)").format(
                spec.table_id
            ),
            [self.tenant, ids],
        )
        mean = np.mean([vector_to_list(r["vector"]) for r in rows], axis=0)
        norm = float(np.linalg.norm(mean))
        return np.asarray(mean / norm if norm else mean, np.float32)

    @observed("memory.replaced")
    async def replaced(self, summary_id: str) -> builtins.list[MemoryRecord]:
        """The memories a consolidation summary replaced, oldest first."""
        wanted = _memory_id(summary_id)
        with translate_errors("reading a summary's links"):
            rows = await self._db.fetch(
                "SELECT replaced_id FROM memory_links WHERE tenant_id = %s AND summary_id = %s",
                [self.tenant, wanted],
            )
        found = await self._select(ids=[r["replaced_id"] for r in rows], forgotten=True)
        return sorted(found, key=lambda m: (m.happened_at, m.id))

    @observed("memory.prune")
    async def prune(
        self,
        agent_id: str | None = None,
        *,
        older_than: float | timedelta | None = None,
        below_importance: float | None = None,
        keep: int | None = None,
        hard: bool = False,
    ) -> int:
        """Forget memories by policy; return how many.

        A memory goes when it is older than ``older_than`` and less important than
        ``below_importance`` (those given), or when its agent has more than ``keep`` live
        memories and it is not among the ``keep`` most important (newest first among equals).
        ``agent_id`` None: every agent's. ``hard`` deletes them as :meth:`forget` does.
        """
        agent = _agent(agent_id)
        age = None if older_than is None else _seconds(older_than, "older_than")
        floor = (
            None
            if below_importance is None
            else check_number(below_importance, "below_importance", low=0.0, high=1.0)
        )
        most = None if keep is None else check_int(keep, "keep", 0, 10**9)
        check_bool(hard, "hard")
        if age is None and floor is None and most is None:
            raise ValidationError(
                "prune needs older_than, below_importance or keep", field="older_than"
            )
        spec = await self._spec()
        conditions = [sql.SQL("m.tenant_id = %s AND m.collection = %s AND m.forgotten_at IS NULL")]
        params: builtins.list[Any] = [self.tenant, self.collection]
        if agent is not None:
            conditions.append(sql.SQL("m.agent_id = %s"))
            params.append(agent)
        policy: builtins.list[sql.Composable] = []
        if age is not None or floor is not None:
            parts = []
            if age is not None:
                parts.append(sql.SQL("m.happened_at < now() - make_interval(secs => %s)"))
                params.append(age)
            if floor is not None:
                parts.append(sql.SQL("m.importance < %s"))
                params.append(floor)
            policy.append(sql.SQL("({})").format(sql.SQL(" AND ").join(parts)))
        if most is not None:
            policy.append(
                sql.SQL(
                    "m.id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY "
                    "agent_id ORDER BY importance DESC, happened_at DESC, id) AS rank "
                    "FROM memories WHERE tenant_id = %s AND collection = %s "
                    "AND forgotten_at IS NULL) AS r WHERE rank > %s)"
                )
            )
            params += [self.tenant, self.collection, most]
        query = sql.SQL(
            "SELECT m.id FROM memories m WHERE {} AND ({}) ORDER BY m.id FOR UPDATE"
        ).format(sql.SQL(" AND ").join(conditions), sql.SQL(" OR ").join(policy))
        async with self._db.transaction():
            with translate_errors("pruning memories"):
                rows = await self._db.fetch(query, params)
                return await self._forget_rows(spec, rows, hard=hard)

    # -- the change feed -----------------------------------------------------------------------

    async def changes(
        self,
        *,
        since: str | None = None,
        consumer: str | None = None,
        batch: int = 100,
        wait: bool = True,
    ) -> Any:
        """Memories created, updated and forgotten, in commit order: an async iterator of
        :class:`MemoryChange` (the change feed of ``memories``; ``dl.memory.setup`` tracks
        it). ``since``/``consumer``/``batch``/``wait`` as for ``dl.changes``. A change carries
        the memory's id, agent, kind and version, never its text: ``get`` reads it."""
        if self._feed is None:
            raise ValidationError("this memory view has no change feed", field="changes")
        feed = self._feed(["memories"], since=since, consumer=consumer, batch=batch, wait=wait)
        return _memory_changes(feed)

    # -- helpers -------------------------------------------------------------------------------

    async def _spec(self) -> CollectionSpec:
        try:
            spec = await self._catalog.get(self.collection)
        except NotFound:
            raise NotFound(
                f"memory collection {self.collection!r} does not exist: run "
                "dl.memory.setup(dimension=...) once (as the owner) to make it",
                entity="collection",
                key=self.collection,
            ) from None
        return spec

    def _opened(self, spec: CollectionSpec, row: dict[str, Any]) -> dict[str, Any]:
        return self._db.cipher.open_row(self.tenant, spec.table, row, COLLECTION_COLUMNS)

    @property
    def embedder(self) -> Embedder | None:
        """The text embedder of this memory (given here, or to ``setup``), if any."""
        return self._embedder or self._catalog.embedders.get(self.collection)

    def _embedder_or_fail(self) -> Embedder:
        embedder = self.embedder
        if embedder is None:
            raise ValidationError(
                f"remembering or recalling a text needs an embedder and memory collection "
                f"{self.collection!r} has none here: pass embedder= to dl.memory.setup, or use "
                "memory.with_embedder(model); or pass a vector",
                field="embedder",
            )
        return embedder

    async def _embed(self, text: str, spec: CollectionSpec) -> npt.NDArray[np.float32]:
        matrix = await self._embedder_or_fail().documents([text], spec.dimension)
        row: npt.NDArray[np.float32] = matrix[0]
        return row

    async def _content(
        self, content: Any, text: str | None, spec: CollectionSpec
    ) -> tuple[npt.NDArray[np.float32], str | None]:
        if isinstance(content, str):
            if text is not None:
                raise ValidationError(
                    "text= goes with a vector: the content is already a text", field="text"
                )
            said = check_text(content, "content", max_length=_MAX_TEXT)
            _nonblank(said, "content")
            return await self._embed(said, spec), said
        words = None if text is None else check_text(text, "text", max_length=_MAX_TEXT)
        return as_vector(content, spec.dimension, spec.storage, where="content"), words

    async def _query(self, query: Any, spec: CollectionSpec) -> npt.NDArray[np.float32]:
        if isinstance(query, str):
            _nonblank(check_text(query, "query", max_length=_MAX_TEXT), "query")
            return await self._embedder_or_fail().query(query, spec.dimension)
        return as_vector(query, spec.dimension, spec.storage, where="query")


class ManagedMemory(Memory):
    """The default tenant's agent memory, plus setting it up (as the owner)."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tenant: str,
        config: MemoryConfig,
        feed: ChangeFeed | None,
        admin: CollectionAdmin,
        changes: Changes,
    ) -> None:
        super().__init__(db, catalog, tenant, config, feed)
        self._admin = admin
        self._changes = changes

    async def setup(
        self,
        dimension: int,
        *,
        embedder: Any = None,
        collection: str | None = None,
        storage: str = "vector",
        index: bool = True,
    ) -> None:
        """Make the memory collection (cosine, ``dimension``) with an HNSW index, and track
        ``memories`` in the change feed; a collection already there is kept (its dimension
        must match). ``embedder`` embeds texts in this DataLayer (give it again, here or to
        ``with_embedder``, in the next process). Idempotent."""
        name = collection or self.collection
        chosen = None if embedder is None else Embedder.of(embedder)
        await self._admin.create_collection(name, dimension, "cosine", storage, exist_ok=True)
        # Made with exist_ok: one of another shape is a Conflict that says so.
        spec = await self._catalog.get(name)
        if index and spec.index_kind is None:
            await self._admin.create_index(name, "hnsw")
        if chosen is not None:
            self._catalog.embedders[name] = chosen
        if "memories" not in await self._changes.tracked():
            await self._changes.track("memories", list(CHANGE_COLUMNS))


async def _memory_changes(feed: Any) -> Any:
    async for change in feed:
        values = change.new if change.new is not None else (change.old or {})
        yield MemoryChange(
            cursor=change.cursor,
            op=change.op,
            memory_id=change.id,
            agent_id=values.get("agent_id"),
            kind=values.get("kind"),
            version=values.get("version"),
            forgotten=change.op == "delete" or values.get("forgotten_at") is not None,
            committed_at=change.committed_at,
        )


async def _summary(summarise: Summariser, members: builtins.list[MemoryRecord]) -> str:
    made = summarise(list(members))
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, str) or not made.strip():
        raise ValidationError(
            f"summarise must return the summary's text, not {brief(made)}", field="summarise"
        )
    return check_text(made, "summary", max_length=_MAX_TEXT)


def _record(row: dict[str, Any]) -> MemoryRecord:
    return MemoryRecord(
        id=row["id"],
        agent_id=row["agent_id"],
        kind=row["kind"],
        subject=row["subject"],
        text=row["content"],
        metadata=row["metadata"] or {},
        importance=row["importance"],
        happened_at=row["happened_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        access_count=row["access_count"],
        last_accessed_at=row["last_accessed_at"],
        forgotten_at=row["forgotten_at"],
        consolidated_into=row["consolidated_into"],
    )


def _param(vector: npt.NDArray[np.float32], spec: CollectionSpec) -> Any:
    return HalfVector(vector) if spec.storage == "halfvec" else vector


def _json(value: dict[str, Any] | None) -> Any:
    from psycopg.types.json import Jsonb

    return None if value is None else Jsonb(value)


def _agent(agent_id: Any) -> str | None:
    if agent_id is None:
        return None
    agent = check_text(agent_id, "agent_id", max_length=_MAX_AGENT)
    _nonblank(agent, "agent_id")
    return agent


def _scope(agent_id: Any, shared: bool) -> builtins.list[str] | None:
    if agent_id is None:
        return None
    if isinstance(agent_id, str):
        agents = [_agent(agent_id) or ""]
    else:
        agents = [_agent(a) or "" for a in as_items(agent_id, "agent_id", most=10_000)]
        if not agents:
            raise ValidationError(
                "agent_id names no agent: give one, a team of several, or None for the tenant",
                field="agent_id",
            )
    return [*agents, ""] if shared else agents


def _kind(kind: Any) -> str:
    value = check_text(kind, "kind", max_length=64)
    _nonblank(value, "kind")
    return value


def _memory_id(value: Any) -> str:
    found = check_text(value, "memory_id", max_length=512)
    _nonblank(found, "memory_id")
    return found


def _ids(ids: Any) -> builtins.list[str]:
    if isinstance(ids, str):
        return [_memory_id(ids)]
    return [_memory_id(i) for i in as_items(ids, "ids", most=100_000)]


def _nonblank(value: str | None, field: str) -> None:
    if value is not None and not value.strip():
        raise ValidationError(f"{field} is blank", field=field)


def _dedup(dedup: Any, default: float) -> float | None:
    if isinstance(dedup, bool):
        return default if dedup else None
    return check_number(dedup, "dedup", low=0.0, high=1.0)


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return check_number(value, field, low=0.0, high=100 * 366 * 86_400.0)


def _filter(raw: Any) -> FilterNode | None:
    return None if raw is None else parse_filter(raw)
