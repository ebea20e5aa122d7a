"""The memory tools: remember, recall, forget, and walks of the knowledge graph."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from agency_data.memory.graph_models import Entity, Relation
from agency_data.memory.store import Memory
from agency_data.service.mcp._access import READ, WRITE, Access

__all__ = ["add_memory_tools"]

Vector = Annotated[
    list[float] | None,
    Field(description="the embedding itself, as many floats as the collection's dimension"),
]
AgentId = Annotated[
    str | None,
    Field(description="the agent whose memory this is (none: shared by every agent)"),
]
Direction = Annotated[
    Literal["out", "in", "both"],
    Field(description="follow facts from the entity (out), to it (in), or both ways"),
]
Relations = Annotated[list[str] | None, Field(description="follow only facts with these relations")]

_READS = ToolAnnotations(read_only_hint=True)


def add_memory_tools(server: MCPServer[Any], access: Access) -> None:
    """Register the memory and graph tools of ``server``."""

    @server.tool(description="Remember a fact, event or note (text and/or its embedding).")
    async def remember(
        text: Annotated[str | None, Field(description="what to remember")] = None,
        vector: Vector = None,
        agent_id: AgentId = None,
        kind: Annotated[str, Field(description="fact, event, preference, ...")] = "fact",
        subject: Annotated[
            str | None, Field(description="what it is about; a near-copy on it is updated")
        ] = None,
        importance: Annotated[float, Field(ge=0, le=1)] = 0.5,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            memory = tenant.memory
            options: dict[str, Any] = {
                "kind": kind,
                "importance": importance,
                "metadata": metadata,
                "subject": subject,
            }
            if vector is not None:
                done = await memory.remember(agent_id, vector, text=text, **options)
            elif text is not None:
                _embeds(memory, "text")
                done = await memory.remember(agent_id, text, **options)
            else:
                raise ToolError("remember needs text, vector, or both")
            return done.model_dump(mode="json")

    @server.tool(
        description="Recall the memories most relevant to a query (text or embedding), best "
        "first, each with its score.",
        annotations=_READS,
    )
    async def recall(
        query: Annotated[str | None, Field(description="what to look for, in words")] = None,
        vector: Vector = None,
        agent_id: Annotated[
            str | list[str] | None,
            Field(description="one agent, a team, or none for the whole tenant"),
        ] = None,
        kinds: Annotated[list[str] | None, Field(description="only these kinds")] = None,
        filter: Annotated[
            dict[str, Any] | None, Field(description="conditions on the memories' metadata")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        async with access.tool(READ) as tenant:
            memory = tenant.memory
            if vector is not None:
                wanted: Any = vector
            elif query is not None:
                _embeds(memory, "query")
                wanted = query
            else:
                raise ToolError("recall needs a query (text) or a vector")
            hits = await memory.recall(agent_id, wanted, limit=limit, filter=filter, kinds=kinds)
            return {
                "items": [
                    {
                        "id": hit.memory.id,
                        "text": hit.memory.text,
                        "score": hit.score,
                        "kind": hit.memory.kind,
                        "subject": hit.memory.subject,
                        "agent_id": hit.memory.agent_id,
                        "importance": hit.memory.importance,
                        "metadata": hit.memory.metadata,
                        "happened_at": hit.memory.happened_at.isoformat(),
                    }
                    for hit in hits
                ]
            }

    @server.tool(
        description="Forget memories (by id, or all of an agent's or a subject's): they are no "
        "longer recalled; their history stays."
    )
    async def forget(
        ids: Annotated[list[str] | None, Field(description="the memories' ids")] = None,
        agent_id: Annotated[str | None, Field(description="every memory of this agent")] = None,
        subject: Annotated[str | None, Field(description="every memory on this subject")] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            count = await tenant.memory.forget(ids, agent_id=agent_id, subject=subject)
            return {"forgotten": count}

    @server.tool(
        description="The entities of the knowledge graph within a few hops of one, nearest "
        "first, following the facts that hold now.",
        annotations=_READS,
    )
    async def neighbours(
        entity: Annotated[str, Field(description="the entity's id")],
        hops: Annotated[int, Field(ge=1, le=6)] = 1,
        relation: Relations = None,
        direction: Direction = "out",
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        async with access.tool(READ) as tenant:
            found = await tenant.memory.graph.neighbours(
                entity, hops=hops, relation=relation, direction=direction, limit=limit
            )
            return {
                "items": [
                    {"entity": _entity(item.entity), "distance": item.distance} for item in found
                ]
            }

    @server.tool(
        description="The ways from one entity of the knowledge graph to another, shortest "
        "first, through facts that hold now.",
        annotations=_READS,
    )
    async def paths(
        source: Annotated[str, Field(description="the first entity's id")],
        target: Annotated[str, Field(description="the last entity's id")],
        max_hops: Annotated[int, Field(ge=1, le=6)] = 3,
        relation: Relations = None,
        direction: Direction = "out",
        limit: Annotated[int, Field(ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        async with access.tool(READ) as tenant:
            found = await tenant.memory.graph.paths(
                source,
                target,
                max_hops=max_hops,
                relation=relation,
                direction=direction,
                limit=limit,
            )
            return {
                "items": [
                    {
                        "entity_ids": path.entity_ids,
                        "relations": [_relation(step) for step in path.relations],
                    }
                    for path in found
                ]
            }


def _embeds(memory: Memory, what: str) -> None:
    """Refuse a text up front when nothing here can embed it, saying what to send instead."""
    if memory.embedder is None:
        raise ToolError(
            f"memory collection {memory.collection!r} has no text embedder in this server, so "
            f"a {what} in words cannot be embedded here: send `vector` (its embedding, a list "
            "of floats of the collection's dimension) instead"
            + (", with `text` to keep the words" if what == "text" else "")
        )


def _entity(entity: Entity) -> dict[str, Any]:
    return entity.model_dump(mode="json", exclude={"embedding"})


def _relation(relation: Relation) -> dict[str, Any]:
    return relation.model_dump(mode="json")
