"""The LangGraph store's embeddings: one per (namespace, key, field path) in its collection.

An embedding's id names its item and field (``["users.u1","k","text"]``, JSON so that no key
can be mistaken for another; a hash when that is over the id limit), so writing an item again
replaces its embeddings in place; the item's row keeps the ids it has (``embedding_ids``), so
the ones a new value no longer has, and those of a deleted or expired item, are deleted by
primary key. ``entity_id`` names the item the same way, for whoever reads the collection.
Its metadata carries the namespace as a list of labels (so ``{"metadata.ns.0": "users"}``
selects a namespace prefix), the key, the field, and a copy of the item's value, so that a
vector search applies the caller's filter inside the collection's index scan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from langgraph.store.base import get_text_at_path

from agency_data.integrations.langgraph._store_input import Fields
from agency_data.models import SimilarityResult
from agency_data.vectors.ids import MAX_ID_LENGTH

__all__ = [
    "ENTITY_TYPE",
    "Embedded",
    "embedding_id",
    "hit_of",
    "item_ref",
    "search_filter",
    "texts_of",
]

ENTITY_TYPE = "langgraph_item"
# The collection's limit on entity_id.
_MAX_REF = 1000


def _name(parts: Sequence[str], most: int) -> str:
    text = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    if len(text) <= most:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def item_ref(prefix: str, key: str) -> str:
    """The ``entity_id`` of an item's embeddings."""
    return _name((prefix, key), _MAX_REF)


def embedding_id(prefix: str, key: str, field: str) -> str:
    """The id of an item's embedding of ``field``."""
    return _name((prefix, key, field), MAX_ID_LENGTH)


def texts_of(value: dict[str, Any], fields: Fields) -> list[tuple[str, str]]:
    """The (field name, text) pairs to embed, as LangGraph's stores name them: a path that
    yields several texts (``items[*].text``) gives ``items[*].text.0``, ``.1``, ..."""
    found: list[tuple[str, str]] = []
    for path, tokens in fields:
        texts = get_text_at_path(value, tokens)
        if len(texts) == 1:
            found.append((path, texts[0]))
        else:
            found += [(f"{path}.{n}", text) for n, text in enumerate(texts)]
    return found


class Embedded:
    """What one item contributes to the collection: its embeddings' rows, vectors to come."""

    __slots__ = ("key", "namespace", "prefix", "texts", "value")

    def __init__(
        self,
        namespace: tuple[str, ...],
        prefix: str,
        key: str,
        value: dict[str, Any],
        texts: list[tuple[str, str]],
    ) -> None:
        self.namespace = namespace
        self.prefix = prefix
        self.key = key
        self.value = value
        self.texts = texts

    def rows(self, vectors: Any) -> list[dict[str, Any]]:
        """The collection's items for this item, given one vector per text."""
        ref = item_ref(self.prefix, self.key)
        return [
            {
                "id": embedding_id(self.prefix, self.key, field),
                "entity_type": ENTITY_TYPE,
                "entity_id": ref,
                "vector": vector,
                "metadata": {
                    "ns": list(self.namespace),
                    "key": self.key,
                    "field": field,
                    "value": self.value,
                },
            }
            for (field, _), vector in zip(self.texts, vectors, strict=True)
        ]


def search_filter(namespace: Sequence[str], value_filter: dict[str, Any]) -> dict[str, Any]:
    """The collection filter of a search under ``namespace``: the caller's filter (already in
    agency-data's language, each key a path below ``metadata``) moved onto the value's copy."""
    combined: dict[str, Any] = {"entity_type": ENTITY_TYPE}
    for place, label in enumerate(namespace):
        combined[f"metadata.ns.{place}"] = label
    for key, condition in value_filter.items():
        combined["metadata.value." + key.removeprefix("metadata.")] = condition
    return combined


def hit_of(result: SimilarityResult, metric: str) -> tuple[str, str, float]:
    """(prefix, key, score) of a search result; the score as LangGraph's Postgres store
    reports it: higher is better (cosine similarity, inner product, negated L2 distance)."""
    metadata = result.metadata
    score = -result.distance if metric == "euclidean" else result.score
    return ".".join(metadata["ns"]), metadata["key"], score
