"""The migration service: versioned SQL migrations with dependencies, dry run, rollback, backup.

Our own schema lives in ``sql/`` under the namespace ``agency_data``; applications register
directories of their own (``MigrationSource("myapp", Path("migrations"))``) beside it.
"""

from agency_data.migrations._model import (
    BUILTIN_SOURCE,
    DataLoss,
    Migration,
    MigrationReport,
    MigrationSource,
    MigrationState,
    PlannedStep,
)
from agency_data.migrations.backup import (
    create_backup,
    find_tool,
    prune_backups,
    restore_backup,
)
from agency_data.migrations.runner import MigrationRunner

__all__ = [
    "BUILTIN_SOURCE",
    "DataLoss",
    "Migration",
    "MigrationReport",
    "MigrationRunner",
    "MigrationSource",
    "MigrationState",
    "PlannedStep",
    "create_backup",
    "find_tool",
    "prune_backups",
    "restore_backup",
]
