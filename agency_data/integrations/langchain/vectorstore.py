"""A LangChain ``VectorStore`` over an agency-data collection (extra ``[langchain]``).

Usage, in async code::

    docs = await dl.embeddings.create_collection("docs", dimension=1536)
    store = AgencyVectorStore(docs, OpenAIEmbeddings())
    await store.aadd_documents(documents)
    hits = await store.asimilarity_search("what did the planner decide?", k=4,
                                          filter={"source": {"$in": ["notes", "chat"]}})

and in sync code, over the sync front end (``agency_data.sync``)::

    store = AgencyVectorStore(sync_dl.embeddings.collection("docs"), embeddings)
    store.add_texts(["..."], ids=["doc-1"])
    retriever = store.as_retriever(search_kwargs={"k": 8})

The store is a thin adapter: documents are embeddings of the collection whose ``content`` is the
page content, ``metadata`` the document's metadata and ``id`` its id (any string). Filters are
agency-data's filter language (``$eq``, ``$in``, ``$gt``..., ``$and``/``$or``/``$not``, dotted
paths). Texts are embedded by the collection's embedder machinery: batches, bounded
concurrency, retries. Tenancy follows the collection: one taken from ``dl.tenant("a")`` sees
and writes only tenant a's documents.

The layer lives on one event loop. In async code the store is built inside it and its async
methods run there directly; its sync methods may then be called from other threads only. Over
the sync front end, both kinds of method reach the layer through its portal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from agency_data.errors import ValidationError
from agency_data.inputs import MAX_PAGE, check_int, check_number
from agency_data.integrations.bridge import reach
from agency_data.models import SimilarityResult
from agency_data.sync.portal import Portal
from agency_data.vectors.collection import Collection
from agency_data.vectors.embedders import Embedder

__all__ = ["AgencyVectorStore"]

T = TypeVar("T")
# find_similar's tuning options a search may carry through (as_retriever's search_kwargs).
_SEARCH_OPTIONS = {"ef_search", "probes", "exact", "rerank", "consistent"}


class AgencyVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over one agency-data collection (see the module's docstring).

    ``collection`` is a collection of the async layer (``dl.embeddings.collection(name)``, or a
    tenant's) or of the sync front end; ``embedding`` embeds the documents and the queries.
    ``portal`` is needed only for an async collection used outside its loop's thread before
    any async call: by default the loop running when the store is made.
    """

    def __init__(
        self, collection: Any, embedding: Embeddings, *, portal: Portal | None = None
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise ValidationError(
                f"embedding must be a LangChain Embeddings, not {type(embedding).__name__}",
                field="embedding",
            )
        inner, portal = reach(collection, Collection, "collection", portal)
        self._embedding = embedding
        self._portal = portal
        self._collection: Collection = inner.with_embedder(Embedder(embedding))

    @property
    def embeddings(self) -> Embeddings:
        """The embedding model of the documents and queries."""
        return self._embedding

    @property
    def collection(self) -> Collection:
        """The agency-data collection (async) the documents are stored in."""
        return self._collection

    # -- the portal: one implementation (async), reached from either side ------------------------

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._portal.call(coro)

    async def _async(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._portal.acall(coro)

    # -- writing -------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts`` (replacing the documents of the ids given); their ids."""
        return self._sync(self._add(texts, metadatas, ids, kwargs))

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts`` (replacing the documents of the ids given); their ids."""
        return await self._async(self._add(texts, metadatas, ids, kwargs))

    async def _add(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None,
        ids: list[str] | None,
        options: dict[str, Any],
    ) -> list[str]:
        _no_options(options, "add_texts", set())
        return await self._collection.store_texts(texts, metadatas, ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents of ``ids`` (missing ones are skipped), or every document of
        the collection (this tenant's) without ids; True."""
        return self._sync(self._delete(ids, kwargs))

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents of ``ids`` (missing ones are skipped), or every document of
        the collection (this tenant's) without ids; True."""
        return await self._async(self._delete(ids, kwargs))

    async def _delete(self, ids: list[str] | None, options: dict[str, Any]) -> bool:
        _no_options(options, "delete", {"filter"})
        filter = options.get("filter")
        if ids is None:
            await self._collection.delete(filter=filter if filter is not None else {})
        elif filter is not None:
            raise ValidationError("delete takes ids or a filter, not both", field="filter")
        else:
            await self._collection.delete(ids)
        return True

    # -- reading -------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist, in the order asked for."""
        return self._sync(self._get(ids))

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist, in the order asked for."""
        return await self._async(self._get(ids))

    async def _get(self, ids: Sequence[str]) -> list[Document]:
        found = {e.id: e for e in await self._collection.get_many(ids)}
        return [
            Document(id=e.id, page_content=e.content or "", metadata=e.metadata)
            for e in (found.get(i) for i in dict.fromkeys(ids))
            if e is not None
        ]

    # -- searching -----------------------------------------------------------------------------

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest to ``query``, best first."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest to ``query``, best first."""
        found = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [doc for doc, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``query`` with their distance (lower is nearer)."""
        return self._sync(self._search(query, None, k, filter, kwargs, _distance))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``query`` with their distance (lower is nearer)."""
        return await self._async(self._search(query, None, k, filter, kwargs, _distance))

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The ``k`` documents nearest to ``embedding``, best first."""
        found = self._sync(self._search(None, embedding, k, filter, kwargs, _distance))
        return [doc for doc, _ in found]

    async def asimilarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The ``k`` documents nearest to ``embedding``, best first."""
        found = await self._async(self._search(None, embedding, k, filter, kwargs, _distance))
        return [doc for doc, _ in found]

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``embedding`` with their distance."""
        return self._sync(self._search(None, embedding, k, filter, kwargs, _distance))

    async def asimilarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest to ``embedding`` with their distance."""
        return await self._async(self._search(None, embedding, k, filter, kwargs, _distance))

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # Relevance from 0 to 1 by the collection's metric (LangChain's score_threshold).
        filter = kwargs.pop("filter", None)
        return self._sync(self._search(query, None, k, filter, kwargs, _relevance))

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        filter = kwargs.pop("filter", None)
        return await self._async(self._search(query, None, k, filter, kwargs, _relevance))

    async def _search(
        self,
        query: str | None,
        vector: Any,
        k: int,
        filter: dict[str, Any] | None,
        options: dict[str, Any],
        scored: Callable[[SimilarityResult, str], float],
    ) -> list[tuple[Document, float]]:
        _no_options(options, "a similarity search", _SEARCH_OPTIONS)
        check_int(k, "k", 1, MAX_PAGE)
        if query is not None:
            vector = await self._collection.embed_query(query)
        hits = await self._collection.find_similar(vector, k, filter=filter, **options)
        metric = (await self._collection.spec()).metric
        return [(_document(hit), scored(hit, metric)) for hit in hits]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents near ``query`` and unlike each other, from its ``fetch_k`` nearest;
        ``lambda_mult`` 1 is nearness only, 0 diversity only."""
        return self._sync(self._mmr(query, None, k, fetch_k, lambda_mult, filter, kwargs))

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents near ``query`` and unlike each other, from its ``fetch_k`` nearest."""
        return await self._async(self._mmr(query, None, k, fetch_k, lambda_mult, filter, kwargs))

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """As :meth:`max_marginal_relevance_search`, from a vector."""
        return self._sync(self._mmr(None, embedding, k, fetch_k, lambda_mult, filter, kwargs))

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """As :meth:`max_marginal_relevance_search`, from a vector."""
        return await self._async(
            self._mmr(None, embedding, k, fetch_k, lambda_mult, filter, kwargs)
        )

    async def _mmr(
        self,
        query: str | None,
        vector: Any,
        k: int,
        fetch_k: int,
        lambda_mult: float,
        filter: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> list[Document]:
        _no_options(options, "a max-marginal-relevance search", _SEARCH_OPTIONS)
        check_int(k, "k", 1, MAX_PAGE)
        check_int(fetch_k, "fetch_k", 1, MAX_PAGE)
        check_number(lambda_mult, "lambda_mult", low=0.0, high=1.0)
        if query is not None:
            vector = await self._collection.embed_query(query)
        hits = await self._collection.find_similar(
            vector, max(fetch_k, k), filter=filter, include_vectors=True, **options
        )
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(vector, dtype=np.float32),
            [hit.vector or [] for hit in hits],
            lambda_mult=lambda_mult,
            k=k,
        )
        return [_document(hits[i]) for i in chosen]

    # -- making one ----------------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection: Any = None,
        portal: Portal | None = None,
        **kwargs: Any,
    ) -> AgencyVectorStore:
        """A store over ``collection`` (required), with ``texts`` added."""
        _no_options(kwargs, "from_texts", set())
        store = cls(_required(collection), embedding, portal=portal)
        store.add_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection: Any = None,
        portal: Portal | None = None,
        **kwargs: Any,
    ) -> AgencyVectorStore:
        """A store over ``collection`` (required), with ``texts`` added."""
        _no_options(kwargs, "afrom_texts", set())
        store = cls(_required(collection), embedding, portal=portal)
        await store.aadd_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return store


def _document(hit: SimilarityResult) -> Document:
    return Document(id=hit.id, page_content=hit.content or "", metadata=hit.metadata)


def _distance(hit: SimilarityResult, metric: str) -> float:
    return hit.distance


def _relevance(hit: SimilarityResult, metric: str) -> float:
    # From 0 (unrelated) to 1 (the same), falling as the distance grows: LangChain's own
    # functions for cosine and euclidean (of unit vectors), held within [0, 1] (theirs go
    # below 0 for vectors pointing away, which LangChain warns about on every search); for
    # inner product the similarity itself, held there too (LangChain's rises again below 0).
    distance = hit.distance
    if metric == "cosine":
        score = 1.0 - distance
    elif metric == "euclidean":
        score = 1.0 - distance / math.sqrt(2)
    elif metric == "inner_product":
        score = -distance  # pgvector's <#> is the negative inner product
    else:
        score = 1.0 / (1.0 + distance)
    return min(1.0, max(0.0, score))


def _no_options(options: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = f"; it takes {', '.join(sorted(allowed))}" if allowed else ""
        raise ValidationError(
            f"{where} does not take {', '.join(unknown)}{known}", field=unknown[0]
        )


def _required(collection: Any) -> Any:
    if collection is None:
        raise ValidationError(
            "from_texts needs collection=: an agency-data collection to store the texts in",
            field="collection",
        )
    return collection
