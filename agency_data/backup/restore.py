"""Restoring a backup set into a new data directory, for the embedded server to start on.

The set and its parents are combined by ``pg_combinebackup`` into ``<data_dir>/postgres``,
the folder the embedded server runs from; starting a DataLayer (or ``agency-data up``) with
``embedded.data_dir`` there replays the WAL the set carries and opens the database as it was
when the backup finished. A folder that already holds a data directory is refused: a restore
never writes over a cluster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from agency_data.backup.sets import BackupSet, find_set
from agency_data.embedded import system_user
from agency_data.errors import BackupError, NotFound
from agency_data.files import make_private_dirs

__all__ = ["chain_of", "restore_set"]


def chain_of(repository: Path, backup: BackupSet) -> list[BackupSet]:
    """``backup`` and the sets it builds on, the full one first."""
    chain = [backup]
    while chain[0].manifest.parent is not None:
        parent = chain[0].manifest.parent
        try:
            chain.insert(0, find_set(repository, parent))
        except NotFound as exc:
            raise BackupError(
                f"set {chain[0].name} builds on {parent}, which is missing from {repository}; "
                "it cannot be restored"
            ) from exc
    return chain


async def restore_set(
    repository: Path, name: str, data_dir: Path, bin_dir: Path
) -> tuple[BackupSet, Path]:
    """Restore set ``name`` (or ``latest``) into ``data_dir``; returns it and the cluster's folder."""
    backup = find_set(repository, name)
    chain = chain_of(repository, backup)
    pgdata = data_dir / "postgres"
    if pgdata.exists() and any(pgdata.iterdir()):
        raise BackupError(
            f"{data_dir} holds a PostgreSQL data directory already; a restore never writes over "
            "one: choose an empty folder (--data-dir)"
        )
    try:
        created = make_private_dirs(data_dir)
    except OSError as exc:
        raise BackupError(f"cannot create {data_dir}: {exc.strerror}") from exc
    account = system_user()
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "pg_combinebackup"),
        "-o",
        str(pgdata),
        *(str(member.path / "pgdata") for member in chain),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise BackupError(
            f"combining {', '.join(m.name for m in chain)} failed: "
            f"{stderr.decode(errors='replace').strip()}"
        )
    if account is not None:
        # Under root the server runs as its own user, which must own the cluster and the
        # folders on the way to it that this restore made; nobody else's files change.
        for folder in created:
            os.chown(folder, account.pw_uid, account.pw_gid, follow_symlinks=False)
        for root, dirs, files in os.walk(pgdata):
            for entry in (root, *(os.path.join(root, d) for d in dirs)):
                os.chown(entry, account.pw_uid, account.pw_gid, follow_symlinks=False)
            for file in files:
                os.chown(
                    os.path.join(root, file), account.pw_uid, account.pw_gid, follow_symlinks=False
                )
    return backup, pgdata
