"""The knowledge graph's SQL, built by pure functions that return ``(query, params)``.

Every statement names the tenant (row-level security enforces it as well). Which relation
versions a read counts is one rule, :func:`holds`, shared by every read:

* transaction time: with ``known_at`` None, the versions believed now (``invalidated_at IS
  NULL``); else those recorded by ``known_at`` and not yet invalidated then;
* valid time: true at ``as_of`` (None: the statement's time), ``valid_from <= as_of <
  coalesce(valid_to, infinity)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, LiteralString

import numpy as np
import numpy.typing as npt

from agency_data.postgres.database import Params, Query

__all__ = [
    "ENTITY_COLUMNS",
    "RELATION_COLUMNS",
    "Direction",
    "about_entities",
    "about_relations",
    "current_versions",
    "delete_entity",
    "find_entities",
    "get_entity",
    "holds",
    "link",
    "lock_fact",
    "lock_statement",
    "neighbours",
    "paths",
    "references",
    "relations",
    "similar_entities",
    "upsert_entity",
    "versions_of",
    "write_versions",
]

Direction = Literal["out", "in", "both"]

ENTITY_COLUMNS: LiteralString = "e.id, e.name, e.type, e.properties, e.created_at, e.updated_at"
RELATION_COLUMNS: LiteralString = (
    "r.id, r.version, r.source_id, r.relation, r.target_id, r.properties, r.valid_from, "
    "r.valid_to, r.recorded_at, r.invalidated_at, r.invalidated_by, r.source_memory"
)
# Separates the parts of a fact's lock key (tenant, source, relation). Keys that collide (a
# part holding it, or the hash) only make two unrelated calls wait for each other.
_SEP: LiteralString = "chr(31)"


# -- entities ------------------------------------------------------------------------------------


def upsert_entity(
    tenant: str,
    name: str,
    type_: str,
    properties: str,
    embedding: npt.NDArray[np.float32] | None,
) -> tuple[Query, Params]:
    """Insert the entity, or merge ``properties`` (JSON text) into the one of the same type and
    name (any case): its keys win; an embedding given replaces the one held."""
    return (
        "INSERT INTO memory_entities AS e (tenant_id, name, type, properties, embedding) "
        "VALUES (%s, %s, %s, %s::jsonb, %s) "
        "ON CONFLICT (tenant_id, type, lower(name)) DO UPDATE SET "
        "properties = e.properties || EXCLUDED.properties, "
        "embedding = coalesce(EXCLUDED.embedding, e.embedding) "
        f"RETURNING {ENTITY_COLUMNS}",
        [tenant, name, type_, properties, embedding],
    )


def get_entity(tenant: str, entity_id: str, include_vector: bool) -> tuple[Query, Params]:
    """One entity by id, with its embedding when asked for."""
    vector: LiteralString = ", e.embedding" if include_vector else ""
    return (
        f"SELECT {ENTITY_COLUMNS}{vector} FROM memory_entities e "
        "WHERE e.tenant_id = %s AND e.id = %s",
        [tenant, entity_id],
    )


def references(
    tenant: str, entity_ids: Sequence[str], memory_id: str | None
) -> tuple[Query, Params]:
    """Which of ``entity_ids`` exist (``found``, an array) and whether the memory does
    (``memory_found``; true when ``memory_id`` is None)."""
    return (
        "SELECT array(SELECT id FROM memory_entities "
        "             WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s)) AS found, "
        "%(memory)s::text IS NULL OR EXISTS (SELECT FROM memories "
        "    WHERE tenant_id = %(tenant)s AND id = %(memory)s) AS memory_found",
        {"tenant": tenant, "ids": list(entity_ids), "memory": memory_id},
    )


def find_entities(
    tenant: str, name: str, type_: str | None, limit: int, min_similarity: float
) -> tuple[Query, Params]:
    """Entities whose lowered name is trigram-similar to ``name``'s, best first, with pg_trgm's
    similarity: shared trigrams / (the name's + the entity's - shared).

    The name's trigrams are looked up by key in ``memory_entity_trigrams`` (an index that row-
    level security lets a query use, unlike a trigram index: see the migration); an entity
    sharing fewer than ``min_similarity`` of the name's trigrams cannot reach it, and is
    dropped before it is read.
    """
    typed: LiteralString = " AND e.type = %(type)s" if type_ is not None else ""
    return (
        "WITH hits AS ("
        "  SELECT g.entity_id, count(*) AS shared FROM memory_entity_trigrams g "
        "  WHERE g.tenant_id = %(tenant)s AND g.trigram = ANY(show_trgm(lower(%(name)s))) "
        "  GROUP BY g.entity_id "
        "  HAVING count(*) >= %(min)s * cardinality(show_trgm(lower(%(name)s)))), "
        "scored AS ("
        f"  SELECT {ENTITY_COLUMNS}, h.shared::float8 / (cardinality(show_trgm(lower(%(name)s))) "
        "         + cardinality(show_trgm(lower(e.name))) - h.shared) AS similarity "
        "  FROM hits h JOIN memory_entities e ON e.tenant_id = %(tenant)s AND e.id = h.entity_id"
        f"  {typed}) "
        "SELECT * FROM scored WHERE similarity >= %(min)s "
        "ORDER BY similarity DESC, name, id LIMIT %(limit)s",
        {"tenant": tenant, "name": name, "type": type_, "limit": limit, "min": min_similarity},
    )


def similar_entities(
    tenant: str, vector: npt.NDArray[np.float32], type_: str | None, limit: int
) -> tuple[Query, Params]:
    """Entities whose embedding (of the same dimension) is nearest ``vector`` by cosine
    distance: an exact scan, entities being few."""
    typed: LiteralString = " AND e.type = %(type)s" if type_ is not None else ""
    return (
        f"SELECT {ENTITY_COLUMNS}, 1 - (e.embedding <=> %(vector)s) AS similarity "
        "FROM memory_entities e WHERE e.tenant_id = %(tenant)s AND e.embedding IS NOT NULL "
        f"AND vector_dims(e.embedding) = %(dims)s{typed} "
        "ORDER BY e.embedding <=> %(vector)s, e.id LIMIT %(limit)s",
        {"tenant": tenant, "vector": vector, "dims": len(vector), "type": type_, "limit": limit},
    )


def delete_entity(tenant: str, entity_id: str) -> tuple[Query, Params]:
    """Delete the entity; its relations and mentions go with it (ON DELETE CASCADE)."""
    return (
        "DELETE FROM memory_entities WHERE tenant_id = %s AND id = %s",
        [tenant, entity_id],
    )


# -- mentions ------------------------------------------------------------------------------------


def link(tenant: str, memory_id: str, entity_ids: Sequence[str]) -> tuple[Query, Params]:
    """Record that the memory mentions the entities, if the memory and all of them exist.

    One row: ``memory_found``, ``missing`` (the entity ids that do not exist) and ``added``
    (links that were not there yet); nothing is written unless all exist.
    """
    return (
        "WITH wanted AS (SELECT DISTINCT x AS entity_id FROM unnest(%(ids)s::text[]) AS x), "
        "known AS (SELECT id FROM memory_entities "
        "          WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s)), "
        "memory AS (SELECT id FROM memories WHERE tenant_id = %(tenant)s AND id = %(memory)s), "
        "added AS ("
        "  INSERT INTO memory_mentions (tenant_id, memory_id, entity_id) "
        "  SELECT %(tenant)s, %(memory)s, w.entity_id FROM wanted w "
        "  WHERE EXISTS (SELECT FROM memory) "
        "    AND (SELECT count(*) FROM known) = (SELECT count(*) FROM wanted) "
        "  ON CONFLICT DO NOTHING RETURNING 1) "
        "SELECT EXISTS (SELECT FROM memory) AS memory_found, "
        "array(SELECT entity_id FROM wanted EXCEPT SELECT id FROM known ORDER BY 1) AS missing, "
        "(SELECT count(*) FROM added) AS added",
        {"tenant": tenant, "memory": memory_id, "ids": list(entity_ids)},
    )


def about_entities(tenant: str, memory_ids: Sequence[str]) -> tuple[Query, Params]:
    """The entities each memory mentions (``memory_id`` and the entity's columns)."""
    return (
        f"SELECT m.memory_id, {ENTITY_COLUMNS} FROM memory_mentions m "
        "JOIN memory_entities e ON e.tenant_id = m.tenant_id AND e.id = m.entity_id "
        "WHERE m.tenant_id = %s AND m.memory_id = ANY(%s) ORDER BY m.memory_id, e.name, e.id",
        [tenant, list(memory_ids)],
    )


def about_relations(
    tenant: str, memory_ids: Sequence[str], as_of: datetime | None, known_at: datetime | None
) -> tuple[Query, Params]:
    """Per memory, the facts that hold among the entities it mentions, and the facts learned
    from it (as believed then, whatever their valid time)."""
    held, params = holds("r", as_of, known_at)
    believed, _ = holds("r", None, known_at, valid_time=False)
    return (
        "WITH m AS (SELECT memory_id, entity_id FROM memory_mentions "
        "           WHERE tenant_id = %(tenant)s AND memory_id = ANY(%(memories)s)) "
        f"SELECT m1.memory_id, {RELATION_COLUMNS} FROM m m1 "
        "JOIN m m2 ON m2.memory_id = m1.memory_id "
        "JOIN memory_relations r ON r.tenant_id = %(tenant)s "
        f" AND r.source_id = m1.entity_id AND r.target_id = m2.entity_id AND {held} "
        "UNION "
        f"SELECT r.source_memory, {RELATION_COLUMNS} FROM memory_relations r "
        "WHERE r.tenant_id = %(tenant)s AND r.source_memory = ANY(%(memories)s) "
        f"AND {believed} "
        "ORDER BY 1, valid_from, id",
        {**params, "tenant": tenant, "memories": list(memory_ids)},
    )


# -- relations: which versions count ------------------------------------------------------------


def holds(
    alias: LiteralString,
    as_of: datetime | None,
    known_at: datetime | None,
    *,
    valid_time: bool = True,
) -> tuple[LiteralString, dict[str, Any]]:
    """The condition on ``alias``'s columns under which a relation version counts, and its
    named parameters (``as_of``, ``known_at``). See the module's docstring."""
    params: dict[str, Any] = {}
    if known_at is None:
        believed: LiteralString = f"{alias}.invalidated_at IS NULL"
    else:
        believed = (
            f"{alias}.recorded_at <= %(known_at)s AND ({alias}.invalidated_at IS NULL "
            f"OR {alias}.invalidated_at > %(known_at)s)"
        )
        params["known_at"] = known_at
    if not valid_time:
        return believed, params
    if as_of is None:
        # The statement's own time: stable through the statement, unlike clock_timestamp().
        at: LiteralString = "statement_timestamp()"
    else:
        at = "%(as_of)s"
        params["as_of"] = as_of
    return (
        f"{believed} AND {alias}.valid_from <= {at} "
        f"AND ({alias}.valid_to IS NULL OR {alias}.valid_to > {at})",
        params,
    )


def _edges(
    direction: Direction,
    node: LiteralString,
    condition: LiteralString,
    columns: LiteralString = "",
) -> LiteralString:
    """The edges leaving ``node`` (an SQL expression) the way ``direction`` walks, as rows of
    ``next`` (the entity at the other end) and ``columns``."""
    out: LiteralString = (
        f"SELECT r.target_id AS next{columns} FROM memory_relations r "
        f"WHERE r.tenant_id = %(tenant)s AND r.source_id = {node} AND {condition}"
    )
    into: LiteralString = (
        f"SELECT r.source_id AS next{columns} FROM memory_relations r "
        f"WHERE r.tenant_id = %(tenant)s AND r.target_id = {node} AND {condition}"
    )
    if direction == "out":
        return out
    if direction == "in":
        return into
    return f"{out} UNION ALL {into}"


def _walk_condition(
    relation: Sequence[str] | None, as_of: datetime | None, known_at: datetime | None
) -> tuple[LiteralString, dict[str, Any]]:
    condition, params = holds("r", as_of, known_at)
    if relation is not None:
        condition = f"{condition} AND r.relation = ANY(%(relations)s)"
        params["relations"] = list(relation)
    return condition, params


def relations(
    tenant: str,
    entity_id: str,
    relation: Sequence[str] | None,
    direction: Direction,
    as_of: datetime | None,
    known_at: datetime | None,
    limit: int,
) -> tuple[Query, Params]:
    """The relations of an entity that hold, by relation name, valid_from and id."""
    condition, params = _walk_condition(relation, as_of, known_at)
    ends: LiteralString = {
        "out": "r.source_id = %(entity)s",
        "in": "r.target_id = %(entity)s",
        "both": "(r.source_id = %(entity)s OR r.target_id = %(entity)s)",
    }[direction]
    return (
        f"SELECT {RELATION_COLUMNS} FROM memory_relations r "
        f"WHERE r.tenant_id = %(tenant)s AND {ends} AND {condition} "
        "ORDER BY r.relation, r.valid_from, r.id LIMIT %(limit)s",
        {**params, "tenant": tenant, "entity": entity_id, "limit": limit},
    )


def neighbours(
    tenant: str,
    entity_id: str,
    hops: int,
    relation: Sequence[str] | None,
    direction: Direction,
    as_of: datetime | None,
    known_at: datetime | None,
    limit: int,
) -> tuple[Query, Params]:
    """The entities within ``hops`` of the entity, each once with its distance, nearest first.

    The walk keeps one row per (entity, depth) (UNION), so it stays bounded by entities times
    hops however many ways lead to an entity; the shortest depth is each one's distance.
    """
    condition, params = _walk_condition(relation, as_of, known_at)
    edges = _edges(direction, "w.node", condition)
    return (
        "WITH RECURSIVE walk(node, depth) AS ("
        "  SELECT %(start)s::text, 0 "
        "  UNION "
        "  SELECT e.next, w.depth + 1 FROM walk w "
        f"  CROSS JOIN LATERAL ({edges}) e "
        "  WHERE w.depth < %(hops)s), "
        "nearest AS (SELECT node, min(depth) AS distance FROM walk "
        "            WHERE node <> %(start)s GROUP BY node) "
        # LATERAL: one lookup by key per entity reached, whatever the planner thinks of the
        # walk's size (it cannot tell, and hashed a tenant's every entity when it guessed few).
        f"SELECT n.distance, {ENTITY_COLUMNS} FROM nearest n "
        "CROSS JOIN LATERAL (SELECT * FROM memory_entities e "
        "  WHERE e.tenant_id = %(tenant)s AND e.id = n.node) e "
        "ORDER BY n.distance, e.name, e.id LIMIT %(limit)s",
        {**params, "tenant": tenant, "start": entity_id, "hops": hops, "limit": limit},
    )


def paths(
    tenant: str,
    source_id: str,
    target_id: str,
    max_hops: int,
    relation: Sequence[str] | None,
    direction: Direction,
    as_of: datetime | None,
    known_at: datetime | None,
    limit: int,
) -> tuple[Query, Params]:
    """The paths from source to target of at most ``max_hops`` relations that pass no entity
    twice, shortest first: one row per relation of each path (``path``, ``hop``, ``nodes``
    and the relation's columns).

    A partial path stops at the target; its last hop is taken only if it reaches the target
    (the deepest level would otherwise be the largest, and all of it wasted).
    """
    condition, params = _walk_condition(relation, as_of, known_at)
    edges = _edges(direction, "p.node", condition, ", r.id, r.version")
    return (
        "WITH RECURSIVE p(node, nodes, ids, versions, depth) AS ("
        "  SELECT %(source)s::text, ARRAY[%(source)s::text], ARRAY[]::text[], "
        "         ARRAY[]::integer[], 0 "
        "  UNION ALL "
        "  SELECT e.next, p.nodes || e.next, p.ids || e.id, p.versions || e.version, "
        "         p.depth + 1 "
        f"  FROM p CROSS JOIN LATERAL ({edges}) e "
        "  WHERE p.depth < %(max_hops)s AND p.node <> %(target)s "
        "    AND e.next <> ALL(p.nodes) "
        "    AND (p.depth < %(max_hops)s - 1 OR e.next = %(target)s)), "
        "found AS (SELECT row_number() OVER (ORDER BY depth, ids, versions) AS path, "
        "                 nodes, ids, versions FROM p WHERE node = %(target)s "
        "          ORDER BY depth, ids, versions LIMIT %(limit)s) "
        f"SELECT f.path, u.hop, f.nodes, {RELATION_COLUMNS} FROM found f "
        "CROSS JOIN LATERAL unnest(f.ids, f.versions) WITH ORDINALITY AS u(id, version, hop) "
        "JOIN memory_relations r ON r.tenant_id = %(tenant)s AND r.id = u.id "
        "  AND r.version = u.version "
        "ORDER BY f.path, u.hop",
        {
            **params,
            "tenant": tenant,
            "source": source_id,
            "target": target_id,
            "max_hops": max_hops,
            "limit": limit,
        },
    )


# -- relations: writing --------------------------------------------------------------------------


def lock_statement(tenant: str, source_id: str, relation: str) -> tuple[Query, Params]:
    """Wait for the transaction lock of the facts ``source -relation->`` (any target), which
    relate() and invalidate() take before reading them, and read the server's clock: the
    "now" of the whole change (valid_from's default, recorded_at, invalidated_at)."""
    return (
        "SELECT pg_advisory_xact_lock(hashtextextended("
        f"%s || {_SEP} || %s || {_SEP} || %s, 0)), clock_timestamp() AS now",
        [tenant, source_id, relation],
    )


def lock_fact(tenant: str, relation_id: str) -> tuple[Query, Params]:
    """:func:`lock_statement`'s lock, for the fact with ``relation_id`` (no row: no fact),
    and the server's clock."""
    return (
        "SELECT pg_advisory_xact_lock(hashtextextended("
        f"tenant_id || {_SEP} || source_id || {_SEP} || relation, 0)), "
        "clock_timestamp() AS now "
        "FROM memory_relations WHERE tenant_id = %s AND id = %s LIMIT 1",
        [tenant, relation_id],
    )


def current_versions(
    tenant: str, source_id: str, relation: str, target_id: str | None
) -> tuple[Query, Params]:
    """The current versions (believed now) of the facts ``source -relation-> target`` (any
    target when ``target_id`` is None)."""
    target: LiteralString = "" if target_id is None else " AND r.target_id = %(target)s"
    return (
        f"SELECT {RELATION_COLUMNS} FROM memory_relations r "
        "WHERE r.tenant_id = %(tenant)s AND r.source_id = %(source)s "
        f"AND r.relation = %(relation)s AND r.invalidated_at IS NULL{target} "
        "ORDER BY r.valid_from, r.id",
        {"tenant": tenant, "source": source_id, "relation": relation, "target": target_id},
    )


def versions_of(tenant: str, relation_id: str) -> tuple[Query, Params]:
    """Every version of one fact, newest first."""
    return (
        f"SELECT {RELATION_COLUMNS} FROM memory_relations r "
        "WHERE r.tenant_id = %s AND r.id = %s ORDER BY r.version DESC",
        [tenant, relation_id],
    )


def write_versions(
    tenant: str,
    source_id: str,
    relation: str,
    now: datetime,
    ended: Sequence[tuple[str, int, str | None]],
    added: Sequence[tuple[str, int, str, str, datetime, datetime | None, str | None, str | None]],
) -> tuple[Query, Params]:
    """Invalidate the ``ended`` versions (id, version, invalidated_by) as of ``now`` and insert
    the ``added`` ones (id, version, target_id, properties JSON, valid_from, valid_to,
    source_memory, invalidated_by) recorded at ``now`` (and invalidated then, if
    invalidated_by is set); one row per version touched (``kind``: ``ended`` or ``added``), so
    the caller can check that every ended version was still current."""
    return (
        "WITH ended AS ("
        "  UPDATE memory_relations r SET invalidated_at = %(now)s, invalidated_by = u.by "
        "  FROM unnest(%(ended_ids)s::text[], %(ended_versions)s::integer[], "
        "              %(ended_by)s::text[]) AS u(id, version, by) "
        "  WHERE r.tenant_id = %(tenant)s AND r.id = u.id AND r.version = u.version "
        "    AND r.invalidated_at IS NULL "
        f"  RETURNING {RELATION_COLUMNS}), "
        "added AS ("
        "  INSERT INTO memory_relations AS r (tenant_id, id, version, source_id, relation, "
        "    target_id, properties, valid_from, valid_to, recorded_at, source_memory, "
        "    invalidated_at, invalidated_by) "
        "  SELECT %(tenant)s, v.id, v.version, %(source)s, %(relation)s, v.target_id, "
        "         v.properties::jsonb, v.valid_from, v.valid_to, %(now)s, v.source_memory, "
        "         CASE WHEN v.by IS NOT NULL THEN %(now)s::timestamptz END, v.by "
        "  FROM unnest(%(ids)s::text[], %(versions)s::integer[], %(targets)s::text[], "
        "              %(properties)s::text[], %(froms)s::timestamptz[], "
        "              %(tos)s::timestamptz[], %(memories)s::text[], %(bys)s::text[]) "
        "       AS v(id, version, target_id, properties, valid_from, valid_to, source_memory, "
        "            by) "
        f"  RETURNING {RELATION_COLUMNS}) "
        "SELECT 'ended' AS kind, * FROM ended UNION ALL SELECT 'added', * FROM added",
        {
            "tenant": tenant,
            "source": source_id,
            "relation": relation,
            "now": now,
            "ended_ids": [e[0] for e in ended],
            "ended_versions": [e[1] for e in ended],
            "ended_by": [e[2] for e in ended],
            "ids": [a[0] for a in added],
            "versions": [a[1] for a in added],
            "targets": [a[2] for a in added],
            "properties": [a[3] for a in added],
            "froms": [a[4] for a in added],
            "tos": [a[5] for a in added],
            "memories": [a[6] for a in added],
            "bys": [a[7] for a in added],
        },
    )
