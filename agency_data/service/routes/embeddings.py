"""``/v1/collections/{name}/...``: the caller's embeddings in a collection.

Store many, get, delete, and search: one vector, many at once, or text and vector fused
(hybrid). Vectors are JSON arrays or, with ``encoding``, base64 of little-endian float32 or
float16 (see :mod:`._vectors`); the library checks their dimension and values, all or
nothing. Another tenant's ids are simply not there (404), and its rows never come back.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from agency_data.errors import NotFound
from agency_data.models import Embedding, SimilarityResult
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant
from agency_data.service.routes._vectors import Encoding, RawVector, decode_vector

__all__ = ["EmbeddingsController"]

_MAX_ITEMS = 100_000
_MAX_QUERIES = 1000
_MAX_LIMIT = 1000


class NewEmbedding(BaseModel):
    """One embedding to store; with ``id``, it replaces the caller's embedding of that id."""

    model_config = ConfigDict(extra="forbid")

    entity_type: str
    entity_id: str
    vector: RawVector
    metadata: dict[str, Any] = Field(default_factory=dict)
    content: str | None = None
    id: str | None = None


class NewEmbeddings(BaseModel):
    """Embeddings to store in one transaction, all or none."""

    model_config = ConfigDict(extra="forbid")

    items: list[NewEmbedding] = Field(max_length=_MAX_ITEMS)
    encoding: Encoding = "json"


class StoredIds(BaseModel):
    """The stored embeddings' ids, in the order given."""

    ids: list[str]


class Search(BaseModel):
    """One similarity search; ``filter`` is the collections' filter language."""

    model_config = ConfigDict(extra="forbid")

    vector: RawVector
    encoding: Encoding = "json"
    limit: int = 10
    threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_vectors: bool = False
    exact: bool = False
    ef_search: int | None = None
    probes: int | None = None


class BatchQuery(BaseModel):
    """One query of a batch."""

    model_config = ConfigDict(extra="forbid")

    vector: RawVector
    limit: int = 10
    threshold: float | None = None
    filter: dict[str, Any] | None = None


class BatchSearch(BaseModel):
    """Many searches in one round trip to the database."""

    model_config = ConfigDict(extra="forbid")

    queries: list[BatchQuery] = Field(min_length=1, max_length=_MAX_QUERIES)
    encoding: Encoding = "json"
    include_vectors: bool = False
    exact: bool = False
    ef_search: int | None = None
    probes: int | None = None


class HybridSearch(BaseModel):
    """Full-text and vector search fused by reciprocal rank fusion; without ``vector``, the
    collection's text embedder (if the service has one) embeds ``text``."""

    model_config = ConfigDict(extra="forbid")

    text: str
    vector: RawVector | None = None
    encoding: Encoding = "json"
    limit: int = 10
    filter: dict[str, Any] | None = None
    k: int = 60
    candidates: int | None = None


class DeleteEmbeddings(BaseModel):
    """What to delete: ``ids``, or every embedding matching ``filter`` (one of them)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, max_length=_MAX_ITEMS)
    filter: dict[str, Any] | None = None


class Deleted(BaseModel):
    """How many embeddings were deleted."""

    deleted: int


class Hits(BaseModel):
    """Search results, best first: the library's own (``score`` per the collection's metric,
    RRF for hybrid; ``distance`` pgvector's), serialized as they are."""

    items: list[SimilarityResult]


class BatchHits(BaseModel):
    """One list of results per query, in the queries' order."""

    results: list[Hits]


def _hits(results: list[SimilarityResult]) -> Hits:
    # Dataclass instances validate as they are: no copy through dicts on the search path.
    return Hits.model_construct(items=results)


class EmbeddingsController(Controller):
    """The caller's embeddings in one collection."""

    path = "/v1/collections/{name:str}"
    tags = ["embeddings"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/embeddings", guards=[writes], status_code=200, summary="Store embeddings")
    async def store_embeddings(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[NewEmbeddings]
    ) -> StoredIds:
        """Store the items in one transaction (a bad one stores none, and is named)."""
        items = [
            {
                **item.model_dump(exclude={"vector"}, exclude_none=True),
                "vector": decode_vector(item.vector, data.encoding, f"items[{n}].vector"),
            }
            for n, item in enumerate(data.items)
        ]
        return StoredIds(ids=await tenant.embeddings.collection(name).store_many(items))

    @get("/embeddings/{embedding_id:str}", guards=[reads], summary="Get an embedding")
    async def get_embedding(
        self, tenant: Tenant, name: FromPath[str], embedding_id: FromPath[str]
    ) -> Embedding:
        """The caller's embedding with ``embedding_id``."""
        return await tenant.embeddings.collection(name).get(embedding_id)

    @delete("/embeddings/{embedding_id:str}", guards=[writes], summary="Delete an embedding")
    async def delete_embedding(
        self, tenant: Tenant, name: FromPath[str], embedding_id: FromPath[str]
    ) -> None:
        """Delete the caller's embedding with ``embedding_id`` (404 if it has none)."""
        if not await tenant.embeddings.collection(name).delete([embedding_id]):
            raise NotFound(
                f"embedding {embedding_id!r} does not exist in {name!r}", entity="embedding"
            )

    @post("/embeddings/delete", guards=[writes], status_code=200, summary="Delete embeddings")
    async def delete_embeddings(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[DeleteEmbeddings]
    ) -> Deleted:
        """Delete by ids (those the caller does not have are skipped) or by filter."""
        deleted = await tenant.embeddings.collection(name).delete(data.ids, filter=data.filter)
        return Deleted(deleted=deleted)

    @post("/search", guards=[reads], status_code=200, summary="Search a collection")
    async def search_collection(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[Search]
    ) -> Hits:
        """The ``limit`` nearest of the caller's embeddings to ``vector``, filtered."""
        results = await tenant.embeddings.collection(name).find_similar(
            decode_vector(data.vector, data.encoding, "vector"),
            data.limit,
            threshold=data.threshold,
            filter=data.filter,
            include_vectors=data.include_vectors,
            exact=data.exact,
            ef_search=data.ef_search,
            probes=data.probes,
        )
        return _hits(results)

    @post("/search/batch", guards=[reads], status_code=200, summary="Run many searches")
    async def batch_search_collection(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[BatchSearch]
    ) -> BatchHits:
        """One result list per query, in order; errors name the query (``queries[2].limit``)."""
        queries = [
            {
                **query.model_dump(exclude={"vector"}, exclude_none=True),
                "vector": decode_vector(query.vector, data.encoding, f"queries[{n}].vector"),
            }
            for n, query in enumerate(data.queries)
        ]
        results = await tenant.embeddings.collection(name).batch_search(
            queries,
            include_vectors=data.include_vectors,
            exact=data.exact,
            ef_search=data.ef_search,
            probes=data.probes,
        )
        return BatchHits(results=[_hits(found) for found in results])

    @post(
        "/search/hybrid", guards=[reads], status_code=200, summary="Hybrid text and vector search"
    )
    async def hybrid_search_collection(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[HybridSearch]
    ) -> Hits:
        """Full-text and vector results fused by reciprocal rank fusion (``score``)."""
        vector = (
            None if data.vector is None else decode_vector(data.vector, data.encoding, "vector")
        )
        results = await tenant.embeddings.collection(name).hybrid_search(
            data.text,
            vector,
            data.limit,
            filter=data.filter,
            k=data.k,
            candidates=data.candidates,
        )
        return _hits(results)
