"""``/v1/collections``: create, describe, list and drop collections, and manage their indexes.

Collections are shared by every tenant (one table each, rows scoped by tenant), so creating
one and managing its index take an admin key, and a tenant's admin may drop a collection, or
change its index, only when no other tenant has rows in it (409 otherwise). The memory
collection is never changed here: every tenant's memory lives in it. Describing reports the
caller's rows only, and no sizes on disk, and takes any key: clients need the dimension.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from agency_data.errors import AgencyDataError, Conflict
from agency_data.models import CollectionInfo, OptimizeReport
from agency_data.scope import TenantScope
from agency_data.service.auth import administers, reads
from agency_data.service.routes._common import SCOPE, Tenant, state_of
from agency_data.vectors.admin import CollectionAdmin
from agency_data.vectors.indexes import DEFAULT_M

__all__ = ["CollectionsController"]

# The contract's short names for pgvector's metrics, and the library's own.
_METRICS = {"l2": "euclidean", "ip": "inner_product"}
MetricName = Literal["cosine", "l2", "ip", "euclidean", "inner_product", "manhattan"]


async def _admin(request: Request[Any, Any, Any]) -> CollectionAdmin:
    return state_of(request).dl.admin


Admin = NamedDependency[CollectionAdmin]
"""The owner's collection administration (the handlers' guards admit admin keys only)."""


class NewCollection(BaseModel):
    """A collection to create; ``index`` is built at once (on an empty table: instantly)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9_]*$")
    dimension: int = Field(ge=1, le=16000)
    metric: MetricName = "cosine"
    storage: Literal["vector", "halfvec"] = "vector"
    index: Literal["hnsw", "ivfflat"] | None = "hnsw"
    exist_ok: bool = False


class NewIndex(BaseModel):
    """An ANN index to build: HNSW (``m``, ``ef_construction``) or IVFFlat (``lists``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hnsw", "ivfflat"] = "hnsw"
    m: int = DEFAULT_M
    ef_construction: int | None = None
    lists: int | None = None
    quantization: Literal["none", "binary"] = "none"
    replace: bool = False


class IndexShape(BaseModel):
    """A collection's ANN index: its kind, build options and whether it is usable."""

    name: str
    kind: Literal["hnsw", "ivfflat"]
    quantization: Literal["none", "binary"] = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    valid: bool


class CollectionShape(BaseModel):
    """A collection as a tenant sees it: its shape, its index, and the caller's rows.

    Sizes on disk are left out: the table and its index hold every tenant's rows, so their
    growth would tell one tenant how much another stores."""

    name: str
    dimension: int
    metric: str
    storage: Literal["vector", "halfvec"]
    rows: int
    bytes_per_vector: int
    index: IndexShape | None = None

    @classmethod
    def of(cls, info: CollectionInfo) -> CollectionShape:
        """The shape of what ``describe`` reported."""
        index = None
        if info.index is not None:
            index = IndexShape(**info.index.model_dump(exclude={"size_bytes"}))
        return cls(
            name=info.name,
            dimension=info.dimension,
            metric=info.metric,
            storage=info.storage,
            rows=info.rows,
            bytes_per_vector=info.bytes_per_vector,
            index=index,
        )


async def _sole_user(tenant: TenantScope, admin: CollectionAdmin, name: str) -> None:
    """Refuse (409) an index change on a collection another tenant uses, or on memory's."""
    if name == tenant.memory.collection:
        raise Conflict(
            f"collection {name!r} holds every tenant's agent memory: it is not changed or "
            "dropped through the API",
            field="name",
        )
    await admin.refuse_shared(name, tenant.tenant_id)


class CollectionNames(BaseModel):
    """Every collection's name, sorted."""

    items: list[str]


class CollectionsController(Controller):
    """Collections and their indexes (shared by all tenants)."""

    path = "/v1/collections"
    tags = ["collections"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = {**SCOPE, "collection_admin": Provide(_admin)}  # noqa: RUF012 - read by the framework

    @post("/", guards=[administers], summary="Create a collection")
    async def create_collection(
        self, tenant: Tenant, collection_admin: Admin, data: JSONBody[NewCollection]
    ) -> CollectionShape:
        """Create a collection (and its index, unless ``index`` is null); with ``exist_ok``,
        one of the same shape already there is kept."""
        metric = _METRICS.get(data.metric, data.metric)
        existed = data.exist_ok and data.name in await collection_admin.list_collections()
        await collection_admin.create_collection(
            data.name, data.dimension, metric, data.storage, exist_ok=data.exist_ok
        )
        collection = tenant.embeddings.collection(data.name)
        if data.index is not None and (await collection.spec()).index_kind is None:
            try:
                await collection_admin.create_index(data.name, data.index)
            except BaseException:
                # All or nothing: the collection this request made goes, unless another
                # tenant has stored into it meanwhile (then it stays, without an index).
                if not existed:
                    with contextlib.suppress(AgencyDataError):
                        await collection_admin.drop_collection(
                            data.name, sole_tenant=tenant.tenant_id
                        )
                raise
        return CollectionShape.of(await collection.describe())

    @get("/", guards=[administers], summary="List collections")
    async def list_collections(self, collection_admin: Admin) -> CollectionNames:
        """The names of every collection (they are shared by all tenants)."""
        return CollectionNames(items=await collection_admin.list_collections())

    @get("/{name:str}", guards=[reads], summary="Describe a collection")
    async def describe_collection(self, tenant: Tenant, name: FromPath[str]) -> CollectionShape:
        """The collection's shape and index, and the caller's rows in it."""
        return CollectionShape.of(await tenant.embeddings.collection(name).describe())

    @delete("/{name:str}", guards=[administers], summary="Drop a collection")
    async def drop_collection(
        self, tenant: Tenant, collection_admin: Admin, name: FromPath[str]
    ) -> None:
        """Drop the collection, if no other tenant has rows in it (409 otherwise)."""
        await _sole_user(tenant, collection_admin, name)
        await collection_admin.drop_collection(name, sole_tenant=tenant.tenant_id)

    @post("/{name:str}/index", guards=[administers], summary="Build a collection's index")
    async def create_collection_index(
        self, tenant: Tenant, collection_admin: Admin, name: FromPath[str], data: JSONBody[NewIndex]
    ) -> CollectionShape:
        """Build the ANN index concurrently (writes go on meanwhile); an existing one is a
        409 unless ``replace``. Only on a collection no other tenant uses (409)."""
        await _sole_user(tenant, collection_admin, name)
        # Only the options given: the library's defaults for the rest (IndexOptions' types
        # have no None for ef_construction).
        options = data.model_dump(exclude={"kind"}, exclude_none=True)
        await collection_admin.create_index(name, data.kind, **options)
        return CollectionShape.of(await tenant.embeddings.collection(name).describe())

    @delete("/{name:str}/index", guards=[administers], summary="Drop a collection's index")
    async def drop_collection_index(
        self, tenant: Tenant, collection_admin: Admin, name: FromPath[str]
    ) -> None:
        """Drop the ANN index: searches become exact scans. Only on a collection no other
        tenant uses (409)."""
        await _sole_user(tenant, collection_admin, name)
        await collection_admin.drop_index(name)

    @post(
        "/{name:str}/index/rebuild",
        guards=[administers],
        status_code=200,
        summary="Rebuild an index",
    )
    async def rebuild_collection_index(
        self, tenant: Tenant, collection_admin: Admin, name: FromPath[str]
    ) -> CollectionShape:
        """Rebuild the ANN index concurrently. Only on a collection no other tenant uses."""
        await _sole_user(tenant, collection_admin, name)
        await collection_admin.reindex(name)
        return CollectionShape.of(await tenant.embeddings.collection(name).describe())

    @post(
        "/{name:str}/optimize",
        guards=[administers],
        status_code=200,
        summary="Optimize a collection",
    )
    async def optimize_collection(
        self, tenant: Tenant, collection_admin: Admin, name: FromPath[str]
    ) -> OptimizeReport:
        """ANALYZE, vacuum or rebuild a bloated index, and fit IVFFlat lists to the rows.
        Only on a collection no other tenant uses (409): its report counts every row."""
        await _sole_user(tenant, collection_admin, name)
        return await collection_admin.optimize(name)
