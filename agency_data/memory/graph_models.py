"""What the knowledge graph hands back: entities, relations (facts), paths and matches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Entity", "EntityMatch", "Neighbour", "Path", "Relation"]


class Entity(BaseModel):
    """A person, place, thing or idea the memories speak of: one per type and name (the
    name's case aside) in a tenant."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    type: str
    properties: dict[str, Any] = Field(default_factory=dict)
    # Only when asked for (get_entity(include_vector=True)): reads leave it out.
    embedding: list[float] | None = None
    created_at: datetime
    updated_at: datetime


class Relation(BaseModel):
    """A fact, ``source -relation-> target``, as one version of it.

    Valid time: true from ``valid_from`` until ``valid_to`` (None: still true). Transaction
    time: believed from ``recorded_at`` until ``invalidated_at`` (None: still believed). A
    fact whose interval changed (a newer fact ended it, ``invalidate()``, the same fact stated
    again over a longer time) has a newer version with the same ``id``; ``invalidated_by``
    names the relation whose statement replaced this version, if one did (erasing that
    relation, with its memory or its entity, makes this version believed again).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    version: int
    source_id: str
    relation: str
    target_id: str
    properties: dict[str, Any] = Field(default_factory=dict)
    valid_from: datetime
    valid_to: datetime | None
    recorded_at: datetime
    invalidated_at: datetime | None = None
    invalidated_by: str | None = None
    source_memory: str | None = None


class EntityMatch(BaseModel):
    """An entity found by name (trigram similarity) or by embedding (cosine similarity)."""

    model_config = ConfigDict(frozen=True)

    entity: Entity
    similarity: float


class Neighbour(BaseModel):
    """An entity reached from another, and in how few hops."""

    model_config = ConfigDict(frozen=True)

    entity: Entity
    distance: int


class Path(BaseModel):
    """A way from one entity to another: the entities passed through, both ends included,
    and the relation taken at each hop (``relations[i]`` joins ``entity_ids[i]`` and
    ``entity_ids[i + 1]``, in either direction when the walk allowed both)."""

    model_config = ConfigDict(frozen=True)

    entity_ids: list[str]
    relations: list[Relation]

    @property
    def hops(self) -> int:
        """How many relations the path takes."""
        return len(self.relations)
