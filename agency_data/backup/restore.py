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
import re
import shlex
import shutil
import tarfile
from datetime import datetime
from pathlib import Path

from agency_data.backup.sets import BackupSet, find_set
from agency_data.backup.valkey import SNAPSHOT, install_snapshot
from agency_data.embedded import system_user
from agency_data.embedded.postgres import cluster_dir, quote_setting
from agency_data.errors import BackupError, NotFound, ValidationError
from agency_data.files import make_private_dirs, private_file

__all__ = ["WAL_FOLDER", "chain_of", "restore_set"]

# The repository's folder of archived WAL segments (backup.archive_wal).
WAL_FOLDER = "wal"
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


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
    repository: Path,
    name: str,
    data_dir: Path,
    bin_dir: Path,
    *,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
) -> tuple[BackupSet, Path]:
    """Restore set ``name`` (or ``latest``) into ``data_dir``; returns it and the cluster's folder.

    With ``target_time`` or ``target_lsn``, the cluster starts in recovery: it replays the
    repository's archived WAL up to that point, then promotes itself.
    """
    backup = find_set(repository, name)
    chain = chain_of(repository, backup)
    recovery = _recovery_settings(repository, backup, target_time, target_lsn)
    pgdata = cluster_dir(data_dir)
    if pgdata.exists() and any(pgdata.iterdir()):
        raise BackupError(
            f"{data_dir} holds a PostgreSQL data directory already; a restore never writes over "
            "one: choose an empty folder (--data-dir)"
        )
    if (data_dir / "valkey" / "appendonlydir").exists():
        raise BackupError(
            f"{data_dir} holds Valkey data already; a restore never writes over it: choose an "
            "empty folder (--data-dir)"
        )
    try:
        created = make_private_dirs(data_dir)
    except OSError as exc:
        raise BackupError(f"cannot create {data_dir}: {exc.strerror}") from exc
    account = system_user()
    unpacked = data_dir / ".unpacked"
    try:
        sources = [await _plain(member, unpacked) for member in chain]
        process = await asyncio.create_subprocess_exec(
            str(bin_dir / "pg_combinebackup"),
            "-o",
            str(pgdata),
            *(str(source) for source in sources),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
    finally:
        await asyncio.to_thread(shutil.rmtree, unpacked, ignore_errors=True)
    if process.returncode != 0:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise BackupError(
            f"combining {', '.join(m.name for m in chain)} failed: "
            f"{stderr.decode(errors='replace').strip()}"
        )
    if recovery:
        _start_in_recovery(pgdata, recovery)
    owner = (account.pw_uid, account.pw_gid) if account is not None else None
    snapshot = backup.path / SNAPSHOT
    # File work off the event loop: a cluster holds thousands of files, and the layer's
    # other calls must go on meanwhile.
    if not recovery and snapshot.is_file():
        # At a later point in time the snapshot would be older than the database: Redis
        # then starts empty, as a cache may.
        await asyncio.to_thread(install_snapshot, snapshot, data_dir, owner)
    if owner is not None:
        await asyncio.to_thread(_give_to, owner, created, pgdata)
    return backup, pgdata


def _give_to(owner: tuple[int, int], created: list[Path], pgdata: Path) -> None:
    # Under root the server runs as its own user, which must own the cluster and the
    # folders on the way to it that this restore made; nobody else's files change.
    for folder in created:
        os.chown(folder, *owner, follow_symlinks=False)
    for root, dirs, files in os.walk(pgdata):
        for entry in (root, *(os.path.join(root, d) for d in dirs)):
            os.chown(entry, *owner, follow_symlinks=False)
        for file in files:
            os.chown(os.path.join(root, file), *owner, follow_symlinks=False)


async def _plain(member: BackupSet, scratch: Path) -> Path:
    """A folder pg_combinebackup can read for ``member``: its own, or its archives unpacked."""
    packed = member.path / "pgdata"
    if member.manifest.compression == "none":
        return packed
    target = scratch / member.name
    await asyncio.to_thread(_unpack, packed, target)
    return target


def _unpack(packed: Path, target: Path) -> None:
    make_private_dirs(target)
    try:
        for archive, into in (("base.tar.gz", target), ("pg_wal.tar.gz", target / "pg_wal")):
            make_private_dirs(into)
            with tarfile.open(packed / archive, "r:gz") as tar:
                _extract(tar, into)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"cannot unpack {packed}: {exc}") from exc
    shutil.copy2(packed / "backup_manifest", target / "backup_manifest")


def _extract(tar: tarfile.TarFile, into: Path) -> None:
    """Unpack ``tar`` into ``into``: no absolute paths, nothing out of the folder, no devices."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    # Python before 3.11.4 has no extraction filters. A set's archives hold only files and
    # folders, so anything else (a link, which could lead out of the folder, alone or in a
    # chain) is refused outright, and every name must stay inside the folder.
    root = into.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        inside = target.is_relative_to(root) and not Path(member.name).is_absolute()
        if not (member.isfile() or member.isdir()) or not inside:
            raise BackupError(f"the archive holds {member.name!r}, which a set never does")
    tar.extractall(into)  # every member checked above


def _start_in_recovery(pgdata: Path, settings: dict[str, str]) -> None:
    with (pgdata / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write("# point-in-time recovery, written by agency-data backup restore\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    private_file(pgdata / "recovery.signal")


def _recovery_settings(
    repository: Path, backup: BackupSet, target_time: datetime | None, target_lsn: str | None
) -> dict[str, str]:
    if target_time is None and target_lsn is None:
        return {}
    if target_time is not None and target_lsn is not None:
        raise ValidationError("give target_time or target_lsn, not both", field="target_time")
    wal = repository / WAL_FOLDER
    if not wal.is_dir():
        raise BackupError(
            f"{repository} has no archived WAL ({WAL_FOLDER}/): a restore to a point in time "
            "needs backup.archive_wal = true on the server since the set was taken"
        )
    if target_time is not None and target_time < backup.manifest.finished_at:
        raise BackupError(
            f"set {backup.name} finished at {backup.manifest.finished_at.isoformat()}, after "
            f"{target_time.isoformat()}: restore an older set to reach that time"
        )
    if target_lsn is not None and not _LSN.match(target_lsn):
        raise ValidationError(
            f"target_lsn {target_lsn!r} is not an LSN such as 0/3000060", field="target_lsn"
        )
    settings = {
        # Run through the shell: the folder is one word whatever it holds.
        "restore_command": quote_setting(f"cp {shlex.quote(str(wal))}/%f %p"),
        "recovery_target_action": "'promote'",
    }
    if target_time is not None:
        settings["recovery_target_time"] = quote_setting(target_time.isoformat())
    else:
        settings["recovery_target_lsn"] = quote_setting(str(target_lsn))
    return settings
