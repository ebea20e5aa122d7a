"""Retention: the sets kept (``backup.keep_full`` full sets with their incrementals), and the
archived WAL that only older sets needed.

A full set and the incremental sets built on it (directly or through another) form a chain;
chains are dropped whole, oldest first, so every set kept can still be restored. The WAL
archive then loses every segment before the oldest kept set's start (``pg_archivecleanup``),
which no restore of a kept set can need.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from agency_data.backup.restore import WAL_FOLDER
from agency_data.backup.sets import BackupSet, list_sets
from agency_data.errors import BackupError
from agency_data.inputs import check_int

__all__ = ["apply_retention"]

_START_SEGMENT = re.compile(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)$", re.M)


async def apply_retention(repository: Path, keep_full: int, bin_dir: Path) -> list[str]:
    """Drop the chains beyond the newest ``keep_full``; the names of the sets dropped."""
    check_int(keep_full, "keep_full", 1, 10_000)
    sets = list_sets(repository)
    chains: list[list[BackupSet]] = []
    for backup in sets:
        if backup.manifest.parent is None:
            chains.append([backup])
        elif chains and any(s.name == backup.manifest.parent for s in chains[-1]):
            chains[-1].append(backup)
        else:
            # An incremental whose parent is gone cannot be restored: it goes with the old.
            chains.append([backup])
    dropped: list[str] = []
    for chain in chains[: max(len(chains) - keep_full, 0)]:
        for backup in reversed(chain):
            shutil.rmtree(backup.path)
            dropped.append(backup.name)
    kept = list_sets(repository)
    wal = repository / WAL_FOLDER
    if kept and wal.is_dir():
        await _clean_archive(wal, kept[0], bin_dir)
    return dropped


async def _clean_archive(wal: Path, oldest: BackupSet, bin_dir: Path) -> None:
    label = (oldest.path / "pgdata" / "backup_label").read_text()
    match = _START_SEGMENT.search(label)
    if match is None:
        return
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "pg_archivecleanup"),
        "--clean-backup-history",
        str(wal),
        match.group(1),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise BackupError(
            f"expiring the archived WAL in {wal} failed: {stderr.decode(errors='replace').strip()}"
        )
