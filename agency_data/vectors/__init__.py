"""The embedding store on pgvector: collections, storing, filtered similarity search, indexes,
text embedders."""

from agency_data.vectors.admin import CollectionAdmin, ManagedCollection
from agency_data.vectors.collection import Collection
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.filter_ast import parse_filter
from agency_data.vectors.filter_eval import matches
from agency_data.vectors.store import EmbeddingStore, ManagedEmbeddingStore

__all__ = [
    "Collection",
    "CollectionAdmin",
    "Embedder",
    "EmbeddingStore",
    "ManagedCollection",
    "ManagedEmbeddingStore",
    "matches",
    "parse_filter",
]
