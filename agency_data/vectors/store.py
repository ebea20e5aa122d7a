"""``embeddings``: the default collection, and the other collections by name.

A tenant's view (``dl.tenant(t).embeddings``) stores, reads, searches and deletes that tenant's
rows. The unscoped ``dl.embeddings`` is the default tenant's view plus collection
administration (create, drop, list, indexes), which runs as the owner role.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agency_data.postgres.database import Database
from agency_data.vectors.admin import CollectionAdmin, ManagedCollection
from agency_data.vectors.catalog import DEFAULT_COLLECTION, Catalog, check_name
from agency_data.vectors.collection import Collection
from agency_data.vectors.embedders import Embedder

__all__ = ["DEFAULT_COLLECTION", "EmbeddingStore", "ManagedEmbeddingStore"]

C = TypeVar("C", bound=Collection)
# Collections handed out are kept, one per name, so that concurrent callers meet in the same
# one and share its gathered reads and writes; past this many names the oldest are let go.
_KEPT = 256


def _kept(kept: dict[str, C], name: str, make: Callable[[str], C]) -> C:
    checked = check_name(name)  # first: a name that is not a string cannot be looked up
    found = kept.get(checked)
    if found is None:
        found = make(checked)
        if len(kept) >= _KEPT:
            del kept[next(iter(kept))]
        kept[checked] = found
    return found


async def _close(store: Collection, kept: Mapping[str, Collection]) -> None:
    await Collection.aclose(store)
    for collection in list(kept.values()):
        await collection.aclose()


class EmbeddingStore(Collection):
    """A tenant's embeddings: the default collection (made on first use) and the others.

    Usage::

        memories = dl.tenant("acme").embeddings.collection("memories")
        await memories.store_many(items)
        await dl.tenant("acme").embeddings.find_similar(vector)   # the default collection
    """

    def __init__(self, db: Database, catalog: Catalog, tenant: str) -> None:
        super().__init__(db, catalog, tenant, DEFAULT_COLLECTION)
        self._collections: dict[str, Collection] = {}

    async def aclose(self) -> None:
        """Wait for the gathered reads and stores of this store and its collections."""
        await _close(self, self._collections)

    def collection(self, name: str, *, embedder: Any = None) -> Collection:
        """The collection ``name`` (it must exist by the time it is used), embedding texts
        with ``embedder`` if given (else with the one it was created with, if any)."""
        if name == DEFAULT_COLLECTION:
            found: Collection = self
        else:
            found = _kept(
                self._collections,
                name,
                lambda checked: Collection(self._db, self._catalog, self.tenant, checked),
            )
        return found if embedder is None else found.with_embedder(embedder)


class ManagedEmbeddingStore(ManagedCollection):
    """The default tenant's embeddings, plus creating, listing and dropping collections.

    Usage::

        await dl.embeddings.create_collection("memories", dimension=768, storage="halfvec")
        memories = dl.embeddings.collection("memories")
        await memories.create_index("hnsw")
        await dl.embeddings.store_many(items)     # the default collection
    """

    def __init__(self, db: Database, catalog: Catalog, tenant: str, admin: CollectionAdmin) -> None:
        super().__init__(db, catalog, tenant, DEFAULT_COLLECTION, admin)
        self._collections: dict[str, ManagedCollection] = {}

    async def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        storage: str = "vector",
        *,
        exist_ok: bool = False,
        embedder: Any = None,
    ) -> ManagedCollection:
        """Create a collection (shared by all tenants; each sees only its own rows).

        ``embedder`` (see :mod:`agency_data.vectors.embedders`) becomes the collection's text
        embedder in this DataLayer and its tenant views, for ``store_texts``, ``search_text``
        and ``hybrid_search`` with only a text. It is not stored: give it again (here, with
        ``exist_ok``, or to ``collection()``) in the next process.
        """
        chosen = None if embedder is None else Embedder.of(embedder)
        await self._admin.create_collection(name, dimension, metric, storage, exist_ok=exist_ok)
        if chosen is not None:
            self._catalog.embedders[check_name(name)] = chosen
        return self.collection(name)

    async def aclose(self) -> None:
        """Wait for the gathered reads and stores of this store and its collections."""
        await _close(self, self._collections)

    def collection(self, name: str, *, embedder: Any = None) -> ManagedCollection:
        """The collection ``name`` (it must exist by the time it is used), embedding texts
        with ``embedder`` if given (else with the one it was created with, if any)."""
        if name == DEFAULT_COLLECTION:
            found: ManagedCollection = self
        else:
            found = _kept(
                self._collections,
                name,
                lambda checked: ManagedCollection(
                    self._db, self._catalog, self.tenant, checked, self._admin
                ),
            )
        return found if embedder is None else found.with_embedder(embedder)

    async def list_collections(self) -> list[str]:
        """The names of every collection."""
        return await self._admin.list_collections()

    async def drop_collection(self, name: str) -> None:
        """Drop a collection with every embedding in it, for all tenants."""
        await self._admin.drop_collection(name)
