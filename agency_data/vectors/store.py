"""``dl.embeddings``: the default collection, plus creating, listing and dropping collections."""

from __future__ import annotations

from agency_data.config import VectorConfig
from agency_data.errors import NotFound
from agency_data.postgres.database import Database
from agency_data.vectors.catalog import Catalog, CollectionSpec, check_name
from agency_data.vectors.collection import Collection

__all__ = ["DEFAULT_COLLECTION", "EmbeddingStore"]

DEFAULT_COLLECTION = "default"


class EmbeddingStore(Collection):
    """The default collection (shaped by ``config.vector``, made on first use) and the others.

    Usage::

        await dl.embeddings.create_collection("memories", dimension=768, storage="halfvec")
        memories = dl.embeddings.collection("memories")
        await dl.embeddings.store_many(items)     # the default collection
    """

    def __init__(self, db: Database, catalog: Catalog, tenant: str, config: VectorConfig) -> None:
        super().__init__(db, catalog, tenant, DEFAULT_COLLECTION)
        self._config = config

    async def _spec(self) -> CollectionSpec:
        try:
            return await self._catalog.get(DEFAULT_COLLECTION)
        except NotFound:
            return await self._catalog.create(
                DEFAULT_COLLECTION,
                self._config.dimension,
                self._config.distance_metric,
                "halfvec" if self._config.quantization == "halfvec" else "vector",
                exist_ok=True,
            )

    async def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        storage: str = "vector",
        *,
        exist_ok: bool = False,
    ) -> Collection:
        """Create a collection (shared by all tenants; each sees only its own rows)."""
        await self._catalog.create(name, dimension, metric, storage, exist_ok=exist_ok)
        return self.collection(name)

    def collection(self, name: str) -> Collection:
        """The collection ``name`` (it must exist by the time it is used)."""
        if name == DEFAULT_COLLECTION:
            return self
        return Collection(self._db, self._catalog, self.tenant, check_name(name))

    async def list_collections(self) -> list[str]:
        """The names of every collection."""
        return await self._catalog.names()

    async def drop_collection(self, name: str) -> None:
        """Drop a collection with every embedding in it, for all tenants."""
        await self._catalog.drop(check_name(name))
