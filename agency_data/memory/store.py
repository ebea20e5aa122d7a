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
import copy
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from agency_data.config import MemoryConfig, MemoryWeights
from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import (
    as_items,
    check_bool,
    check_datetime,
    check_int,
    check_mapping,
    check_number,
    located,
    validated,
)
from agency_data.memory import _sql
from agency_data.memory._base import Query
from agency_data.memory._checks import (
    check_agent,
    check_dedup,
    check_ids,
    check_kind,
    check_memory_id,
    check_scope,
    check_subject,
    json_object,
    matches_all,
    memory_record,
    optional_filter,
    vector_param,
)
from agency_data.memory.models import (
    MemoryChange,
    MemoryRecord,
    MemoryVersion,
    Recalled,
    Remembered,
    ScoreParts,
)
from agency_data.memory.upkeep import Upkeep
from agency_data.observability import observed
from agency_data.outbox.changes import ChangeFeed, Changes
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors
from agency_data.vectors.admin import CollectionAdmin
from agency_data.vectors.catalog import Catalog, CollectionSpec, check_name
from agency_data.vectors.embedders import Embedder

__all__ = ["ManagedMemory", "Memory"]

_MAX_LIMIT = 1_000
# The change feed carries these columns of a memory, never its text (see migration 0018).
CHANGE_COLUMNS = ("id", "agent_id", "kind", "version", "forgotten_at")


class Memory(Upkeep):
    """A tenant's agent memory (see the module's docstring)."""

    def with_embedder(self, embedder: Any) -> Self:
        """This memory, embedding texts with ``embedder`` (any of those
        :mod:`agency_data.vectors.embedders` takes)."""
        view = copy.copy(self)
        view._embedder = Embedder.of(embedder)
        return view

    def using(self, collection: str) -> Self:
        """The memories kept in another collection (one made by ``setup(collection=...)``),
        embedded by its own embedder unless this view was given one."""
        view = copy.copy(self)
        view.collection = check_name(collection, "collection")
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
        version stays in its history), or stay when the text is the same (``merged``); either
        way it takes the new kind, the higher importance, the later time and the new metadata
        keys over the old.
        """
        agent = check_agent(agent_id)
        kind = check_kind(kind)
        weight = check_number(importance, "importance", low=0.0, high=1.0)
        _, extra = json_object(metadata, "metadata", self._db.config.max_json_bytes)
        topic = check_subject(subject)
        when = None if at is None else check_datetime(at, "at")
        bound = check_dedup(dedup, self._config.dedup)
        spec = await self._spec()
        vector, words = await self._content(content, text, spec)
        async with self._db.transaction():
            with translate_errors("remembering"):
                if bound is not None:
                    # Two agents remembering the same subject at once must meet one memory:
                    # the lock, then the look, in one round trip. (Without a subject nothing
                    # is locked: all of an agent's remembers would queue behind one lock, for
                    # the rare near-copy two concurrent ones might add.)
                    lookup = _sql.duplicate_sql(
                        spec, self.tenant, self.collection, agent, topic, vector_param(vector, spec)
                    )
                    lock = (
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        [f"memory:{self.tenant}:{self.collection}:{agent}:{topic}"],
                    )
                    *_, found_rows = await self._db.fetch_many(
                        [lookup] if topic is None else [lock, lookup]
                    )
                    found = found_rows[0] if found_rows else None
                    if found is not None and 1.0 - found["distance"] >= bound:
                        updated = await self._update(
                            found, spec, vector, words, kind, weight, extra, when
                        )
                        if updated is not None:
                            return updated
                return await self._create(
                    spec, agent, vector, words, kind, weight, extra, topic, when
                )

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
    ) -> Remembered | None:
        memory_id = found["id"]
        old = self._opened(spec, found)
        same = text is None or text == old["content"]
        event: Literal["updated", "merged"] = "merged" if same else "updated"
        version = found["version"] + 1
        kept = old["content"] if same else text
        params = {
            "tenant": self.tenant,
            "id": memory_id,
            "version": found["version"],
            "collection": self.collection,
            "kind": kind,
            "importance": importance,
            "at": at,
            "event": event,
            # A restatement keeps the memory's text and vector.
            "embedding": None if same else vector,
            **await self._sealed(
                spec,
                memory_id,
                version,
                kept,
                {**(old["metadata"] or {}), **metadata},
                None if same else vector,
            ),
        }
        row = await self._db.fetch_one(_sql.update_sql(spec.table), params)
        if row is None:
            # Forgotten or changed since it was found: what was said is a memory of its own.
            return None
        return Remembered(
            id=memory_id,
            event=event,
            version=row["version"],
            similarity=1.0 - float(found["distance"]),
        )

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
        the configured weights it names, for this call. With ``expand``, each result carries the entities
        it mentions and the facts among them (the knowledge graph, as of ``as_of``).
        Each result's ``parts`` add up to its score. Recall counts are written in batches.
        """
        with_shared = check_bool(shared, "shared")
        agents = check_scope(agent_id, with_shared)
        count = check_int(limit, "limit", 1, _MAX_LIMIT)
        node = optional_filter(filter)
        chosen = None if kinds is None else [check_kind(k) for k in as_items(kinds, "kinds")]
        when = None if as_of is None else check_datetime(as_of, "as_of")
        weighed = self._config.weights if weights is None else self._weighted(weights)
        check_bool(expand, "expand")
        spec = await self._spec()
        vector = await self._query(query, spec)
        candidates = max(self._config.candidates, count)
        statement, params = _sql.recall_sql(
            spec,
            self.tenant,
            self.collection,
            vector_param(vector, spec) if when is None else vector,
            agents=agents,
            kinds=chosen,
            node=node,
            shared=with_shared,
            candidates=candidates,
            limit=count,
            config=self._config,
            weights=weighed,
            as_of=when,
        )
        settings = [("hnsw.ef_search", str(candidates))] if candidates > 40 else []
        with translate_errors("recalling"):
            (rows,) = await self._db.fetch_many([(statement, params)], settings=settings)
        results = [self._recalled(spec, row, past=when is not None) for row in rows]
        if when is None:
            self._access.add(hit.memory.id for hit in results)
        if expand and results:
            found = await self.graph.about([hit.memory.id for hit in results], as_of=when)
            for n, hit in enumerate(results):
                entities, relations = found.get(hit.memory.id, ([], []))
                results[n] = hit.model_copy(update={"entities": entities, "relations": relations})
        return results

    def _weighted(self, weights: MemoryWeights | Mapping[str, float]) -> MemoryWeights:
        if isinstance(weights, MemoryWeights):
            return weights
        # The weights named replace the configured ones; the others stay as configured.
        given = check_mapping(weights, "weights")
        for name, value in given.items():
            check_number(value, f"weights.{name}", low=0.0, high=100.0)
        with located("weights"):
            return validated(MemoryWeights, {**self._config.weights.model_dump(), **given})

    def _recalled(self, spec: CollectionSpec, row: dict[str, Any], *, past: bool) -> Recalled:
        # As of a past time, the text and metadata are a version's, sealed as versions are.
        row = self._opened_version(row, "content", "id") if past else self._opened(spec, row)
        memory = memory_record(row)
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
        wanted = check_memory_id(memory_id)
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
            agent=check_agent(agent_id),
            shared=check_bool(shared, "shared"),
            subject=check_subject(subject),
            kind=None if kind is None else check_kind(kind),
            node=optional_filter(filter),
            forgotten=check_bool(forgotten, "forgotten"),
            limit=check_int(limit, "limit", 1, 10_000),
        )

    @observed("memory.history")
    async def history(self, memory_id: str) -> builtins.list[MemoryVersion]:
        """Every version of the memory, oldest first, with its time and actor; a forgetting
        is an entry without text."""
        wanted = check_memory_id(memory_id)
        with translate_errors("reading a memory's history"):
            rows = await self._db.fetch(
                "SELECT " + _sql.HISTORY_COLUMNS + " FROM memory_history "
                "WHERE tenant_id = %s AND memory_id = %s ORDER BY version",
                [self.tenant, wanted],
            )
        if not rows:
            raise NotFound(f"memory {wanted!r} does not exist", entity="memory", key=wanted)
        return [MemoryVersion(**self._opened_version(row)) for row in rows]

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
        chosen = None if ids is None else check_ids(ids)
        agent = check_agent(agent_id)
        topic = check_subject(subject)
        node = optional_filter(filter)
        if node is not None and matches_all(node):
            raise ValidationError(
                "forget's filter matches every memory: name what to forget (an empty filter "
                "is refused, so that a missing condition never forgets everything)",
                field="filter",
            )
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

    # -- the change feed -----------------------------------------------------------------------

    async def changes(
        self,
        *,
        since: str | None = None,
        consumer: str | None = None,
        batch: int = 100,
        wait: bool = True,
    ) -> AsyncIterator[MemoryChange]:
        """Memories created, updated and forgotten, in commit order (the change feed of
        ``memories``, which ``dl.memory.setup`` tracks). ``since``, ``consumer``, ``batch``
        and ``wait`` as for ``dl.changes``. A change carries the memory's id, agent, kind and
        version, never its text: ``get`` reads it."""
        feed = self._feed(["memories"], since=since, consumer=consumer, batch=batch, wait=wait)
        async for change in feed:
            values = change.new if change.new is not None else (change.old or {})
            yield MemoryChange(
                cursor=change.cursor,
                op=change.op,
                memory_id=change.id,
                agent_id=values.get("agent_id"),
                kind=values.get("kind"),
                version=values.get("version"),
                forgotten=change.op in ("delete", "truncate")
                or values.get("forgotten_at") is not None,
                committed_at=change.committed_at,
            )


class ManagedMemory(Memory):
    """The default tenant's agent memory, plus setting it up (as the owner)."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tenant: str,
        config: MemoryConfig,
        feed: ChangeFeed,
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
