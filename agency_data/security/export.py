"""Exports: a tenant's rows of a table or collection as JSON-ready dicts, masked by default.

``dl.tenant(t).export("tasks")`` yields every task of the tenant, oldest first, through a
server-side cursor (memory stays flat); each row passes through the :class:`Masker` (its JSON
paths hidden, its strings masked) unless ``masked=False``, for a caller entitled to the values.
Collections give their vectors as lists of floats; search columns (``tsvector``) are left out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from psycopg import sql

from agency_data.errors import ValidationError
from agency_data.inputs import check_bool, check_int
from agency_data.postgres.errors import translate_errors
from agency_data.security.fields import COLLECTION_COLUMNS, SEALABLE, sealed_key

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.security.masking import Masker
    from agency_data.vectors.catalog import Catalog

__all__ = ["export_rows"]

_TABLES = ("agents", "tasks")
# What field encryption may seal, by table.
_MAX_BATCH = 100_000


async def export_rows(
    db: Database,
    catalog: Catalog,
    tenant: str,
    source: str,
    masker: Masker,
    *,
    masked: bool = True,
    batch_size: int = 1000,
) -> AsyncIterator[dict[str, Any]]:
    """Every row of ``source`` (``agents``, ``tasks`` or a collection's name) for ``tenant``."""
    check_bool(masked, "masked")
    check_int(batch_size, "batch_size", 1, _MAX_BATCH)
    if not isinstance(source, str) or not source:
        raise ValidationError(
            "source must be 'agents', 'tasks' or a collection's name", field="source"
        )
    if source in _TABLES:
        table, name, sealed_as = sql.Identifier(source), source, source
        columns: tuple[str, ...] = SEALABLE.get(source, ())
    else:
        spec = await catalog.load(source)  # NotFound for a collection that does not exist
        table, name, sealed_as = spec.table_id, source, spec.table
        columns = COLLECTION_COLUMNS
    # Rows as JSON in PostgreSQL, search vectors dropped; the tenant's own by row security too.
    query = sql.SQL(
        "SELECT to_jsonb(t) - 'search' - 'content_tsv' - 'lease_token' AS row FROM {} t "
        "WHERE tenant_id = %s ORDER BY created_at, id"
    ).format(table)
    async with db.connection() as conn, conn.transaction():
        with translate_errors(f"exporting {name}"):
            await db.enter_tenant(conn)
            async with conn.cursor(name=f"agency_export_{uuid.uuid4().hex[:12]}") as cursor:
                cursor.itersize = batch_size
                await cursor.execute(query, [tenant])
                async for record in cursor:
                    # Sealed fields opened: an export gives the values (masked or not).
                    row = record["row"]
                    await db.cipher.ensure(tenant, _key_ids(row, columns), write=False)
                    plain = _plain(db.cipher.open_row(tenant, sealed_as, row, columns))
                    yield masker.row(name, plain) if masked else plain


def _key_ids(row: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    return [key for column in columns if (key := sealed_key(row.get(column))) is not None]


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    vector = row.get("vector")
    if isinstance(vector, str) and vector.startswith("["):
        # pgvector's text form, which is JSON: the floats themselves.
        row["vector"] = orjson.loads(vector)
    return row
