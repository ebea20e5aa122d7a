"""Administering collections: create, drop, list, and their indexes. The owner role's work.

Tenants share each collection's table and see only their own rows in it, so nothing here is
reachable from a tenant's view: a tenant can store, search and delete its rows, and no more.
``dl.admin`` and the unscoped ``dl.embeddings`` reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from agency_data.errors import ValidationError
from agency_data.inputs import brief, check_tenant
from agency_data.models import CollectionInfo, OptimizeReport
from agency_data.observability import observed
from agency_data.postgres.database import Database
from agency_data.vectors import indexes, prewarm
from agency_data.vectors.catalog import Catalog, check_name
from agency_data.vectors.collection import Collection
from agency_data.vectors.indexes import IndexOptions
from agency_data.vectors.prewarm import PrewarmReport

__all__ = ["CollectionAdmin", "ManagedCollection", "allow_transient_prewarm"]


class CollectionAdmin:
    """Collection DDL and index upkeep, by collection name, as the owner role."""

    def __init__(self, catalog: Catalog, admin: Database) -> None:
        self._catalog = catalog
        self._admin = admin
        self._telemetry = admin.telemetry
        self._prewarm_superuser: str | None = None

    @observed("admin.create_collection")
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

    @observed("admin.drop_collection")
    async def drop_collection(self, name: str, *, sole_tenant: str | None = None) -> None:
        """Drop a collection with every embedding in it, for all tenants.

        With ``sole_tenant`` (a tenant's administrator asking), the drop is refused with
        :class:`Conflict` when any other tenant has a row in it: checked under the table's
        exclusive lock, so none can be added between the check and the drop.
        """
        tenant = None if sole_tenant is None else check_tenant(sole_tenant)
        await self._catalog.drop(check_name(name), sole_tenant=tenant)

    @observed("admin.refuse_shared")
    async def refuse_shared(self, name: str, tenant: str) -> None:
        """:class:`Conflict` when a tenant other than ``tenant`` has rows in collection
        ``name`` (before a tenant's administrator changes its index)."""
        await self._catalog.refuse_shared(check_name(name), check_tenant(tenant))

    @observed("admin.list_collections")
    async def list_collections(self) -> list[str]:
        """The names of every collection."""
        return await self._catalog.names()

    @observed("admin.create_index")
    async def create_index(
        self, collection: str, kind: str = "hnsw", **options: Unpack[IndexOptions]
    ) -> None:
        """Build a collection's ANN index concurrently; see :meth:`ManagedCollection.create_index`."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        await indexes.create_index(self._admin, self._catalog, spec, kind=kind, **options)

    @observed("admin.drop_index")
    async def drop_index(self, collection: str) -> None:
        """Drop a collection's ANN index (searches become exact scans)."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        await indexes.drop_index(self._admin, self._catalog, spec)

    @observed("admin.reindex")
    async def reindex(self, collection: str) -> None:
        """Rebuild a collection's ANN index concurrently."""
        await indexes.reindex(
            self._admin, await self._catalog.load(check_name(collection, "collection"))
        )

    @observed("admin.optimize")
    async def optimize(self, collection: str) -> OptimizeReport:
        """ANALYZE; rebuild a bloated index; resize IVFFlat lists (rows: every tenant's);
        rebuild an IVFFlat index whose estimated recall (the recall probe's) is under
        ``monitoring.alerts.recall``."""
        spec = await self._catalog.load(check_name(collection, "collection"))
        telemetry = self._telemetry
        return await indexes.optimize(
            self._admin,
            self._catalog,
            spec,
            recall=telemetry.recall.get(spec.name),
            recall_bound=telemetry.config.alerts.recall,
        )

    @observed("admin.prewarm")
    async def prewarm(self, names: Sequence[str] | None = None) -> PrewarmReport:
        """Read collections' vector indexes, then their tables, into PostgreSQL's memory.

        After a restart the first searches would otherwise read their index page by page.
        ``names`` picks collections (default: every one); an unknown one is :class:`NotFound`.
        Indexes go into shared buffers first, up to three quarters of them; blocks past that
        are handed to the OS to read ahead. It needs ``pg_prewarm``
        (:mod:`agency_data.vectors.prewarm`): without it nothing is done, and the report's
        ``skipped`` says why. ``vector.prewarm_on_start`` runs it when the DataLayer starts.
        """
        if names is None:
            chosen = await self._catalog.names()
        elif isinstance(names, str) or not isinstance(names, Sequence):
            raise ValidationError(
                f"names must be a list of collection names (or None for all), not {brief(names)}",
                field="names",
            )
        else:
            chosen = [check_name(name, "names") for name in names]
        specs = [await self._catalog.load(name) for name in dict.fromkeys(chosen)]
        return await prewarm.prewarm(self._admin, specs, superuser=self._prewarm_superuser)


def allow_transient_prewarm(admin: CollectionAdmin, superuser: str) -> None:
    """Let ``admin.prewarm()`` log in as ``superuser`` to load pg_prewarm for one transaction.

    The embedded server's DataLayer does this at start: pg_prewarm is not a trusted extension,
    and creating it for good would put it in every backup, which the owner role could then not
    restore. The superuser is used for nothing else. A function, not a method: no caller of
    ``dl.admin`` should hand it a superuser's DSN.
    """
    if not isinstance(superuser, str):
        raise ValidationError(
            f"superuser must be a connection string, not {brief(superuser)}", field="superuser"
        )
    admin._prewarm_superuser = superuser


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

        ``kind`` is ``hnsw`` (``m`` 16, ``ef_construction`` 128) or ``ivfflat`` (``lists``, by
        default from the row count). The HNSW defaults give recall@10 >= 0.95 at pgvector's
        default ``ef_search`` of 40 on clustered 768-d embeddings; pgvector's own
        ``ef_construction`` of 64 builds faster a graph in which some queries miss their
        neighbours whatever ``ef_search`` (the README says how this was measured). On the
        embedded server the build raises ``maintenance_work_mem`` for itself so the graph fits in
        memory; on a configured server, give the owner role enough for big indexes.
        ``quantization="binary"`` indexes one bit per dimension and has searches re-rank
        candidates at full precision. ``progress`` is called with snapshots of the build. An
        existing index is :class:`Conflict` unless ``replace``.
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
