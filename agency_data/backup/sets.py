"""Backup sets: a PostgreSQL base backup (full, or incremental on the previous) and a manifest.

A set is a folder ``<repository>/<UTC time to the microsecond>-full`` (or ``-incr``) holding ``pgdata/`` (what
``pg_basebackup`` wrote, with its own ``backup_manifest`` of per-file SHA-256 checksums, and the
WAL that makes it consistent) and ``agency-backup.json``: what the set is, the LSNs and times it
spans, the server's version, its size, the row count of each of our tables and a checksum of the
collections catalog, and the schema version. Folders are 0700 and files 0600.

An incremental set copies only the blocks changed since its parent's start, from the WAL
summaries the server keeps (``summarize_wal = on``, which the embedded server sets); it restores
by ``pg_combinebackup`` with its chain of parents.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from agency_data.backup.valkey import SNAPSHOT, snapshot_redis
from agency_data.dsn import with_database
from agency_data.errors import BackupError, NotFound
from agency_data.files import make_private_dirs, tighten
from agency_data.postgres.tools import run_client_tool

__all__ = [
    "BackupSet",
    "SetManifest",
    "count_statement",
    "counted_tables",
    "create_set",
    "list_sets",
    "verify_set",
]

# Tables the layer changes by itself while a backup runs: the audit sealer moves records from
# audit_pending into audit_log (making heads as it goes). Counted apart, the manifest and the
# copy could disagree by a move; audit records are counted as one, sealed or not.
_COUNTED_TOGETHER = {"audit_log": ("audit_log", "audit_pending")}
_NOT_COUNTED = frozenset({"audit_pending", "audit_heads"})


def counted_tables(tables: list[str]) -> list[str]:
    """The tables a manifest counts the rows of."""
    return [table for table in tables if table not in _NOT_COUNTED]


def count_statement(table: str) -> psycopg.sql.Composed:
    """The statement counting ``table``'s rows as a manifest does (``n``)."""
    parts = [
        psycopg.sql.SQL("(SELECT count(*) FROM {})").format(psycopg.sql.Identifier(name))
        for name in _COUNTED_TOGETHER.get(table, (table,))
    ]
    return psycopg.sql.SQL("SELECT {} AS n").format(psycopg.sql.SQL(" + ").join(parts))


_log = logging.getLogger("agency_data.backup")

MANIFEST = "agency-backup.json"
_NAME = re.compile(r"^\d{8}T\d{12}Z-(full|incr)$")
# To the microsecond: two sets taken within a second must not collide.
_STAMP = "%Y%m%dT%H%M%S%fZ"


class SetManifest(BaseModel):
    """What ``agency-backup.json`` records about a set."""

    name: str
    kind: Literal["full", "incremental"]
    parent: str | None = None
    started_at: datetime
    finished_at: datetime
    start_lsn: str
    stop_lsn: str
    timeline: int
    server_version: str
    database: str
    schema_version: str | None = None
    size_bytes: int
    table_rows: dict[str, int] = Field(default_factory=dict)
    collections_checksum: str | None = None
    # The Valkey snapshot (valkey.rdb) beside the base backup: its size, or why there is none.
    valkey_bytes: int | None = None
    valkey_note: str | None = None
    # gzip: pgdata/ holds base.tar.gz and pg_wal.tar.gz (pg_basebackup -Ft) beside its
    # backup_manifest, unpacked again by a restore.
    compression: Literal["none", "gzip"] = "none"


@dataclass(frozen=True)
class BackupSet:
    """A set in the repository, with its manifest."""

    path: Path
    manifest: SetManifest

    @property
    def name(self) -> str:
        """The set's folder name (its UTC start time and kind)."""
        return self.path.name


async def create_set(
    repository: Path,
    source: str,
    database: str,
    bin_dir: Path,
    *,
    incremental: bool = False,
    migrations_table: str = "agency_data_migrations",
    redis_url: str | None = None,
    compress: int = 0,
) -> BackupSet:
    """Take a base backup of ``source`` (a superuser or REPLICATION role's DSN) into a new set.

    With ``incremental``, on top of the latest set in ``repository`` (there must be one).
    With ``redis_url``, a snapshot of that server joins the set; a failed one is noted in the
    manifest, not fatal (Redis holds the cache, which refills). ``compress`` (1-9): the
    files are gzip-compressed tar archives at that level.
    """
    parent = None
    if incremental:
        existing = list_sets(repository)
        if not existing:
            raise BackupError(
                f"no backup set in {repository} to build an incremental one on; "
                "create a full one first (agency-data backup create)"
            )
        parent = existing[-1]
    started = datetime.now(UTC)
    name = f"{started.strftime(_STAMP)}-{'incr' if incremental else 'full'}"
    target = repository / name
    try:
        make_private_dirs(repository)
        target.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"a backup set named {name} exists already; try again") from None
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup set folder {target}: {exc.strerror}; set "
            "backup.directory to a writable folder"
        ) from exc
    try:
        facts = await _facts(source, database, migrations_table)
        packing = ["-Ft", f"--compress=gzip:{compress}"] if compress else ["-Fp"]
        args = ["-D", str(target / "pgdata"), *packing, "-X", "stream", "-c", "fast"]
        args += ["--manifest-checksums=SHA256"]
        if parent is not None:
            args.append(f"--incremental={parent.path / 'pgdata' / 'backup_manifest'}")
        await _run(bin_dir / "pg_basebackup", args, source, "the base backup")
        lsns = _wal_range(target / "pgdata" / "backup_manifest")
        valkey = await _snapshot(redis_url, target / SNAPSHOT)
        manifest = SetManifest(
            name=name,
            kind="incremental" if incremental else "full",
            parent=parent.name if parent is not None else None,
            started_at=started,
            finished_at=datetime.now(UTC),
            start_lsn=lsns[0],
            stop_lsn=lsns[1],
            timeline=lsns[2],
            size_bytes=await asyncio.to_thread(_size, target),
            compression="gzip" if compress else "none",
            **valkey,
            **facts,
        )
        manifest_path = target / MANIFEST
        manifest_path.write_text(manifest.model_dump_json(indent=2))
        tighten(manifest_path, 0o600)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return BackupSet(target, manifest)


def list_sets(repository: Path) -> list[BackupSet]:
    """The complete sets in ``repository``, oldest first (a set without its manifest is not one)."""
    if not repository.is_dir():
        return []
    found = []
    for path in sorted(repository.iterdir()):
        manifest = path / MANIFEST
        if _NAME.match(path.name) and manifest.is_file():
            found.append(BackupSet(path, SetManifest.model_validate_json(manifest.read_text())))
    return found


def find_set(repository: Path, name: str) -> BackupSet:
    """The set ``name`` (or ``latest``) in ``repository``."""
    sets = list_sets(repository)
    if name == "latest" and sets:
        return sets[-1]
    for backup in sets:
        if backup.name == name:
            return backup
    raise NotFound(
        f"no backup set {name!r} in {repository}; `agency-data backup list` shows them",
        entity="backup set",
        key=name,
    )


async def verify_set(backup: BackupSet, bin_dir: Path) -> list[str]:
    """Check every file of ``backup`` against its manifest's checksums (``pg_verifybackup``).

    Returns the problems found (empty when the set is intact), each naming the file.
    """
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "pg_verifybackup"),
        # An incremental set's WAL starts where its parent's ends; WAL inside a tar archive
        # cannot be parsed. Either way the restore drill replays it.
        "--no-parse-wal"
        if backup.manifest.kind == "incremental" or backup.manifest.compression != "none"
        else "--quiet",
        str(backup.path / "pgdata"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode == 0:
        return []
    lines = (stderr.decode(errors="replace") + stdout.decode(errors="replace")).splitlines()
    problems = [line.split("error: ", 1)[-1] for line in lines if "error" in line]
    return problems or [line for line in lines if line.strip()]


async def _facts(source: str, database: str, migrations_table: str) -> dict[str, Any]:
    try:
        async with await psycopg.AsyncConnection.connect(
            with_database(source, database), autocommit=True, row_factory=dict_row
        ) as conn:
            version = await (await conn.execute("SHOW server_version")).fetchone()
            rows: dict[str, int] = {}
            tables = await (
                await conn.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
                )
            ).fetchall()
            for name in counted_tables([table["relname"] for table in tables]):
                count = await (await conn.execute(count_statement(name))).fetchone()
                rows[name] = int(count["n"]) if count else 0
            catalog = await (
                await conn.execute(
                    "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY name), '')) AS sum "
                    "FROM embedding_collections t"
                )
            ).fetchone()
            schema = await (
                await conn.execute(
                    psycopg.sql.SQL(
                        "SELECT max(id) AS v FROM {} WHERE id LIKE 'agency_data:%%'"
                    ).format(psycopg.sql.Identifier(migrations_table))
                )
            ).fetchone()
    except psycopg.Error as exc:
        raise BackupError(f"could not read the source's facts for the manifest: {exc}") from exc
    return {
        "server_version": version["server_version"] if version else "unknown",
        "database": database,
        "table_rows": rows,
        "collections_checksum": catalog["sum"] if catalog else None,
        "schema_version": schema["v"] if schema else None,
    }


async def _snapshot(redis_url: str | None, target: Path) -> dict[str, Any]:
    if redis_url is None:
        return {"valkey_note": "no snapshot: Redis is a cluster or behind Sentinel"}
    try:
        return {"valkey_bytes": await snapshot_redis(redis_url, target)}
    except BackupError as exc:
        _log.warning("backup set without a Valkey snapshot: %s", exc)
        return {"valkey_note": str(exc)}


def _wal_range(manifest: Path) -> tuple[str, str, int]:
    ranges = json.loads(manifest.read_text())["WAL-Ranges"]
    return ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"])


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for file in files:
            total += (Path(root) / file).lstat().st_size
    return total


async def _run(tool: Path, args: list[str], conninfo: str, what: str) -> None:
    returncode, message = await run_client_tool(tool, args, conninfo)
    if returncode != 0:
        if "summarize_wal" in message or "WAL summar" in message:
            message += "; incremental backups need summarize_wal = on on the server"
        raise BackupError(f"{what} with {tool.name} failed: {message}")
