"""Administering collections: create, drop, list, and their indexes. The owner role's work.

Tenants share each collection's table and see only their own rows in it, so nothing here is
reachable from a tenant's view: a tenant can store, search and delete its rows, and no more.
``dl.admin`` and the unscoped ``dl.embeddings`` reach it.
"""

from __future__ import annotations

from typing import Unpack

from agency_data.models import CollectionInfo, OptimizeReport
from agency_data.postgres.database import Database
from agency_data.vectors import indexes
from agency_data.vectors.catalog import Catalog, check_name
from agency_data.vectors.collection import Collection
from agency_data.vectors.indexes import IndexOptions

__all__ = ["CollectionAdmin", "ManagedCollection"]


class CollectionAdmin:
    """Collection DDL and index upkeep, by collection name, as the owner role."""

    def __init__(self, catalog: Catalog, admin: Database) -> None:
        self._catalog = catalog
        self._admin = admin

    async def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        storage: str = "vector",
        *,
        exist_ok: bool = False,
    ) -> None:
        """Create a collection (shared by all tenants; each sees only its own rows)."""
        await self._catalog.create(name, dimension, metric, storage, exist_ok=exist_ok)

    async def drop_collection(self, name: str) -> None:
        """Drop a collection with every embedding in it, for all tenants."""
        await self._catalog.drop(check_name(name))

    async def list_collections(self) -> list[str]:
        """The names of every collection."""
        return await self._catalog.names()

    async def create_index(
        self, collection: str, kind: str = "hnsw", **options: Unpack[IndexOptions]
    ) -> None:
        """Build a collection's ANN index concurrently; see :meth:`ManagedCollection.create_index`."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        await indexes.create_index(self._admin, self._catalog, spec, kind=kind, **options)

    async def drop_index(self, collection: str) -> None:
        """Drop a collection's ANN index (searches become exact scans)."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        await indexes.drop_index(self._admin, self._catalog, spec)

    async def reindex(self, collection: str) -> None:
        """Rebuild a collection's ANN index concurrently."""
        await indexes.reindex(
            self._admin, await self._catalog.load(check_name(collection, "collection"))
        )

    async def optimize(self, collection: str) -> OptimizeReport:
        """ANALYZE; rebuild a bloated index; resize IVFFlat lists (rows: every tenant's)."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        return await indexes.optimize(self._admin, self._catalog, spec)


class ManagedCollection(Collection):
    """A collection as the unscoped data layer sees it: its default tenant's rows, plus upkeep."""

    def __init__(
        self, db: Database, catalog: Catalog, tenant: str, name: str, admin: CollectionAdmin
    ) -> None:
        super().__init__(db, catalog, tenant, name)
        self._admin = admin

    async def create_index(
        self, kind: str = "hnsw", **options: Unpack[IndexOptions]
    ) -> CollectionInfo:
        """Build the collection's ANN index concurrently (writes go on meanwhile).

        ``kind`` is ``hnsw`` (``m`` 16, ``ef_construction`` 64) or ``ivfflat`` (``lists``, by
        default from the row count). ``quantization="binary"`` indexes one bit per dimension
        and has searches re-rank candidates at full precision. ``progress`` is called with
        snapshots of the build. An existing index is :class:`Conflict` unless ``replace``.
        """
        await self._spec()  # the default collection is made on first use
        await self._admin.create_index(self.name, kind, **options)
        return await self.describe()

    async def drop_index(self) -> None:
        """Drop the ANN index (searches become exact scans)."""
        await self._admin.drop_index(self.name)

    async def reindex(self) -> None:
        """Rebuild the ANN index concurrently."""
        await self._admin.reindex(self.name)

    async def optimize(self) -> OptimizeReport:
        """ANALYZE; rebuild a bloated index; resize IVFFlat lists that no longer fit the rows."""
        await self._spec()
        return await self._admin.optimize(self.name)
