"""The temporal knowledge graph of agent memory: entities and the facts (relations) between
them, bi-temporal, walked by recursive SQL.

Reached as ``dl.memory.graph`` (the default tenant's) and ``dl.tenant(t).memory.graph``::

    graph = dl.memory.graph
    ann = await graph.upsert_entity("Ann", "person", {"email": "ann@example.com"})
    paris = await graph.upsert_entity("Paris", "city")
    await graph.relate(ann, "lives_in", paris, valid_from=moved_in, exclusive=True)
    await graph.neighbours(ann, hops=2)
    await graph.relations(ann, as_of=last_year)          # what was true then
    await graph.relations(ann, known_at=last_week)       # what we believed then

A fact is true in valid time ``[valid_from, valid_to)`` and believed in transaction time
``[recorded_at, invalidated_at)``; a change is a new version, the old one invalidated, never
deleted (see :mod:`agency_data.memory._graph_time` for what a statement does to the facts
already known). Only :meth:`KnowledgeGraph.forget_entity` and the erasure of a memory
(``ON DELETE CASCADE``: the facts learned from it, every version) delete; a trigger then
undoes what the erased facts had done to the others (what they ended is believed again, as
if they had never been told), whichever way they were deleted.

The SQL is built in :mod:`agency_data.memory._graph_sql` and input is checked by
:mod:`agency_data.memory._graph_inputs`; this module runs the one on the other and turns rows
into models.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from agency_data.errors import Conflict, NotFound, ValidationError
from agency_data.inputs import (
    MAX_PAGE,
    as_items,
    brief,
    check_bool,
    check_datetime,
    check_int,
    check_limit,
    check_number,
)
from agency_data.memory import _graph_inputs as check
from agency_data.memory import _graph_sql as q
from agency_data.memory._graph_sql import Direction
from agency_data.memory._graph_time import Plan, Statement, plan_invalidate, plan_relate
from agency_data.memory.graph_models import Entity, EntityMatch, Neighbour, Path, Relation
from agency_data.observability import observed
from agency_data.postgres.database import Database
from agency_data.vectors.compat import vector_to_list

__all__ = ["MAX_HOPS", "KnowledgeGraph"]

# The deepest walk served: past a few hops a graph of any size reaches most of itself, and
# the number of paths grows as the degree to the power of the hops.
MAX_HOPS = 6


class KnowledgeGraph:
    """A tenant's entities and the facts between them (see the module's docstring)."""

    def __init__(self, db: Database, tenant: str) -> None:
        self._db = db
        self._telemetry = db.telemetry
        self.tenant: str = tenant

    # -- entities --------------------------------------------------------------------------------

    @observed("memory.graph.upsert_entity")
    async def upsert_entity(
        self,
        name: str,
        type: str,
        properties: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | None = None,
    ) -> Entity:
        """The entity of this ``type`` named ``name`` (any case: "ann" finds "Ann"), made if
        new. ``properties`` are merged into what it has (their keys win, shallowly); an
        ``embedding`` (any dimension) replaces the one it has, None keeps it."""
        text = check.name(name, "name", check.MAX_NAME)
        kind = check.name(type, "type", check.MAX_TYPE)
        document, _ = check.properties(properties, self._db.config.max_json_bytes)
        vector = None if embedding is None else check.vector(embedding, "embedding")
        row = await self._db.fetch_one(*q.upsert_entity(self.tenant, text, kind, document, vector))
        assert row is not None, "INSERT ... ON CONFLICT DO UPDATE returns the row"
        return _entity(row)

    @observed("memory.graph.get_entity")
    async def get_entity(self, entity_id: Entity | str, *, include_vector: bool = False) -> Entity:
        """The entity with ``entity_id``, with its embedding if ``include_vector``;
        :class:`NotFound` if this tenant has none."""
        ident = check.entity_id(entity_id, "entity_id")
        check_bool(include_vector, "include_vector")
        row = await self._db.fetch_one(*q.get_entity(self.tenant, ident, include_vector))
        if row is None:
            raise check.no_entity(ident)
        return _entity(row)

    @observed("memory.graph.find_entities")
    async def find_entities(
        self,
        name: str,
        *,
        type: str | None = None,
        limit: int = 10,
        min_similarity: float = 0.3,
    ) -> list[EntityMatch]:
        """Entities whose name looks like ``name`` (pg_trgm's similarity of the lowered names,
        from 0 to 1: shared trigrams over all of both), best first, down to
        ``min_similarity``; of one ``type`` if given. A name of no letters or digits has no
        trigrams and finds nothing."""
        text = check.name(name, "name", check.MAX_NAME)
        kind = None if type is None else check.name(type, "type", check.MAX_TYPE)
        check_limit(limit)
        bound = check_number(min_similarity, "min_similarity", low=0.0, high=1.0)
        rows = await self._db.fetch(*q.find_entities(self.tenant, text, kind, limit, bound))
        return [EntityMatch(entity=_entity(r), similarity=r["similarity"]) for r in rows]

    @observed("memory.graph.similar_entities")
    async def similar_entities(
        self, vector: Sequence[float], *, type: str | None = None, limit: int = 10
    ) -> list[EntityMatch]:
        """Entities whose embedding is nearest ``vector`` (cosine similarity, exact), among
        those with an embedding of its dimension; of one ``type`` if given."""
        query = check.vector(vector, "vector")
        kind = None if type is None else check.name(type, "type", check.MAX_TYPE)
        check_limit(limit)
        rows = await self._db.fetch(*q.similar_entities(self.tenant, query, kind, limit))
        return [EntityMatch(entity=_entity(r), similarity=r["similarity"]) for r in rows]

    @observed("memory.graph.forget_entity")
    async def forget_entity(self, entity_id: Entity | str) -> None:
        """Delete the entity for good, with every version of every fact it takes part in and
        every mention of it; what those facts had ended is believed again (forgetting Paris
        gives back Ann's Berlin, open-ended, if only her move to Paris had ended it).
        :class:`NotFound` if this tenant has none."""
        ident = check.entity_id(entity_id, "entity_id")
        if await self._db.execute(*q.delete_entity(self.tenant, ident)) == 0:
            raise check.no_entity(ident)

    # -- facts -----------------------------------------------------------------------------------

    @observed("memory.graph.relate")
    async def relate(
        self,
        source: Entity | str,
        relation: str,
        target: Entity | str,
        *,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        source_memory: str | None = None,
        properties: Mapping[str, Any] | None = None,
        exclusive: bool = False,
    ) -> Relation:
        """State the fact ``source -relation-> target``, true from ``valid_from`` (default:
        now) until ``valid_to`` (None: still), learned from the memory ``source_memory``
        (erasing that memory erases the fact). Returns the fact as now believed.

        The same fact stated again is not stored twice, and one stated over a longer time
        extends it. ``exclusive``: the relation holds for one target at a time (lives_in,
        works_for), so the fact ends the overlapping facts of the source: they are
        invalidated, never deleted, and keep a version that ends where this one begins. Each
        exclusive statement with a start of its own is a state of its own, the same target
        stated again from a later time included (the earlier fact ends there, so that a fact
        told late between them ends the right one); restate from the original
        ``valid_from`` to add nothing. See :mod:`agency_data.memory._graph_time` for the
        rules, late facts and erasure included.
        """
        src = check.entity_id(source, "source")
        tgt = check.entity_id(target, "target")
        name = check.name(relation, "relation", check.MAX_RELATION)
        start = None if valid_from is None else check_datetime(valid_from, "valid_from")
        end = None if valid_to is None else check_datetime(valid_to, "valid_to")
        memory = None if source_memory is None else check.memory_id(source_memory, "source_memory")
        _, values = check.properties(properties, self._db.config.max_json_bytes)
        check_bool(exclusive, "exclusive")
        if start is not None and end is not None and end <= start:
            raise ValidationError(
                f"valid_to ({end.isoformat()}) must be after valid_from ({start.isoformat()})",
                field="valid_to",
            )
        async with self._db.transaction():
            locked, facts, refs = await self._db.fetch_many(
                [
                    q.lock_statement(self.tenant, src, name),
                    q.current_versions(self.tenant, src, name, None if exclusive else tgt),
                    q.references(self.tenant, [src, tgt], memory),
                ]
            )
            found = set(refs[0]["found"])
            for ident, field in ((src, "source"), (tgt, "target")):
                if ident not in found:
                    raise check.no_entity(ident, field)
            if not refs[0]["memory_found"]:
                raise NotFound(
                    f"source_memory: memory {brief(memory)} does not exist in tenant "
                    f"{self.tenant}; remember it first, or pass source_memory=None",
                    entity="memory",
                    key=memory,
                )
            now: datetime = locked[0]["now"]
            if start is None:
                start = now
            if end is not None and end <= start:
                raise ValidationError(
                    f"valid_to ({end.isoformat()}) must be after valid_from, which is now "
                    f"({start.isoformat()}) when not given",
                    field="valid_to",
                )
            stated = Statement(tgt, values, start, end, memory)
            current = [_relation(r) for r in facts]
            plan = plan_relate(current, stated, exclusive=exclusive, new_id=str(uuid.uuid4()))
            return await self._write(src, name, now, plan)

    @observed("memory.graph.invalidate")
    async def invalidate(
        self, relation_id: Relation | str, *, at: datetime | None = None
    ) -> Relation:
        """End the fact at ``at`` (default: now): it gets a version that ends then, and the
        version believed until now is invalidated. A fact ended at or before its start is
        withdrawn (it was never true: no version of it is believed any more; the one returned
        is invalidated). A fact that had already ended by ``at`` is left as it is.

        :class:`NotFound` if there is no such fact; :class:`Conflict` if none of its versions
        is believed any more (withdrawn, or merged into another fact).
        """
        ident = check.relation_id(relation_id)
        when = None if at is None else check_datetime(at, "at")
        async with self._db.transaction():
            locked, versions = await self._db.fetch_many(
                [q.lock_fact(self.tenant, ident), q.versions_of(self.tenant, ident)]
            )
            if not locked:
                raise NotFound(
                    f"relation {brief(ident)} does not exist in tenant {self.tenant}",
                    entity="relation",
                    key=ident,
                )
            current = next((v for v in versions if v["invalidated_at"] is None), None)
            if current is None:
                last = versions[0]
                replaced = last["invalidated_by"]
                raise Conflict(
                    f"relation {ident} is no longer believed: "
                    + (
                        f"it was merged into relation {replaced}"
                        if replaced not in (None, ident)
                        else "it was withdrawn"
                    ),
                    field="relation_id",
                )
            fact = _relation(current)
            plan = plan_invalidate(fact, locked[0]["now"] if when is None else when)
            return await self._write(fact.source_id, fact.relation, locked[0]["now"], plan)

    async def _write(self, source: str, relation: str, now: datetime, plan: Plan) -> Relation:
        """Carry ``plan`` out (inside the caller's transaction, which holds the fact's lock)
        and return its answer."""
        answer = plan.answer
        if isinstance(answer, Relation):
            return answer
        assert answer is not None, "a plan always has an answer"
        added = [
            (
                v.id,
                v.version,
                v.target_id,
                orjson.dumps(v.properties).decode(),
                v.valid_from,
                v.valid_to,
                v.source_memory,
                v.invalidated_by,
            )
            for v in plan.added
        ]
        rows = await self._db.fetch(
            *q.write_versions(self.tenant, source, relation, now, plan.ended, added)
        )
        if sum(1 for r in rows if r["kind"] == "ended") != len(plan.ended):
            # Only a caller's transaction that saw an older snapshot (repeatable read) gets
            # here: the lock makes writers of a fact take turns.
            raise Conflict(
                "the fact changed since this transaction's snapshot was taken; retry in a new "
                "transaction (or at read committed isolation)",
                field="relation",
            )
        for row in rows:
            if (row["id"], row["version"]) == answer:
                return _relation(row)
        raise AssertionError("the plan's answer is among the versions it wrote")

    @observed("memory.graph.versions")
    async def versions(self, relation_id: Relation | str) -> list[Relation]:
        """Every version of a fact, newest first: how what we believed of it changed.
        :class:`NotFound` if there is no such fact."""
        ident = check.relation_id(relation_id)
        rows = await self._db.fetch(*q.versions_of(self.tenant, ident))
        if not rows:
            raise NotFound(
                f"relation {brief(ident)} does not exist in tenant {self.tenant}",
                entity="relation",
                key=ident,
            )
        return [_relation(r) for r in rows]

    # -- reads -----------------------------------------------------------------------------------

    @observed("memory.graph.relations")
    async def relations(
        self,
        entity: Entity | str,
        *,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 100,
    ) -> list[Relation]:
        """The facts of ``entity`` that hold: true at ``as_of`` (default: now), as believed
        at ``known_at`` (default: now); its outgoing ones, incoming ones or both
        (``direction``), of the ``relation`` names given (default: all). By relation name,
        then valid_from; the first ``limit``. :class:`NotFound` if there is no such entity."""
        ident = check.entity_id(entity, "entity")
        names, way, when, known = check.walk_args(relation, direction, as_of, known_at)
        check_limit(limit)
        exists, rows = await self._db.fetch_many(
            [
                q.references(self.tenant, [ident], None),
                q.relations(self.tenant, ident, names, way, when, known, limit),
            ]
        )
        if not exists[0]["found"]:
            raise check.no_entity(ident, "entity")
        return [_relation(r) for r in rows]

    @observed("memory.graph.neighbours")
    async def neighbours(
        self,
        entity: Entity | str,
        *,
        hops: int = 1,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 100,
    ) -> list[Neighbour]:
        """The entities within ``hops`` (1 to 6) of ``entity``, each once with its distance,
        nearest first, then by name (the first ``limit``), following the facts that hold
        (``as_of``, ``known_at``, ``relation`` and ``direction`` as in :meth:`relations`).
        :class:`NotFound` if there is no such entity."""
        ident = check.entity_id(entity, "entity")
        check_int(hops, "hops", 1, MAX_HOPS)
        names, way, when, known = check.walk_args(relation, direction, as_of, known_at)
        check_limit(limit)
        exists, rows = await self._db.fetch_many(
            [
                q.references(self.tenant, [ident], None),
                q.neighbours(self.tenant, ident, hops, names, way, when, known, limit),
            ]
        )
        if not exists[0]["found"]:
            raise check.no_entity(ident, "entity")
        return [Neighbour(entity=_entity(r), distance=r["distance"]) for r in rows]

    @observed("memory.graph.paths")
    async def paths(
        self,
        source: Entity | str,
        target: Entity | str,
        *,
        max_hops: int = 3,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 10,
    ) -> list[Path]:
        """The ways from ``source`` to ``target`` of at most ``max_hops`` (1 to 6) facts that
        hold, passing no entity twice, shortest first (``limit`` of them; ``as_of``,
        ``known_at``, ``relation`` and ``direction`` as in :meth:`relations`; with
        ``direction="both"`` a path may take a fact against its direction).
        :class:`NotFound` if either entity does not exist."""
        src = check.entity_id(source, "source")
        tgt = check.entity_id(target, "target")
        if src == tgt:
            raise ValidationError(
                "source and target are the same entity; a path needs two", field="target"
            )
        check_int(max_hops, "max_hops", 1, MAX_HOPS)
        names, way, when, known = check.walk_args(relation, direction, as_of, known_at)
        check_limit(limit)
        exists, rows = await self._db.fetch_many(
            [
                q.references(self.tenant, [src, tgt], None),
                q.paths(self.tenant, src, tgt, max_hops, names, way, when, known, limit),
            ]
        )
        found = set(exists[0]["found"])
        for ident, field in ((src, "source"), (tgt, "target")):
            if ident not in found:
                raise check.no_entity(ident, field)
        result: list[Path] = []
        steps: list[Relation] = []
        for index, row in enumerate(rows):
            steps.append(_relation(row))
            if index + 1 == len(rows) or rows[index + 1]["path"] != row["path"]:
                result.append(Path(entity_ids=row["nodes"], relations=steps))
                steps = []
        return result

    # -- memories and the entities they mention --------------------------------------------------

    @observed("memory.graph.link")
    async def link(self, memory_id: str, entity_ids: Iterable[Entity | str]) -> int:
        """Record that the memory mentions the entities; return how many links are new.
        :class:`NotFound` (and nothing linked) if the memory or any entity does not exist."""
        memory = check.memory_id(memory_id, "memory_id")
        if isinstance(entity_ids, Entity):
            # A model iterates over its fields: it would read as a list of ("id", ...) pairs.
            raise ValidationError(
                "entity_ids must be a list of entities or entity ids; put a single one in a list",
                field="entity_ids",
            )
        idents = [
            check.entity_id(e, f"entity_ids[{i}]")
            for i, e in enumerate(as_items(entity_ids, "entity_ids", most=MAX_PAGE))
        ]
        row = await self._db.fetch_one(*q.link(self.tenant, memory, idents))
        assert row is not None, "the statement returns one row"
        if not row["memory_found"]:
            raise NotFound(
                f"memory {brief(memory)} does not exist in tenant {self.tenant}",
                entity="memory",
                key=memory,
            )
        if row["missing"]:
            missing = ", ".join(row["missing"][:5])
            raise NotFound(
                f"entity_ids: no entity {missing} in tenant {self.tenant}; make it with "
                "upsert_entity first (nothing was linked)",
                entity="entity",
                key=row["missing"][0],
            )
        return int(row["added"])

    @observed("memory.graph.mentions")
    async def mentions(self, memory_ids: Iterable[str]) -> dict[str, list[Entity]]:
        """The entities each memory mentions (every memory asked about is a key)."""
        ids = check.memory_ids(memory_ids)
        if not ids:
            return {}
        rows = await self._db.fetch(*q.about_entities(self.tenant, ids))
        found: dict[str, list[Entity]] = {m: [] for m in ids}
        for row in rows:
            found[row["memory_id"]].append(_entity(row))
        return found

    @observed("memory.graph.about")
    async def about(
        self,
        memory_ids: Iterable[str],
        *,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
    ) -> dict[str, tuple[list[Entity], list[Relation]]]:
        """For each memory, the entities it mentions and the facts that hold (``as_of``,
        ``known_at``) among them, with the facts learned from it (as believed at
        ``known_at``, whatever their valid time): in one round trip for all the memories."""
        ids = check.memory_ids(memory_ids)
        when = None if as_of is None else check_datetime(as_of, "as_of")
        known = None if known_at is None else check_datetime(known_at, "known_at")
        if not ids:
            return {}
        entity_rows, relation_rows = await self._db.fetch_many(
            [
                q.about_entities(self.tenant, ids),
                q.about_relations(self.tenant, ids, when, known),
            ]
        )
        found: dict[str, tuple[list[Entity], list[Relation]]] = {m: ([], []) for m in ids}
        for row in entity_rows:
            found[row["memory_id"]][0].append(_entity(row))
        for row in relation_rows:
            found[row["memory_id"]][1].append(_relation(row))
        return found


# -- rows ----------------------------------------------------------------------------------------


def _entity(row: dict[str, Any]) -> Entity:
    embedding = row.get("embedding")
    return Entity(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        properties=row["properties"],
        embedding=None if embedding is None else vector_to_list(embedding),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _relation(row: dict[str, Any]) -> Relation:
    return Relation(
        id=row["id"],
        version=row["version"],
        source_id=row["source_id"],
        relation=row["relation"],
        target_id=row["target_id"],
        properties=row["properties"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        recorded_at=row["recorded_at"],
        invalidated_at=row["invalidated_at"],
        invalidated_by=row["invalidated_by"],
        source_memory=row["source_memory"],
    )
