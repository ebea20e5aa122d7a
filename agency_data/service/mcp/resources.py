"""The resources: embedding collections (shape, size, index) and the task queue (counts)."""

from __future__ import annotations

from typing import Any

import orjson
from mcp.server.mcpserver import MCPServer

from agency_data.security.api_keys import ApiKeyRole
from agency_data.service.mcp._access import Access
from agency_data.service.routes.collections import CollectionShape

__all__ = ["add_resources"]

_JSON = "application/json"


def add_resources(server: MCPServer[Any], access: Access) -> None:
    """Register the resources of ``server``."""

    @server.resource(
        "agency-data://collections",
        name="collections",
        description="The embedding collections' names (memory lives in one of them); an "
        "admin key's, as they are every tenant's.",
        mime_type=_JSON,
    )
    async def collections() -> str:
        # Collections are shared by every tenant: their names are an administrator's to see.
        async with access.resource(ApiKeyRole.ADMIN):
            names = await access.dl.embeddings.list_collections()
            memory = access.dl.config.memory.collection
            return _dumps({"collections": names, "memory": memory})

    @server.resource(
        "agency-data://collections/{name}",
        name="collection",
        description="One collection: dimension, metric, storage, this tenant's row count, its "
        "index, and whether this server can embed text for it.",
        mime_type=_JSON,
    )
    async def collection(name: str) -> str:
        async with access.resource() as tenant:
            found = tenant.embeddings.collection(name)
            # No sizes on disk: the table holds every tenant's rows (as over HTTP).
            shape = CollectionShape.of(await found.describe())
            return _dumps(
                {**shape.model_dump(mode="json"), "embeds_text": found.embedder is not None}
            )

    @server.resource(
        "agency-data://queue",
        name="queue",
        description="The task queue: counts by status and type, the oldest due task's wait, "
        "scheduled, blocked and expired-lease counts, paused types.",
        mime_type=_JSON,
    )
    async def queue() -> str:
        async with access.resource() as tenant:
            stats = await tenant.tasks.stats()
            return _dumps(
                {
                    "counts": stats.counts,
                    "oldest_pending_age": stats.oldest_pending_age,
                    "scheduled": stats.scheduled,
                    "blocked": stats.blocked,
                    "expired_leases": stats.expired_leases,
                    "next_lease_expiry": stats.next_lease_expiry,
                    "paused_types": stats.paused_types,
                }
            )

    @server.resource(
        "agency-data://queue/{type}",
        name="queue-type",
        description="The tasks of one type: counts by status.",
        mime_type=_JSON,
    )
    async def queue_type(type: str) -> str:
        async with access.resource() as tenant:
            stats = await tenant.tasks.stats()
            counts = {status: by_type.get(type, 0) for status, by_type in stats.counts.items()}
            return _dumps({"type": type, "counts": counts, "paused": type in stats.paused_types})


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
