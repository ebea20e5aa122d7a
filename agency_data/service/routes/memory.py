"""``/v1/memory``: agent memory (remember, recall, list, get, history, forget) and its
knowledge graph (entities, facts, neighbours, paths), for the caller's tenant.

The memory collection is made once by an admin key (``POST /v1/memory/setup``). Memories are
given as vectors (JSON or base64, as for collections) with an optional text; a text alone
works when the service's DataLayer has a text embedder for the memory collection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field

from agency_data.errors import ValidationError
from agency_data.memory import MemoryRecord, MemoryVersion, Recalled, Remembered
from agency_data.memory._base import Query
from agency_data.memory.graph_models import Entity, EntityMatch, Neighbour, Path, Relation
from agency_data.service.auth import administers, reads, writes
from agency_data.service.routes._common import SCOPE, Tenant, state_of
from agency_data.service.routes._vectors import Encoding, RawVector, decode_vector

__all__ = ["MemoryController"]

Direction = Literal["out", "in", "both"]
_Relations = Annotated[list[str] | None, QueryParameter(description="relation names")]
_Direction = Annotated[Direction, QueryParameter(description="which way facts are followed")]
_AsOf = Annotated[datetime | None, QueryParameter(description="true at (default: now)")]
_KnownAt = Annotated[datetime | None, QueryParameter(description="believed at (default: now)")]


class MemorySetup(BaseModel):
    """The memory collection's shape (made once; idempotent)."""

    model_config = ConfigDict(extra="forbid")

    dimension: int
    storage: Literal["vector", "halfvec"] = "vector"
    index: bool = True


class MemoryCollection(BaseModel):
    """The memory collection that setup made or found."""

    collection: str
    dimension: int


class _Content(BaseModel):
    vector: RawVector | None = None
    text: str | None = None
    encoding: Encoding = "json"

    def query(self) -> Query:
        """The vector if given (decoded), else the text (for the collection's embedder)."""
        if self.vector is not None:
            return decode_vector(self.vector, self.encoding, "vector")
        if self.text is None:
            raise ValidationError("give vector or text (or both)", field="vector")
        return self.text


class NewMemory(_Content):
    """Something to remember, for ``agent_id`` (null: shared by the tenant's agents)."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = None
    kind: str = "fact"
    importance: float = 0.5
    metadata: dict[str, Any] | None = None
    subject: str | None = None
    at: datetime | None = None
    dedup: bool | float = True


class RecallQuery(_Content):
    """What to recall: for one agent, a team (a list), or the whole tenant (null)."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | list[str] | None = None
    limit: int = 5
    filter: dict[str, Any] | None = None
    kinds: list[str] | None = None
    as_of: datetime | None = None
    weights: dict[str, float] | None = None
    shared: bool = True
    expand: bool = False


class Forget(BaseModel):
    """Which memories to forget; ``hard`` erases them and what was learned from them."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    agent_id: str | None = None
    subject: str | None = None
    filter: dict[str, Any] | None = None
    hard: bool = False


class Forgotten(BaseModel):
    """How many memories were forgotten."""

    forgotten: int


class NewEntity(BaseModel):
    """An entity (one per type and name, any case); ``properties`` merge into its own."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    properties: dict[str, Any] | None = None
    embedding: list[float] | None = None


class NewRelation(BaseModel):
    """A fact ``source -relation-> target``, true from ``valid_from`` until ``valid_to``."""

    model_config = ConfigDict(extra="forbid")

    source: str
    relation: str
    target: str
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    source_memory: str | None = None
    properties: dict[str, Any] | None = None
    exclusive: bool = False


class Invalidation(BaseModel):
    """When a fact ends (default: now)."""

    model_config = ConfigDict(extra="forbid")

    at: datetime | None = None


class Mentions(BaseModel):
    """Entities a memory mentions."""

    model_config = ConfigDict(extra="forbid")

    entity_ids: list[str] = Field(min_length=1, max_length=1000)


class Linked(BaseModel):
    """How many mentions were new."""

    linked: int


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A list of results."""

    items: list[T]


class MemoryController(Controller):
    """The caller's agent memory and knowledge graph."""

    path = "/v1/memory"
    tags = ["memory"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/setup", guards=[administers], status_code=200, summary="Set up agent memory")
    async def setup_memory(
        self, request: Request[Any, Any, Any], data: JSONBody[MemorySetup]
    ) -> MemoryCollection:
        """Make the memory collection (cosine, with an HNSW index) if it is not there; one of
        another dimension is a 409."""
        memory = state_of(request).dl.memory
        await memory.setup(data.dimension, storage=data.storage, index=data.index)
        return MemoryCollection(collection=memory.collection, dimension=data.dimension)

    @post("/", guards=[writes], summary="Remember")
    async def remember_memory(self, tenant: Tenant, data: JSONBody[NewMemory]) -> Remembered:
        """Remember, or update the near-duplicate of the same agent and subject."""
        return await tenant.memory.remember(
            data.agent_id,
            data.query(),
            text=data.text if data.vector is not None else None,
            kind=data.kind,
            importance=data.importance,
            metadata=data.metadata,
            subject=data.subject,
            at=data.at,
            dedup=data.dedup,
        )

    @post("/recall", guards=[reads], status_code=200, summary="Recall")
    async def recall_memories(self, tenant: Tenant, data: JSONBody[RecallQuery]) -> Page[Recalled]:
        """The best memories for the query, best first, with their scores' parts."""
        found = await tenant.memory.recall(
            data.agent_id,
            data.query(),
            limit=data.limit,
            filter=data.filter,
            kinds=data.kinds,
            as_of=data.as_of,
            weights=data.weights,
            shared=data.shared,
            expand=data.expand,
        )
        return Page[Recalled](items=found)

    @get("/", guards=[reads], summary="List memories")
    async def list_memories(
        self,
        tenant: Tenant,
        agent_id: Annotated[str | None, QueryParameter(description="one agent's")] = None,
        shared: Annotated[bool, QueryParameter(description="only the shared ones")] = False,
        subject: Annotated[str | None, QueryParameter()] = None,
        kind: Annotated[str | None, QueryParameter()] = None,
        forgotten: Annotated[bool, QueryParameter(description="forgotten ones too")] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    ) -> Page[MemoryRecord]:
        """Memories, newest first."""
        found = await tenant.memory.list(
            agent_id, shared=shared, subject=subject, kind=kind, forgotten=forgotten, limit=limit
        )
        return Page[MemoryRecord](items=found)

    @post("/forget", guards=[writes], status_code=200, summary="Forget memories")
    async def forget_memories(self, tenant: Tenant, data: JSONBody[Forget]) -> Forgotten:
        """Forget by ids, agent, subject or filter (never everything by default)."""
        count = await tenant.memory.forget(
            data.ids,
            agent_id=data.agent_id,
            subject=data.subject,
            filter=data.filter,
            hard=data.hard,
        )
        return Forgotten(forgotten=count)

    # Fixed paths before "/{memory_id}": the graph's resources live under /v1/memory too.

    @post("/entities", guards=[writes], status_code=200, summary="Upsert an entity")
    async def upsert_entity(self, tenant: Tenant, data: JSONBody[NewEntity]) -> Entity:
        """The entity of this type and name, made if new, its properties merged."""
        return await tenant.memory.graph.upsert_entity(
            data.name, data.type, data.properties, data.embedding
        )

    @get("/entities", guards=[reads], summary="Find entities by name")
    async def find_entities(
        self,
        tenant: Tenant,
        name: Annotated[str, QueryParameter(description="a name to look like")],
        type: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
        min_similarity: Annotated[float, QueryParameter(ge=0, le=1)] = 0.3,
    ) -> Page[EntityMatch]:
        """Entities whose name looks like ``name`` (trigram similarity), best first."""
        found = await tenant.memory.graph.find_entities(
            name, type=type, limit=limit, min_similarity=min_similarity
        )
        return Page[EntityMatch](items=found)

    @get("/entities/{entity_id:str}", guards=[reads], summary="Get an entity")
    async def get_entity(self, tenant: Tenant, entity_id: FromPath[str]) -> Entity:
        """The entity with ``entity_id``."""
        return await tenant.memory.graph.get_entity(entity_id)

    @get("/entities/{entity_id:str}/relations", guards=[reads], summary="An entity's facts")
    async def entity_relations(
        self,
        tenant: Tenant,
        entity_id: FromPath[str],
        relation: _Relations = None,
        direction: _Direction = "out",
        as_of: _AsOf = None,
        known_at: _KnownAt = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> Page[Relation]:
        """The entity's facts that hold then, as believed then."""
        found = await tenant.memory.graph.relations(
            entity_id,
            relation=relation,
            direction=direction,
            as_of=as_of,
            known_at=known_at,
            limit=limit,
        )
        return Page[Relation](items=found)

    @get("/entities/{entity_id:str}/neighbours", guards=[reads], summary="An entity's neighbours")
    async def entity_neighbours(
        self,
        tenant: Tenant,
        entity_id: FromPath[str],
        hops: Annotated[int, QueryParameter(ge=1, le=6)] = 1,
        relation: _Relations = None,
        direction: _Direction = "out",
        as_of: _AsOf = None,
        known_at: _KnownAt = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> Page[Neighbour]:
        """The entities within ``hops`` facts, nearest first."""
        found = await tenant.memory.graph.neighbours(
            entity_id,
            hops=hops,
            relation=relation,
            direction=direction,
            as_of=as_of,
            known_at=known_at,
            limit=limit,
        )
        return Page[Neighbour](items=found)

    @get("/paths", guards=[reads], summary="Paths between two entities")
    async def entity_paths(
        self,
        tenant: Tenant,
        source: Annotated[str, QueryParameter(description="the first entity's id")],
        target: Annotated[str, QueryParameter(description="the last entity's id")],
        max_hops: Annotated[int, QueryParameter(ge=1, le=6)] = 3,
        relation: _Relations = None,
        direction: _Direction = "out",
        as_of: _AsOf = None,
        known_at: _KnownAt = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
    ) -> Page[Path]:
        """The ways from ``source`` to ``target``, shortest first."""
        found = await tenant.memory.graph.paths(
            source,
            target,
            max_hops=max_hops,
            relation=relation,
            direction=direction,
            as_of=as_of,
            known_at=known_at,
            limit=limit,
        )
        return Page[Path](items=found)

    @post("/relations", guards=[writes], status_code=200, summary="State a fact")
    async def relate_entities(self, tenant: Tenant, data: JSONBody[NewRelation]) -> Relation:
        """State ``source -relation-> target``; returns the fact as now believed."""
        return await tenant.memory.graph.relate(
            data.source,
            data.relation,
            data.target,
            valid_from=data.valid_from,
            valid_to=data.valid_to,
            source_memory=data.source_memory,
            properties=data.properties,
            exclusive=data.exclusive,
        )

    @post(
        "/relations/{relation_id:str}/invalidate",
        guards=[writes],
        status_code=200,
        summary="End a fact",
    )
    async def invalidate_relation(
        self, tenant: Tenant, relation_id: FromPath[str], data: JSONBody[Invalidation]
    ) -> Relation:
        """End the fact at ``at`` (default: now)."""
        return await tenant.memory.graph.invalidate(relation_id, at=data.at)

    @get("/relations/{relation_id:str}/versions", guards=[reads], summary="A fact's versions")
    async def relation_versions(self, tenant: Tenant, relation_id: FromPath[str]) -> Page[Relation]:
        """Every version of the fact, newest first."""
        return Page[Relation](items=await tenant.memory.graph.versions(relation_id))

    @get("/{memory_id:str}", guards=[reads], summary="Get a memory")
    async def get_memory(self, tenant: Tenant, memory_id: FromPath[str]) -> MemoryRecord:
        """The memory (a forgotten one too: its ``forgotten_at`` is set)."""
        return await tenant.memory.get(memory_id)

    @get("/{memory_id:str}/history", guards=[reads], summary="A memory's history")
    async def memory_history(self, tenant: Tenant, memory_id: FromPath[str]) -> Page[MemoryVersion]:
        """Every version, oldest first; a forgetting is an entry without text."""
        return Page[MemoryVersion](items=await tenant.memory.history(memory_id))

    @post("/{memory_id:str}/entities", guards=[writes], status_code=200, summary="Link entities")
    async def link_entities(
        self, tenant: Tenant, memory_id: FromPath[str], data: JSONBody[Mentions]
    ) -> Linked:
        """Record that the memory mentions these entities."""
        return Linked(linked=await tenant.memory.graph.link(memory_id, data.entity_ids))
