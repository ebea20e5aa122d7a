"""Retention: the sets kept (``backup.keep_full`` full sets with their incrementals, none older
than ``backup.keep_days`` but the newest), and the archived WAL that only older sets needed.

A full set and the incremental sets built on it (directly or through another) form a chain;
chains are dropped whole, oldest first, so every set kept can still be restored. The WAL
archive then loses every segment before the oldest kept set's start (``pg_archivecleanup``),
which no restore of a kept set can need.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agency_data.backup.restore import WAL_FOLDER
from agency_data.backup.sets import BackupSet, list_sets
from agency_data.errors import BackupError
from agency_data.inputs import check_int

__all__ = ["apply_retention"]

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


async def apply_retention(
    repository: Path, keep_full: int, bin_dir: Path, *, keep_days: float | None = None
) -> list[str]:
    """Drop the chains beyond the newest ``keep_full``, and, with ``keep_days``, those whose
    newest set is older than that (the newest chain always stays); the sets dropped."""
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
    expired = chains[: max(len(chains) - keep_full, 0)]
    if keep_days is not None:
        horizon = datetime.now(UTC) - timedelta(days=keep_days)
        expired += [
            chain for chain in chains[len(expired) : -1] if chain[-1].manifest.finished_at < horizon
        ]
    dropped: list[str] = []
    for chain in expired:
        for backup in reversed(chain):
            await asyncio.to_thread(shutil.rmtree, backup.path)  # off the event loop
            dropped.append(backup.name)
    kept = list_sets(repository)
    wal = repository / WAL_FOLDER
    if kept and wal.is_dir():
        await _clean_archive(wal, kept[0], bin_dir)
    return dropped


async def _clean_archive(wal: Path, oldest: BackupSet, bin_dir: Path) -> None:
    first = _start_segment(wal, oldest)
    if first is None:
        return
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "pg_archivecleanup"),
        "--clean-backup-history",
        str(wal),
        first,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise BackupError(
            f"expiring the archived WAL in {wal} failed: {stderr.decode(errors='replace').strip()}"
        )


def _start_segment(wal: Path, backup: BackupSet) -> str | None:
    """The WAL segment ``backup`` starts in: the oldest one a restore of it needs.

    From the manifest's start LSN and timeline (a compressed set's backup_label is inside its
    archive), at the archive's segment size (every archived segment has it; 16 MB by default).
    """
    segments = [p for p in wal.iterdir() if _SEGMENT.match(p.name)]
    if not segments:
        return None
    size = segments[0].stat().st_size
    high, low = (int(part, 16) for part in backup.manifest.start_lsn.split("/"))
    number = ((high << 32) + low) // size
    per_log = (1 << 32) // size
    return f"{backup.manifest.timeline:08X}{number // per_log:08X}{number % per_log:08X}"
