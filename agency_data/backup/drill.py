"""The restore drill: a backup set restored into a throwaway cluster and checked there.

A checksum says the files are the ones written; only a restore says they make a database.
The drill restores the set (with its parents) into a temporary folder, starts it on the
embedded server's binaries, and checks that:

- every B-tree index passes ``amcheck``'s ``bt_index_check``;
- every table holds the rows the manifest counted;
- the collections catalog has the manifest's checksum;
- every vector index is valid;
- a sample of searches, each with a stored vector of its collection, returns the same ids on
  the copy as on the source (meaningful for a backup of a quiet source; skipped without one).

Then the copy is stopped and deleted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel

from agency_data.backup.restore import restore_set
from agency_data.backup.sets import BackupSet, count_statement
from agency_data.dsn import with_database
from agency_data.embedded import EmbeddedPostgres
from agency_data.errors import AgencyDataError

__all__ = ["Check", "VerifyReport", "drill"]

_SAMPLES = 5
# A drill's server needs little, and must not take the host's memory from the real one.
_SETTINGS = {
    "shared_buffers": "128MB",
    "effective_cache_size": "512MB",
    "maintenance_work_mem": "64MB",
    "max_connections": "20",
    "shared_preload_libraries": "''",
    "archive_mode": "off",
    "summarize_wal": "off",
}


class Check(BaseModel):
    """One check of the drill: what, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


class VerifyReport(BaseModel):
    """What ``verify`` found: the checksums' problems, and the restore drill's checks."""

    set: str
    problems: list[str]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """True when every file matched its checksum and every check passed."""
        return not self.problems and all(check.ok for check in self.checks)


async def drill(
    repository: Path, backup: BackupSet, bin_dir: Path, source: str | None
) -> list[Check]:
    """Restore ``backup`` into a temporary cluster, check it, and delete it."""
    folder = Path(tempfile.mkdtemp(prefix="agency-data-drill-"))
    if os.geteuid() == 0:
        # Under root the server runs as its own user, which must pass through this folder.
        folder.chmod(0o711)
    server: EmbeddedPostgres | None = None
    try:
        try:
            await restore_set(repository, backup.name, folder / "data", bin_dir)
            server = EmbeddedPostgres(folder / "data", settings=_SETTINGS)
            superuser = await asyncio.to_thread(server.acquire)
        except AgencyDataError as exc:
            return [Check(name="restore", ok=False, detail=str(exc))]
        copy = with_database(superuser, backup.manifest.database)
        return [
            Check(name="restore", ok=True, detail="restored and started"),
            *await _checks(copy, source, backup),
        ]
    finally:
        if server is not None:
            await asyncio.to_thread(server.release)
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


async def _checks(copy: str, source: str | None, backup: BackupSet) -> list[Check]:
    manifest = backup.manifest
    checks: list[Check] = []
    async with await psycopg.AsyncConnection.connect(
        copy, autocommit=True, row_factory=dict_row
    ) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        indexes = await _all(
            conn,
            "SELECT c.oid::regclass::text AS name FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        )
        broken = []
        for index in indexes:
            try:
                await conn.execute("SELECT bt_index_check(%s::regclass, true)", [index["name"]])
            except psycopg.Error as exc:
                broken.append(f"{index['name']}: {exc}")
        checks.append(
            Check(
                name="amcheck",
                ok=not broken,
                detail="; ".join(broken) or f"{len(indexes)} B-tree indexes consistent",
            )
        )
        counted: dict[str, int] = {}
        for table in manifest.table_rows:
            row = await _one(conn, count_statement(table))
            counted[table] = int(row["n"])
        differ = [
            f"{t}: {counted[t]} rows, the manifest says {n}"
            for t, n in manifest.table_rows.items()
            if counted[t] != n
        ]
        checks.append(
            Check(
                name="row counts",
                ok=not differ,
                detail="; ".join(differ) or f"{len(counted)} tables as the manifest counted",
            )
        )
        catalog = await _one(
            conn,
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY name), '')) AS sum "
            "FROM embedding_collections t",
        )
        checks.append(
            Check(
                name="collections catalog",
                ok=catalog["sum"] == manifest.collections_checksum,
                detail="checksum as recorded"
                if catalog["sum"] == manifest.collections_checksum
                else "checksum differs from the manifest's",
            )
        )
        collections = await _all(
            conn,
            "SELECT c.name, c.table_name, c.metric, i.indisvalid AS valid "
            "FROM embedding_collections c "
            "LEFT JOIN pg_index i ON i.indexrelid = to_regclass(quote_ident(c.table_name || '_ann'))",
        )
        invalid = [c["name"] for c in collections if c["valid"] is False]
        indexed = [c for c in collections if c["valid"]]
        checks.append(
            Check(
                name="vector indexes",
                ok=not invalid,
                detail=f"invalid: {', '.join(invalid)}" if invalid else f"{len(indexed)} valid",
            )
        )
        checks.append(await _searches(conn, source, manifest.database, indexed))
    return checks


async def _searches(
    conn: psycopg.AsyncConnection[Any], source: str | None, database: str, collections: list[Any]
) -> Check:
    if source is None or not collections:
        why = "no source to compare with" if source is None else "no indexed collection"
        return Check(name="searches", ok=True, detail=f"skipped: {why}")
    operators = {"cosine": "<=>", "euclidean": "<->", "inner_product": "<#>", "manhattan": "<+>"}
    compared = 0
    differ: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        with_database(source, database), autocommit=True, row_factory=dict_row
    ) as original:
        for collection in collections:
            table = sql.Identifier(collection["table_name"])
            operator = sql.SQL(operators.get(collection["metric"], "<->"))
            samples = await _all(
                conn,
                sql.SQL("SELECT tenant_id, vector FROM {} ORDER BY id LIMIT {}").format(
                    table, sql.Literal(_SAMPLES)
                ),
            )
            for sample in samples:
                query = sql.SQL(
                    "SELECT id FROM {t} WHERE tenant_id = %s "
                    "ORDER BY vector {op} %s::text::vector LIMIT 10"
                ).format(t=table, op=operator)
                params = [sample["tenant_id"], str(sample["vector"])]
                here = [r["id"] for r in await _all(conn, query, params)]
                there = [r["id"] for r in await _all(original, query, params)]
                compared += 1
                if here != there:
                    differ.append(collection["name"])
    return Check(
        name="searches",
        ok=not differ,
        detail=f"differ from the source in {', '.join(sorted(set(differ)))}"
        if differ
        else f"{compared} searches return the source's ids",
    )


async def _all(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None
) -> list[dict[str, Any]]:
    return await (await conn.execute(query, params)).fetchall()


async def _one(conn: psycopg.AsyncConnection[Any], query: Any) -> dict[str, Any]:
    row = await (await conn.execute(query)).fetchone()
    assert row is not None, "an aggregate returns a row"
    return dict(row)
