"""The temporal knowledge graph of agent memory: entities and the relations between them."""

from __future__ import annotations

from agency_data.postgres.database import Database

__all__ = ["KnowledgeGraph"]


class KnowledgeGraph:
    """A tenant's entities and relations (being built: see the knowledge-graph migration)."""

    def __init__(self, db: Database, tenant: str) -> None:
        self._db = db
        self.tenant: str = tenant
