"""Agent memory: remember and recall with decaying relevance, deduplication, history, and a
temporal knowledge graph (see :mod:`agency_data.memory.store` and
:mod:`agency_data.memory.graph`)."""

from agency_data.memory.graph import KnowledgeGraph
from agency_data.memory.graph_models import Entity, EntityMatch, Neighbour, Path, Relation
from agency_data.memory.models import (
    MemoryChange,
    MemoryRecord,
    MemoryVersion,
    Recalled,
    Remembered,
    ScoreParts,
)
from agency_data.memory.store import ManagedMemory, Memory

__all__ = [
    "Entity",
    "EntityMatch",
    "KnowledgeGraph",
    "ManagedMemory",
    "Memory",
    "MemoryChange",
    "MemoryRecord",
    "MemoryVersion",
    "Neighbour",
    "Path",
    "Recalled",
    "Relation",
    "Remembered",
    "ScoreParts",
]
