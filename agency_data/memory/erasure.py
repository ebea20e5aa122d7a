"""Erasing memories with everything made from them, and reading every version for what it names, for
erasure of a data subject or a tenant (:mod:`agency_data.subjects`).

A memory's versions, its links and the knowledge graph's facts learned from it go by
``ON DELETE CASCADE``. What is made from it goes too: the consolidation summaries that replaced
it (their text was written from its text), and theirs in turn, with their collection rows.
The change feed keeps only that each was deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from psycopg import sql

from agency_data.memory._checks import history_key
from agency_data.outbox.changes import erase_changes
from agency_data.postgres.database import Database
from agency_data.vectors.catalog import Catalog

__all__ = ["erase_memories", "memory_versions"]

_PAGE = 1000
_VERSIONS = (
    "SELECT memory_id, version, metadata, kind, agent_id FROM memory_history "
    "WHERE tenant_id = %s AND (memory_id, version) > (%s, %s) "
    "ORDER BY memory_id, version LIMIT %s"
)

# The memories and every summary made from them, transitively; deleted, with their collections.
_ERASE = (
    'WITH RECURSIVE made(id) AS (SELECT unnest(%(ids)s::text[]) COLLATE "C" '
    "UNION SELECT l.summary_id FROM memory_links l JOIN made ON l.tenant_id = %(tenant)s "
    "AND l.replaced_id = made.id) "
    "DELETE FROM memories m USING made WHERE m.tenant_id = %(tenant)s AND m.id = made.id "
    "RETURNING m.id, m.collection"
)


async def erase_memories(db: Database, catalog: Catalog, tenant: str, ids: list[str]) -> int:
    """Delete the memories ``ids`` of ``tenant`` (in the caller's transaction, if any) with
    everything made from them; return how many memories went, summaries included."""
    if not ids:
        return 0
    async with db.transaction():
        rows = await db.fetch(_ERASE, {"tenant": tenant, "ids": ids})
        by_collection: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            by_collection[row["collection"]].append(row["id"])
        known = set(await catalog.names()) if by_collection else set()
        for name, gone in by_collection.items():
            if name not in known:
                continue  # its collection was dropped, and its rows with it
            spec = await catalog.get(name)
            await db.execute(
                sql.SQL("DELETE FROM {} WHERE tenant_id = %s AND id = ANY(%s)").format(
                    spec.table_id
                ),
                [tenant, gone],
            )
        await erase_changes(db, tenant, "memories", [row["id"] for row in rows])
    return len(rows)


async def memory_versions(db: Database, tenant: str) -> AsyncIterator[dict[str, Any]]:
    """Every version of every memory of ``tenant`` (its id, version, kind, agent and metadata,
    opened if sealed), a page at a time: where erasure looks for a data subject, since a
    forgotten memory has no collection row left and an update may have moved its current one
    to someone else."""
    cipher = db.cipher
    after: tuple[str, int] = ("", 0)
    while True:
        rows = await db.fetch(_VERSIONS, [tenant, *after, _PAGE])
        await cipher.ensure(tenant, write=False)
        for row in rows:
            key = history_key(row["memory_id"], row["version"])
            metadata = cipher.open(tenant, "memory_history", "metadata", key, row["metadata"])
            yield {**row, "metadata": metadata}
        if len(rows) < _PAGE:
            return
        after = (rows[-1]["memory_id"], rows[-1]["version"])
