"""Backup sets, and their verification (``dl.backups``, ``agency-data backup``).

- :mod:`.sets`: a set is a base backup (full, or incremental on the previous) plus a manifest
  of what the database held; ``pg_verifybackup`` checks every file against its checksum.
"""

from agency_data.backup.service import (
    Backups,
    archive_settings,
    prepare_archive,
    repository_of,
)
from agency_data.backup.sets import BackupSet, SetManifest

__all__ = [
    "BackupSet",
    "Backups",
    "SetManifest",
    "archive_settings",
    "prepare_archive",
    "repository_of",
]
