"""SQL of agent memory, built by pure functions: ``(query, params)`` pairs."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, LiteralString

from psycopg import sql

from agency_data.config import MemoryConfig, MemoryWeights
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.filter_ast import FilterNode
from agency_data.vectors.filter_sql import compile_filter

__all__ = [
    "MEMORY_COLUMNS",
    "consolidation_sql",
    "create_sql",
    "duplicate_sql",
    "flush_sql",
    "forget_sql",
    "prune_sql",
    "recall_sql",
    "select_sql",
    "update_sql",
]

LN2 = 0.6931471805599453
# A memory's row as MemoryRecord reads it, from memories m joined with its collection row e.
MEMORY_COLUMNS: LiteralString = (
    "m.id, m.agent_id, m.kind, m.subject, e.content, e.metadata, m.importance, "
    "m.happened_at, m.created_at, m.updated_at, m.version, m.access_count, "
    "m.last_accessed_at, m.forgotten_at, m.consolidated_into"
)
HISTORY_COLUMNS: LiteralString = (
    "memory_id, version, event, agent_id, kind, subject, text, metadata, importance, "
    "happened_at, valid_from, valid_to, actor"
)


def _scope(
    agents: list[str] | None, kinds: list[str] | None, shared: bool
) -> tuple[sql.Composable, list[Any]]:
    # Collection rows name their memory's agent in entity_id ('' when shared) and its kind in
    # entity_type: the index scan filters on them without a join.
    parts: list[sql.Composable] = []
    params: list[Any] = []
    if agents is not None:
        parts.append(sql.SQL("entity_id = ANY(%s)"))
        params.append(agents)
    elif not shared:
        parts.append(sql.SQL("entity_id <> ''"))
    if kinds is not None:
        parts.append(sql.SQL("entity_type = ANY(%s)"))
        params.append(kinds)
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE"), params


def _owner(agent: str | None) -> tuple[sql.Composable, list[Any]]:
    # A memory's agent, or none (shared): NULL is not equal to NULL.
    if agent is None:
        return sql.SQL("m.agent_id IS NULL"), []
    return sql.SQL("m.agent_id = %s"), [agent]


def _with_filter(
    scope: sql.Composable, params: list[Any], node: FilterNode | None
) -> tuple[sql.Composable, list[Any]]:
    if node is None:
        return scope, params
    condition, more = compile_filter(node)
    return sql.SQL("{} AND {}").format(scope, condition), [*params, *more]


def recall_sql(
    spec: CollectionSpec,
    tenant: str,
    collection: str,
    query: Any,
    *,
    agents: list[str] | None,
    kinds: list[str] | None,
    node: FilterNode | None,
    shared: bool,
    candidates: int,
    limit: int,
    config: MemoryConfig,
    weights: MemoryWeights,
    as_of: datetime | None,
) -> tuple[sql.Composed, list[Any]]:
    """The best ``limit`` memories for ``query``, scored in one statement.

    The nearest ``candidates`` come from the collection's index (now) or from an exact scan of
    the versions current at ``as_of``; each is scored as the weighted sum of its similarity,
    recency (exponential decay from when it happened, by its kind's half-life, measured at
    ``as_of`` or now; past 1,000 half-lives it is 0, where exp would underflow), importance
    and access frequency (logarithmic, full at ``config.access_saturation``), by ``weights``.
    Every part comes back, so that the caller sees why.
    """
    where, where_params = _with_filter(*_scope(agents, kinds, shared), node)
    params: list[Any] = []
    if as_of is None:
        # The candidates first (the index's), then each one's memory by its key: a LATERAL
        # subquery with LIMIT is never flattened, so no plan (even one made before the
        # tables' statistics) scans memories whole to join them.
        found = sql.SQL(
            "SELECT m.id, e.content, e.metadata, e.distance, m.agent_id, m.kind, m.subject, "
            "m.importance, m.happened_at, m.created_at, m.updated_at, m.version, "
            "m.access_count, m.last_accessed_at "
            "FROM (SELECT id, content, metadata, vector <=> %b AS distance FROM {} "
            "WHERE tenant_id = %s AND {} ORDER BY distance LIMIT %s) AS e "
            "JOIN LATERAL (SELECT * FROM memories m WHERE m.tenant_id = %s AND m.id = e.id "
            "AND m.forgotten_at IS NULL AND m.collection = %s LIMIT 1) AS m ON true"
        ).format(spec.table_id, where)
        params += [query, tenant, *where_params, candidates, tenant, collection]
    else:
        # The versions current then, with the columns the filter language names.
        found = sql.SQL(
            "SELECT m.id, h.content, h.metadata, h.distance, h.agent_id, h.kind, h.subject, "
            "h.importance, h.happened_at, m.created_at, h.valid_from AS updated_at, h.version, "
            "m.access_count, m.last_accessed_at "
            "FROM (SELECT * FROM (SELECT memory_id, text AS content, metadata, agent_id, kind, "
            "subject, importance, happened_at, version, valid_from, kind AS entity_type, "
            "coalesce(agent_id, '') AS entity_id, memory_id AS id, valid_from AS created_at, "
            "embedding <=> %b::vector AS distance FROM memory_history "
            "WHERE tenant_id = %s AND collection = %s AND event <> 'forgotten' "
            "AND valid_from <= %s AND (valid_to IS NULL OR valid_to > %s) OFFSET 0) AS v "
            "WHERE {} ORDER BY distance LIMIT %s) AS h "
            "JOIN LATERAL (SELECT * FROM memories m WHERE m.tenant_id = %s "
            "AND m.id = h.memory_id LIMIT 1) AS m ON true"
        ).format(where)
        params += [query, tenant, collection, as_of, as_of, *where_params, candidates, tenant]
    text = sql.SQL(
        "WITH c AS MATERIALIZED ({found}), "
        "s AS (SELECT c.*, CASE WHEN c.distance = 'NaN' THEN 0.0 "
        "ELSE greatest(0.0, least(1.0, 1.0 - c.distance)) END AS s_similarity, "
        "exp(-least(700.0, %s * greatest(0.0, extract(epoch FROM "
        "coalesce(%s::timestamptz, now()) - c.happened_at)) / coalesce(h.seconds, %s))) "
        "AS s_recency, "
        "c.importance AS s_importance, "
        "least(1.0, ln(1.0 + c.access_count) / ln(1.0 + %s)) AS s_access "
        "FROM c LEFT JOIN unnest(%s::text[], %s::float8[]) AS h(kind, seconds) "
        "ON h.kind = c.kind), "
        "p AS (SELECT s.*, %s * s_similarity AS p_similarity, %s * s_recency AS p_recency, "
        "%s * s_importance AS p_importance, %s * s_access AS p_access FROM s) "
        "SELECT p.*, p_similarity + p_recency + p_importance + p_access AS score FROM p "
        "ORDER BY score DESC, id LIMIT %s"
    ).format(found=found)
    params += [
        LN2,
        as_of,
        config.half_life,
        config.access_saturation,
        list(config.half_lives),
        list(config.half_lives.values()),
        weights.similarity,
        weights.recency,
        weights.importance,
        weights.access,
        limit,
    ]
    return text, params


def duplicate_sql(
    spec: CollectionSpec,
    tenant: str,
    collection: str,
    agent: str | None,
    subject: str | None,
    query: Any,
) -> tuple[sql.Composed, list[Any]]:
    """The agent's live memory of ``subject`` nearest to ``query``, with its similarity.

    With a subject, every live memory of it is compared (an index finds them; a subject has
    few); without one, the agent's memories are walked nearest first, through the index, to
    the first without a subject. Nothing is locked: the update that follows checks the memory
    is still live.
    """
    owner, owner_params = _owner(agent)
    columns = sql.SQL(MEMORY_COLUMNS + ", e.vector <=> %b AS distance, e.entity_type, e.entity_id")
    if subject is not None:
        return sql.SQL(
            "SELECT {} FROM memories m JOIN {} e ON e.tenant_id = m.tenant_id AND e.id = m.id "
            "WHERE m.tenant_id = %s AND m.collection = %s AND {} AND m.subject = %s "
            "AND m.forgotten_at IS NULL ORDER BY distance LIMIT 1"
        ).format(columns, spec.table_id, owner), [
            query,
            tenant,
            collection,
            *owner_params,
            subject,
        ]
    # The index's scan, nearest first, joined to each row's memory until one without a
    # subject turns up (an iterative index scan goes on past ef_search for it).
    return sql.SQL(
        "SELECT {} FROM {} e JOIN LATERAL (SELECT * FROM memories m WHERE m.tenant_id = %s "
        "AND m.id = e.id AND m.collection = %s AND {} AND m.subject IS NULL "
        "AND m.forgotten_at IS NULL LIMIT 1) AS m ON true "
        "WHERE e.tenant_id = %s AND e.entity_id = %s ORDER BY distance LIMIT 1"
    ).format(columns, spec.table_id, owner), [
        query,
        tenant,
        collection,
        *owner_params,
        tenant,
        agent or "",
    ]


def select_sql(
    spec: CollectionSpec,
    tenant: str,
    collection: str,
    *,
    ids: list[str] | None = None,
    agent: str | None = None,
    shared: bool = False,
    subject: str | None = None,
    kind: str | None = None,
    node: FilterNode | None = None,
    forgotten: bool = False,
    limit: int | None = None,
    lock: bool = False,
) -> tuple[sql.Composed, list[Any]]:
    """Memories by id or by what they are about, newest first (a forgotten one with its last
    version's text and metadata)."""
    conditions: list[sql.Composable] = [sql.SQL("m.tenant_id = %s AND m.collection = %s")]
    params: list[Any] = [tenant, collection]
    if ids is not None:
        conditions.append(sql.SQL("m.id = ANY(%s)"))
        params.append(ids)
    if shared:
        conditions.append(sql.SQL("m.agent_id IS NULL"))
    elif agent is not None:
        conditions.append(sql.SQL("m.agent_id = %s"))
        params.append(agent)
    if subject is not None:
        conditions.append(sql.SQL("m.subject = %s"))
        params.append(subject)
    if kind is not None:
        conditions.append(sql.SQL("m.kind = %s"))
        params.append(kind)
    if not forgotten:
        conditions.append(sql.SQL("m.forgotten_at IS NULL"))
    if node is not None:
        # The filter names the collection row's columns. With the forgotten (whose collection
        # rows are gone) it is also asked of every version, under the same names.
        condition, more = compile_filter(node)
        live = sql.SQL("m.id IN (SELECT id FROM {} WHERE tenant_id = %s AND {})").format(
            spec.table_id, condition
        )
        if forgotten:
            conditions.append(
                sql.SQL(
                    "({} OR m.id IN (SELECT memory_id FROM (SELECT memory_id, metadata, "
                    "kind AS entity_type, coalesce(agent_id, '') AS entity_id, text AS content, "
                    "valid_from AS created_at, memory_id AS id FROM memory_history "
                    "WHERE tenant_id = %s AND event <> 'forgotten' AND event <> 'consolidated') "
                    "AS v WHERE {}))"
                ).format(live, condition)
            )
            params += [tenant, *more, tenant, *more]
        else:
            conditions.append(live)
            params += [tenant, *more]
    # A forgotten memory's collection row is gone: its text is its last version's.
    text = sql.SQL(
        "SELECT {}, v.text AS last_text, v.metadata AS last_metadata, v.version AS last_version "
        "FROM memories m LEFT JOIN {} e ON e.tenant_id = m.tenant_id AND e.id = m.id "
        "LEFT JOIN LATERAL (SELECT h.text, h.metadata, h.version FROM memory_history h "
        "WHERE h.tenant_id = m.tenant_id AND h.memory_id = m.id AND m.forgotten_at IS NOT NULL "
        "AND h.event IN ('created', 'updated', 'merged') ORDER BY h.version DESC LIMIT 1) AS v "
        "ON true WHERE {} ORDER BY m.happened_at DESC, m.id"
    ).format(sql.SQL(MEMORY_COLUMNS), spec.table_id, sql.SQL(" AND ").join(conditions))
    if limit is not None:
        text = sql.SQL("{} LIMIT %s").format(text)
        params.append(limit)
    if lock:
        text = sql.SQL("{} FOR UPDATE OF m").format(text)
    return text, params


@lru_cache(maxsize=256)
def create_sql(table: str) -> sql.SQL:
    """A new memory in one statement: its row, its collection row and its first version.

    Parameters: tenant, id, collection, agent, kind, subject, importance, time (NULL: now);
    then the collection row's vector, metadata and content; then the version's text,
    metadata and vector. Returns when it happened.
    """
    text = sql.SQL(
        "WITH m AS (INSERT INTO memories (tenant_id, id, collection, agent_id, kind, subject, "
        "importance, happened_at) VALUES (%(tenant)s, %(id)s, %(collection)s, %(agent)s, "
        "%(kind)s, %(subject)s, %(importance)s, coalesce(%(at)s, clock_timestamp())) "
        "RETURNING happened_at), "
        "e AS (INSERT INTO {} (id, tenant_id, entity_type, entity_id, vector, metadata, "
        "content) VALUES (%(id)s, %(tenant)s, %(kind)s, coalesce(%(agent)s, ''), %(vector)s, "
        "%(metadata)s, %(content)s)) "
        "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, "
        "agent_id, kind, subject, text, metadata, importance, happened_at, embedding) "
        "SELECT %(tenant)s, %(id)s, 1, 'created', %(collection)s, %(agent)s, %(kind)s, "
        "%(subject)s, %(text)s, %(version_metadata)s, %(importance)s, m.happened_at, "
        "%(embedding)s FROM m RETURNING happened_at"
    ).format(sql.Identifier(table))
    # Composing costs tens of microseconds; the text depends on the table only.
    return sql.SQL(text.as_string(None))


@lru_cache(maxsize=256)
def update_sql(table: str) -> sql.SQL:
    """A memory's next version in one statement, if it is still live at the version found.

    Its row takes the higher importance, the later time and the new kind; its collection row
    the new vector (NULL: kept), metadata and content; the current version ends and the new one
    starts at the same instant. Returns nothing when the memory was forgotten or changed since.
    """
    text = sql.SQL(
        "WITH m AS (UPDATE memories SET importance = greatest(importance, %(importance)s), "
        "happened_at = greatest(happened_at, coalesce(%(at)s, clock_timestamp())), "
        "kind = %(kind)s, updated_at = clock_timestamp(), version = version + 1 "
        "WHERE tenant_id = %(tenant)s AND id = %(id)s AND version = %(version)s "
        "AND forgotten_at IS NULL RETURNING version, agent_id, subject, importance, happened_at), "
        "closed AS (UPDATE memory_history SET valid_to = statement_timestamp() "
        "WHERE tenant_id = %(tenant)s AND memory_id = %(id)s AND valid_to IS NULL "
        "AND EXISTS (SELECT FROM m)), "
        "e AS (UPDATE {} SET entity_type = %(kind)s, vector = coalesce(%(vector)s, vector), "
        "metadata = %(metadata)s, content = %(content)s WHERE tenant_id = %(tenant)s "
        "AND id = %(id)s AND EXISTS (SELECT FROM m) RETURNING vector) "
        "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, "
        "agent_id, kind, subject, text, metadata, importance, happened_at, embedding, "
        "valid_from) SELECT %(tenant)s, %(id)s, m.version, %(event)s, %(collection)s, "
        "m.agent_id, %(kind)s, m.subject, %(text)s, %(version_metadata)s, m.importance, "
        "m.happened_at, coalesce(%(embedding)s::vector, (SELECT e.vector::vector FROM e)), "
        "statement_timestamp() FROM m RETURNING version"
    ).format(sql.Identifier(table))
    return sql.SQL(text.as_string(None))


@lru_cache(maxsize=256)
def forget_sql(table: str) -> sql.SQL:
    """Forget memories (soft) in one statement, so that each one's last version ends when its
    forgetting starts: the collection rows go, the forgetting is a version of its own.

    Parameters: tenant, ids, into (the summary that replaced them, or NULL), event."""
    text = sql.SQL(
        "WITH e AS (DELETE FROM {} WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s)), "
        "closed AS (UPDATE memory_history SET valid_to = statement_timestamp() "
        "WHERE tenant_id = %(tenant)s AND memory_id = ANY(%(ids)s) AND valid_to IS NULL), "
        "m AS (UPDATE memories SET forgotten_at = statement_timestamp(), "
        "version = version + 1, consolidated_into = %(into)s "
        "WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s) "
        "RETURNING tenant_id, id, version, collection, agent_id, kind, subject) "
        "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, "
        "agent_id, kind, subject, valid_from, valid_to) "
        "SELECT tenant_id, id, version, %(event)s, collection, agent_id, kind, subject, "
        "statement_timestamp(), statement_timestamp() FROM m"
    ).format(sql.Identifier(table))
    return sql.SQL(text.as_string(None))


def consolidation_sql(
    spec: CollectionSpec,
    tenant: str,
    collection: str,
    agent: str | None,
    most_important: float,
    older_than: float,
) -> tuple[sql.Composed, list[Any]]:
    """The agent's live memories (None: the shared ones) that happened more than
    ``older_than`` seconds ago with importance at most ``most_important``, by subject (those
    without one first), oldest first."""
    owner, owner_params = _owner(agent)
    return sql.SQL(
        "SELECT {} FROM memories m JOIN {} e ON e.tenant_id = m.tenant_id AND e.id = m.id "
        "WHERE m.tenant_id = %s AND m.collection = %s AND {} AND m.forgotten_at IS NULL "
        "AND m.importance <= %s AND m.happened_at < now() - make_interval(secs => %s) "
        "ORDER BY m.subject NULLS FIRST, m.happened_at, m.id"
    ).format(sql.SQL(MEMORY_COLUMNS), spec.table_id, owner), [
        tenant,
        collection,
        *owner_params,
        most_important,
        older_than,
    ]


def prune_sql(
    tenant: str,
    collection: str,
    agent: str | None,
    older_than: float | None,
    below_importance: float | None,
    keep: int | None,
) -> tuple[sql.Composed, list[Any]]:
    """The ids of the live memories a pruning policy takes (of ``agent``; None: every
    agent's), locked in id order: older than ``older_than`` seconds and less important than
    ``below_importance`` (those given), or beyond each agent's ``keep`` most important."""
    conditions: list[sql.Composable] = [
        sql.SQL("m.tenant_id = %s AND m.collection = %s AND m.forgotten_at IS NULL")
    ]
    params: list[Any] = [tenant, collection]
    if agent is not None:
        conditions.append(sql.SQL("m.agent_id = %s"))
        params.append(agent)
    policy: list[sql.Composable] = []
    both: list[sql.Composable] = []
    if older_than is not None:
        both.append(sql.SQL("m.happened_at < now() - make_interval(secs => %s)"))
        params.append(older_than)
    if below_importance is not None:
        both.append(sql.SQL("m.importance < %s"))
        params.append(below_importance)
    if both:
        policy.append(sql.SQL("({})").format(sql.SQL(" AND ").join(both)))
    if keep is not None:
        policy.append(
            sql.SQL(
                "m.id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY "
                "agent_id ORDER BY importance DESC, happened_at DESC, id) AS rank "
                "FROM memories WHERE tenant_id = %s AND collection = %s "
                "AND forgotten_at IS NULL) AS r WHERE rank > %s)"
            )
        )
        params += [tenant, collection, keep]
    return sql.SQL("SELECT m.id FROM memories m WHERE {} AND ({}) ORDER BY m.id FOR UPDATE").format(
        sql.SQL(" AND ").join(conditions), sql.SQL(" OR ").join(policy)
    ), params


def flush_sql(tenant: str, counts: dict[str, tuple[int, datetime]]) -> tuple[str, list[Any]]:
    """Add recall counts to memories (ids in order, so concurrent flushes lock alike)."""
    ids = sorted(counts)
    return (
        "UPDATE memories m SET access_count = m.access_count + u.n, "
        "last_accessed_at = greatest(m.last_accessed_at, u.at) "
        "FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[]) AS u(id, n, at) "
        "WHERE m.tenant_id = %s AND m.id = u.id",
        [ids, [counts[i][0] for i in ids], [counts[i][1] for i in ids], tenant],
    )
