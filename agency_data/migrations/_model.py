"""What the migration service talks about: migrations, their sources, plans and reports."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from agency_data.errors import MigrationError

__all__ = [
    "BUILTIN_SOURCE",
    "DataLoss",
    "Migration",
    "MigrationReport",
    "MigrationSource",
    "MigrationState",
    "PlannedStep",
]

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class MigrationSource:
    """A directory of ``<version>_<name>.up.sql`` / ``.down.sql`` files under one namespace.

    Applications register their own beside ours; a migration is known as ``namespace:id``, so
    two sources may both have a ``0001``.
    """

    namespace: str
    directory: Path

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise MigrationError(
                f"migration namespace {self.namespace!r} must be lower-case letters, digits and "
                "underscores, starting with a letter"
            )


BUILTIN_SOURCE = MigrationSource("agency_data", Path(__file__).parent / "sql")


@dataclass(frozen=True)
class Migration:
    """One versioned schema change, with its up step and (optionally) its down step."""

    namespace: str
    version: str
    name: str
    up_sql: str
    down_sql: str | None
    depends: tuple[str, ...]
    transactional: bool
    path: Path
    replaces: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The unique name of the migration: ``namespace:version_name``."""
        return f"{self.namespace}:{self.version}_{self.name}"

    @property
    def checksum(self) -> str:
        """SHA-256 of the up step, line endings normalised; a changed file changes it."""
        text = self.up_sql.replace("\r\n", "\n").strip()
        return hashlib.sha256(text.encode()).hexdigest()

    def accepts(self, checksum: str) -> bool:
        """True when a database that recorded ``checksum`` ran this migration (or a version
        of it that its ``-- replaces:`` header names)."""
        return checksum == self.checksum or checksum in self.replaces

    def matches(self, ref: str) -> bool:
        """True when ``ref`` names this migration (full key, ``ns:version``, id or version)."""
        namespace, sep, rest = ref.rpartition(":")
        if sep and namespace != self.namespace:
            return False
        return rest in (self.version, f"{self.version}_{self.name}")


@dataclass(frozen=True)
class DataLoss:
    """Data a down step destroys: a table with its rows, or a column with its values.

    ``rows`` is None when they could not be counted (row-level security hid them from the
    migrating role, or the table stayed locked); ``at_least`` means counting stopped at ``rows``
    before the end of the table.
    """

    table: str
    column: str | None = None
    rows: int | None = None
    at_least: bool = False

    def describe(self) -> str:
        """``table agents (12 rows)``, ``column tasks.started_at (3 values)``."""
        if self.column is None:
            what, unit = f"table {self.table}", "row"
        else:
            what, unit = f"column {self.table}.{self.column}", "value"
        if self.rows is None:
            return f"{what} ({unit}s not counted)"
        more = "more than " if self.at_least else ""
        return f"{what} ({more}{self.rows:,} {unit}{'' if self.rows == 1 else 's'})"


@dataclass(frozen=True)
class PlannedStep:
    """One migration to run, in one direction, with the SQL that will run.

    A down step also says what data it destroys (``data_loss``); ``loss_note`` says how that was
    worked out when it could not be tried in a rolled-back transaction, or is None.
    """

    key: str
    direction: Literal["up", "down"]
    sql: str
    transactional: bool
    data_loss: tuple[DataLoss, ...] = ()
    loss_note: str | None = None


@dataclass(frozen=True)
class MigrationState:
    """A migration's standing in the database.

    ``state`` is ``pending`` (not applied), ``applied``, ``changed`` (applied, but its file
    differs now) or ``missing`` (applied, but no file for it is registered).
    """

    key: str
    state: Literal["pending", "applied", "changed", "missing"]
    applied_at: datetime | None = None


@dataclass
class MigrationReport:
    """What a migration run planned and did."""

    direction: Literal["up", "down"]
    dry_run: bool
    steps: list[PlannedStep] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    backup_file: Path | None = None
    seconds: float = 0.0

    @property
    def data_loss(self) -> list[DataLoss]:
        """Everything the planned down steps destroy, in the order they destroy it."""
        return [loss for step in self.steps for loss in step.data_loss]
