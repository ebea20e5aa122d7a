"""The checkpointer's SQL, built by pure functions that return ``(sql, params)``.

The tables are migration 0012's. Every statement names its tenant (row-level security would
scope it anyway; naming it lets the primary keys, which start with it, serve the lookups).
Each write is one statement, so it is atomic without a transaction of its own and costs one
round trip: a checkpoint and its new channel values go in together (a data-modifying CTE),
a task's writes go in as arrays (``unnest``), whatever their number.
"""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import sql

__all__ = [
    "copy_thread",
    "delete_runs",
    "delete_threads",
    "get_tuple",
    "list_page",
    "prune_keep_latest",
    "put_checkpoint",
    "put_writes",
]

Statement = tuple[sql.SQL | sql.Composed, dict[str, Any]]

# A checkpoint with its channel values (the blobs of the versions it names; an "empty" blob
# is a channel without a value) and its pending writes in LangGraph's order (writes_sort_key:
# task path, task id, index). One round trip for any number of rows: the laterals run in the
# server, one index lookup each.
_SELECT: LiteralString = """
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id,
       c.checkpoint, c.metadata,
       b.channels AS blob_channels, b.types AS blob_types, b.blobs AS blob_values,
       w.tasks AS write_tasks, w.channels AS write_channels, w.types AS write_types,
       w.blobs AS write_values
FROM langgraph_checkpoints AS c
CROSS JOIN LATERAL (
    SELECT array_agg(bl.channel) AS channels, array_agg(bl.type) AS types,
           array_agg(bl.blob) AS blobs
    FROM jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    CROSS JOIN LATERAL (
        -- One primary-key lookup per channel (LIMIT keeps the planner from joining all the
        -- thread's versions instead, which grow with every step).
        SELECT b.channel, b.type, b.blob FROM langgraph_checkpoint_blobs AS b
        WHERE b.tenant_id = c.tenant_id AND b.thread_id = c.thread_id
          AND b.checkpoint_ns = c.checkpoint_ns
          AND b.channel = v.key COLLATE "C" AND b.version = v.value COLLATE "C"
          AND b.type <> 'empty'
        LIMIT 1
    ) AS bl
) AS b
CROSS JOIN LATERAL (
    SELECT array_agg(wr.task_id ORDER BY wr.task_path, wr.task_id, wr.idx) AS tasks,
           array_agg(wr.channel ORDER BY wr.task_path, wr.task_id, wr.idx) AS channels,
           array_agg(wr.type ORDER BY wr.task_path, wr.task_id, wr.idx) AS types,
           array_agg(wr.blob ORDER BY wr.task_path, wr.task_id, wr.idx) AS blobs
    FROM langgraph_checkpoint_writes AS wr
    WHERE wr.tenant_id = c.tenant_id AND wr.thread_id = c.thread_id
      AND wr.checkpoint_ns = c.checkpoint_ns AND wr.checkpoint_id = c.checkpoint_id
) AS w
"""

_BY_ID: LiteralString = (
    _SELECT + "WHERE c.tenant_id = %(tenant)s AND c.thread_id = %(thread)s "
    "AND c.checkpoint_ns = %(ns)s AND c.checkpoint_id = %(id)s"
)
_LATEST: LiteralString = (
    _SELECT + "WHERE c.tenant_id = %(tenant)s AND c.thread_id = %(thread)s "
    "AND c.checkpoint_ns = %(ns)s ORDER BY c.checkpoint_id DESC LIMIT 1"
)


def get_tuple(tenant: str, thread: str, ns: str, checkpoint_id: str | None) -> Statement:
    """The checkpoint ``checkpoint_id`` of a thread's namespace, or its latest when None."""
    params = {"tenant": tenant, "thread": thread, "ns": ns, "id": checkpoint_id}
    return sql.SQL(_LATEST if checkpoint_id is None else _BY_ID), params


# A page's position in the listing order: newest checkpoint id first, then thread and
# namespace (only a listing across threads or namespaces needs them to be total).
Position = tuple[str, str, str]


def list_page(
    tenant: str,
    *,
    thread: str | None,
    ns: str | None,
    checkpoint_id: str | None,
    metadata: str | None,
    before: str | None,
    after: Position | None,
    size: int,
) -> Statement:
    """One page of a listing, newest first: the checkpoints after position ``after``.

    ``metadata`` (JSON text) is contained in each checkpoint's metadata; ``before`` is a
    checkpoint id every listed one precedes.
    """
    where = [sql.SQL("c.tenant_id = %(tenant)s")]
    params: dict[str, Any] = {"tenant": tenant, "size": size}
    if thread is not None:
        where.append(sql.SQL("c.thread_id = %(thread)s"))
        params["thread"] = thread
    if ns is not None:
        where.append(sql.SQL("c.checkpoint_ns = %(ns)s"))
        params["ns"] = ns
    if checkpoint_id is not None:
        where.append(sql.SQL("c.checkpoint_id = %(id)s"))
        params["id"] = checkpoint_id
    if metadata is not None:
        where.append(sql.SQL("c.metadata @> %(metadata)s::jsonb"))
        params["metadata"] = metadata
    if before is not None:
        where.append(sql.SQL("c.checkpoint_id < %(before)s"))
        params["before"] = before
    if after is not None:
        # The first condition alone bounds an index scan; the row comparison breaks ties.
        where.append(
            sql.SQL(
                "c.checkpoint_id <= %(after_id)s AND (c.checkpoint_id, c.thread_id, "
                "c.checkpoint_ns) < (%(after_id)s, %(after_thread)s, %(after_ns)s)"
            )
        )
        params.update(after_id=after[0], after_thread=after[1], after_ns=after[2])
    query = sql.SQL("{} WHERE {} {}").format(
        sql.SQL(_SELECT),
        sql.SQL(" AND ").join(where),
        sql.SQL(
            "ORDER BY c.checkpoint_id DESC, c.thread_id DESC, c.checkpoint_ns DESC LIMIT %(size)s"
        ),
    )
    return query, params


# The channel values go in first, in the same statement; a version already stored is the
# same value (versions are unique per channel), so it stays. The version's text is taken
# from the JSON of the new versions, as the reads take it from the checkpoint's.
_PUT: LiteralString = """
WITH blobs AS (
    INSERT INTO langgraph_checkpoint_blobs
        (tenant_id, thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(tenant)s, %(thread)s, %(ns)s, b.channel, v.value, b.type, b.blob
    FROM unnest(%(channels)s::text[], %(types)s::text[], %(blobs)b::bytea[])
         AS b(channel, type, blob)
    JOIN jsonb_each_text(%(versions)s::jsonb) AS v ON v.key = b.channel
    ON CONFLICT DO NOTHING
)
INSERT INTO langgraph_checkpoints AS c
    (tenant_id, thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id,
     checkpoint, metadata)
VALUES (%(tenant)s, %(thread)s, %(ns)s, %(id)s, %(parent)s, %(run_id)s,
        %(checkpoint)s::jsonb, %(metadata)s::jsonb)
ON CONFLICT (tenant_id, thread_id, checkpoint_ns, checkpoint_id) DO UPDATE
SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata, run_id = EXCLUDED.run_id
"""


def put_checkpoint(
    tenant: str,
    thread: str,
    ns: str,
    checkpoint_id: str,
    parent: str | None,
    run_id: str | None,
    checkpoint: str,
    metadata: str,
    versions: str,
    blobs: list[tuple[str, str, bytes | None]],
) -> Statement:
    """Store a checkpoint (JSON text, without its values), its metadata (JSON text) and the
    values of the channels whose ``versions`` (JSON text) are new: ``(channel, type, blob)``."""
    params = {
        "tenant": tenant,
        "thread": thread,
        "ns": ns,
        "id": checkpoint_id,
        "parent": parent,
        "run_id": run_id,
        "checkpoint": checkpoint,
        "metadata": metadata,
        "versions": versions,
        "channels": [channel for channel, _, _ in blobs],
        "types": [kind for _, kind, _ in blobs],
        "blobs": [blob for _, _, blob in blobs],
    }
    return sql.SQL(_PUT), params


# A task's regular write is stored once (a retry of the task writes the same again); a
# special one (negative index: an error, an interrupt) replaces the one before it.
_PUT_WRITES: LiteralString = """
INSERT INTO langgraph_checkpoint_writes AS w
    (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel,
     type, blob)
SELECT %(tenant)s, %(thread)s, %(ns)s, %(id)s, %(task)s, %(path)s, n.idx, n.channel, n.type,
       n.blob
FROM unnest(%(idx)s::integer[], %(channels)s::text[], %(types)s::text[], %(blobs)b::bytea[])
     AS n(idx, channel, type, blob)
ON CONFLICT (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE
SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob,
    task_path = EXCLUDED.task_path
WHERE EXCLUDED.idx < 0
"""


def put_writes(
    tenant: str,
    thread: str,
    ns: str,
    checkpoint_id: str,
    task_id: str,
    task_path: str,
    writes: list[tuple[int, str, str, bytes]],
) -> Statement:
    """Store a task's writes, ``(idx, channel, type, blob)`` each, in one statement."""
    params = {
        "tenant": tenant,
        "thread": thread,
        "ns": ns,
        "id": checkpoint_id,
        "task": task_id,
        "path": task_path,
        "idx": [idx for idx, _, _, _ in writes],
        "channels": [channel for _, channel, _, _ in writes],
        "types": [kind for _, _, kind, _ in writes],
        "blobs": [blob for _, _, _, blob in writes],
    }
    return sql.SQL(_PUT_WRITES), params


_DELETE_THREADS: LiteralString = """
WITH blobs AS (
    DELETE FROM langgraph_checkpoint_blobs
    WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(threads)s::text[])
), writes AS (
    DELETE FROM langgraph_checkpoint_writes
    WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(threads)s::text[])
)
DELETE FROM langgraph_checkpoints
WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(threads)s::text[])
"""


def delete_threads(tenant: str, threads: list[str]) -> Statement:
    """Remove every checkpoint, value and write of ``threads``."""
    return sql.SQL(_DELETE_THREADS), {"tenant": tenant, "threads": threads}


# What the removals below share: the checkpoints in ``gone`` go with their writes, and so do
# the values no remaining checkpoint of their threads names. Every part of the statement sees
# the rows as they were before it, so "remaining" is "of those threads, not gone".
_SWEEP: LiteralString = """
, gone_writes AS (
    DELETE FROM langgraph_checkpoint_writes AS w USING gone AS g
    WHERE w.tenant_id = %(tenant)s AND w.thread_id = g.thread_id
      AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id
), touched AS (
    SELECT DISTINCT thread_id FROM gone
), named AS (
    SELECT c.thread_id, c.checkpoint_ns, v.key COLLATE "C" AS channel,
           v.value COLLATE "C" AS version
    FROM langgraph_checkpoints AS c
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
    WHERE c.tenant_id = %(tenant)s AND c.thread_id IN (SELECT thread_id FROM touched)
      AND NOT EXISTS (
          SELECT 1 FROM gone AS g
          WHERE g.thread_id = c.thread_id AND g.checkpoint_ns = c.checkpoint_ns
            AND g.checkpoint_id = c.checkpoint_id
      )
)
DELETE FROM langgraph_checkpoint_blobs AS b
WHERE b.tenant_id = %(tenant)s AND b.thread_id IN (SELECT thread_id FROM touched)
  AND NOT EXISTS (
      SELECT 1 FROM named AS n
      WHERE n.thread_id = b.thread_id AND n.checkpoint_ns = b.checkpoint_ns
        AND n.channel = b.channel AND n.version = b.version
  )
"""

_DELETE_RUNS: LiteralString = (
    """
WITH gone AS (
    DELETE FROM langgraph_checkpoints
    WHERE tenant_id = %(tenant)s AND run_id = ANY(%(runs)s::text[])
    RETURNING thread_id, checkpoint_ns, checkpoint_id
)"""
    + _SWEEP
)


def delete_runs(tenant: str, run_ids: list[str]) -> Statement:
    """Remove the checkpoints made by ``run_ids``, their writes and the values left unused."""
    return sql.SQL(_DELETE_RUNS), {"tenant": tenant, "runs": run_ids}


# LangGraph's DeltaChannel keeps a value as the writes since its last snapshot: a checkpoint
# whose metadata counts updates since a snapshot ("counters_since_delta_snapshot") needs its
# ancestors back to the nearest one that stores the channel's value (a blob that is not
# "empty"), with their writes. Those are kept with the latest checkpoint of each namespace.
_PRUNE: LiteralString = (
    """
WITH RECURSIVE latest AS (
    SELECT DISTINCT ON (thread_id, checkpoint_ns)
           thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata
    FROM langgraph_checkpoints
    WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(threads)s::text[])
    ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC
), chain AS (
    SELECT p.thread_id, p.checkpoint_ns, p.checkpoint_id, p.parent_checkpoint_id,
           d.channel COLLATE "C" AS channel,
           (p.checkpoint -> 'channel_versions' ->> d.channel) COLLATE "C" AS version
    FROM latest AS l
    CROSS JOIN LATERAL jsonb_object_keys(
        CASE jsonb_typeof(l.metadata -> 'counters_since_delta_snapshot')
            WHEN 'object' THEN l.metadata -> 'counters_since_delta_snapshot'
            ELSE '{}'::jsonb
        END
    ) AS d(channel)
    JOIN langgraph_checkpoints AS p
      ON p.tenant_id = %(tenant)s AND p.thread_id = l.thread_id
     AND p.checkpoint_ns = l.checkpoint_ns AND p.checkpoint_id = l.parent_checkpoint_id
    UNION
    SELECT p.thread_id, p.checkpoint_ns, p.checkpoint_id, p.parent_checkpoint_id,
           ch.channel, (p.checkpoint -> 'channel_versions' ->> ch.channel) COLLATE "C"
    FROM chain AS ch
    JOIN langgraph_checkpoints AS p
      ON p.tenant_id = %(tenant)s AND p.thread_id = ch.thread_id
     AND p.checkpoint_ns = ch.checkpoint_ns AND p.checkpoint_id = ch.parent_checkpoint_id
    WHERE NOT EXISTS (
        SELECT 1 FROM langgraph_checkpoint_blobs AS b
        WHERE b.tenant_id = %(tenant)s AND b.thread_id = ch.thread_id
          AND b.checkpoint_ns = ch.checkpoint_ns AND b.channel = ch.channel
          AND b.version = ch.version AND b.type <> 'empty'
    )
), kept AS (
    SELECT thread_id, checkpoint_ns, checkpoint_id FROM latest
    UNION
    SELECT thread_id, checkpoint_ns, checkpoint_id FROM chain
), gone AS (
    DELETE FROM langgraph_checkpoints AS c
    WHERE c.tenant_id = %(tenant)s AND c.thread_id = ANY(%(threads)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM kept AS k
          WHERE k.thread_id = c.thread_id AND k.checkpoint_ns = c.checkpoint_ns
            AND k.checkpoint_id = c.checkpoint_id
      )
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint_id
)"""
    + _SWEEP
)


def prune_keep_latest(tenant: str, threads: list[str]) -> Statement:
    """Keep the latest checkpoint of each namespace of ``threads`` (and what its delta
    channels need); remove the others, their writes and the values left unused."""
    return sql.SQL(_PRUNE), {"tenant": tenant, "threads": threads}


# Refused (nothing copied) when the target thread has checkpoints already: two histories
# interleaved by checkpoint id would make neither.
_COPY: LiteralString = """
WITH used AS (
    SELECT EXISTS (
        SELECT 1 FROM langgraph_checkpoints
        WHERE tenant_id = %(tenant)s AND thread_id = %(target)s
    ) AS used
), checkpoints AS (
    INSERT INTO langgraph_checkpoints
        (tenant_id, thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id,
         checkpoint, metadata, created_at)
    SELECT tenant_id, %(target)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id,
           checkpoint, metadata, created_at
    FROM langgraph_checkpoints
    WHERE tenant_id = %(tenant)s AND thread_id = %(source)s AND NOT (SELECT used FROM used)
), blobs AS (
    INSERT INTO langgraph_checkpoint_blobs
        (tenant_id, thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT tenant_id, %(target)s, checkpoint_ns, channel, version, type, blob
    FROM langgraph_checkpoint_blobs
    WHERE tenant_id = %(tenant)s AND thread_id = %(source)s AND NOT (SELECT used FROM used)
), writes AS (
    INSERT INTO langgraph_checkpoint_writes
        (tenant_id, thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path,
         channel, type, blob)
    SELECT tenant_id, %(target)s, checkpoint_ns, checkpoint_id, task_id, idx, task_path,
           channel, type, blob
    FROM langgraph_checkpoint_writes
    WHERE tenant_id = %(tenant)s AND thread_id = %(source)s AND NOT (SELECT used FROM used)
)
SELECT used FROM used
"""


def copy_thread(tenant: str, source: str, target: str) -> Statement:
    """Copy every checkpoint, value and write of ``source`` to ``target``, unless ``target``
    has checkpoints; the statement's one value says whether it had."""
    return sql.SQL(_COPY), {"tenant": tenant, "source": source, "target": target}
