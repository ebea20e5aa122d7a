"""``dl.memory``: memories an agent remembers and recalls."""

from __future__ import annotations

from agency_data.config import MemoryConfig
from agency_data.memory.graph import KnowledgeGraph
from agency_data.postgres.database import Database
from agency_data.vectors.catalog import Catalog

__all__ = ["ManagedMemory", "Memory"]


class Memory:
    """A tenant's agent memory."""

    def __init__(self, db: Database, catalog: Catalog, tenant: str, config: MemoryConfig) -> None:
        self._db = db
        self._catalog = catalog
        self.tenant = tenant
        self._config = config
        self.graph = KnowledgeGraph(db, tenant)


class ManagedMemory(Memory):
    """The default tenant's agent memory, plus setting it up (as the owner)."""
