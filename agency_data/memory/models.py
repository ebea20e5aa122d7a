"""What agent memory hands back: memories, their versions, recall results and changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agency_data.memory.graph_models import Entity, Relation

__all__ = ["MemoryChange", "MemoryRecord", "MemoryVersion", "Recalled", "Remembered", "ScoreParts"]

MemoryEvent = Literal["created", "updated", "merged", "consolidated", "forgotten"]


class MemoryRecord(BaseModel):
    """One memory as it is now (or, from ``recall(as_of=...)``, as it was then)."""

    model_config = ConfigDict(frozen=True)

    id: str
    # None: shared by every agent of the tenant.
    agent_id: str | None
    kind: str
    subject: str | None
    text: str | None
    metadata: dict[str, Any] = Field(default_factory=dict)
    importance: float
    # When it happened or was learned: recency decays from here.
    happened_at: datetime
    created_at: datetime
    updated_at: datetime
    version: int
    access_count: int = 0
    last_accessed_at: datetime | None = None
    forgotten_at: datetime | None = None
    consolidated_into: str | None = None


class ScoreParts(BaseModel):
    """The parts of a recall score, one per signal."""

    model_config = ConfigDict(frozen=True)

    similarity: float
    recency: float
    importance: float
    access: float

    @property
    def total(self) -> float:
        """The parts added up."""
        return self.similarity + self.recency + self.importance + self.access


class Recalled(BaseModel):
    """A recalled memory, its score, and why: ``parts`` (weighted, they add up to ``score``)
    and ``signals`` (each signal's value in [0, 1] before weighting)."""

    model_config = ConfigDict(frozen=True)

    memory: MemoryRecord
    score: float
    parts: ScoreParts
    signals: ScoreParts
    # With recall(expand=True): the entities the memory mentions and the facts among them.
    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)


class Remembered(BaseModel):
    """What ``remember`` did: created a memory, or updated the near-duplicate it found."""

    model_config = ConfigDict(frozen=True)

    id: str
    event: Literal["created", "updated", "merged"]
    version: int
    # The near-duplicate's similarity to what was remembered (None when it was created).
    similarity: float | None = None


class MemoryVersion(BaseModel):
    """One entry of a memory's history: a version, or its forgetting."""

    model_config = ConfigDict(frozen=True)

    memory_id: str
    version: int
    event: MemoryEvent
    agent_id: str | None
    kind: str
    subject: str | None
    text: str | None
    metadata: dict[str, Any] | None
    importance: float | None
    happened_at: datetime | None
    # Current from valid_from until valid_to (None: still current).
    valid_from: datetime
    valid_to: datetime | None
    actor: str


class MemoryChange(BaseModel):
    """A memory created, changed or deleted, from ``memory.changes()``."""

    model_config = ConfigDict(frozen=True)

    cursor: str
    op: Literal["insert", "update", "delete", "truncate"]
    memory_id: str
    agent_id: str | None
    kind: str | None
    version: int | None
    forgotten: bool
    committed_at: datetime
