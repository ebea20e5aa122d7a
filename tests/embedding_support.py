"""A small deterministic text embedder for the tests: nothing downloads a model.

Each word is hashed to one of ``dimension`` places and counted there, then the vector is
normalised, so texts sharing words are near each other and the same text always gets the same
vector (in every process: the hash is BLAKE2, not Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

__all__ = ["WORDS", "HashingEmbedder", "embed_texts"]

WORDS = re.compile(r"[a-z0-9]+")


def _place(word: str, dimension: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big") % dimension


def embed_texts(texts: list[str], dimension: int = 32) -> list[list[float]]:
    """One unit vector per text (a text with no words gets the first axis)."""
    out = []
    for text in texts:
        vector = np.zeros(dimension, dtype=np.float64)
        for word in WORDS.findall(text.lower()):
            vector[_place(word, dimension)] += 1.0
        norm = np.linalg.norm(vector)
        if norm == 0:
            vector[0] = 1.0
        else:
            vector /= norm
        out.append(vector.tolist())
    return out


class HashingEmbedder:
    """The same, shaped as a LangChain ``Embeddings`` (sync methods only: the layer runs them in
    a worker thread), counting the calls it gets."""

    def __init__(self, dimension: int = 32) -> None:
        self.dimension = dimension
        self.batches: list[int] = []
        self.queries = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        self.batches.append(len(texts))
        return embed_texts(texts, self.dimension)

    def embed_query(self, text: str) -> list[float]:
        """The vector of a query."""
        self.queries += 1
        return embed_texts([text], self.dimension)[0]
