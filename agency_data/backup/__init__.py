"""Backup and recovery (``dl.backups``, ``agency-data backup`` and ``replica``).

- :mod:`.sets`: a set is a base backup (full, or incremental on the previous), a Valkey
  snapshot (:mod:`.valkey`) and a manifest of what the database held; ``pg_verifybackup``
  checks every file against its checksum.
- :mod:`.restore`: a set and its parents combined into a new data directory, to the set's end
  or to a point in time from the archived WAL; :mod:`.drill` restores one to check it.
- :mod:`.retention`: the sets kept, and the archived WAL they need.
- :mod:`.replicas`: streaming standbys of the embedded server, promotion and rejoining.
- :mod:`.service`: ``dl.backups``, which puts these together.
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
