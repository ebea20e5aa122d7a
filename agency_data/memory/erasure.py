"""Erasing memories with everything made from them, for ``forget(hard=True)`` and for the
erasure of a data subject or a tenant (:mod:`agency_data.subjects`).

A memory's versions, its links and the knowledge graph's facts learned from it go by
``ON DELETE CASCADE``. What is made from it goes too: the consolidation summaries that replaced
it (their text was written from its text), and theirs in turn, with their collection rows.
The change feed keeps only that each was deleted.
"""

from __future__ import annotations

from collections import defaultdict

from psycopg import sql

from agency_data.outbox.changes import erase_changes
from agency_data.postgres.database import Database
from agency_data.vectors.catalog import Catalog

__all__ = ["erase_memories"]

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
