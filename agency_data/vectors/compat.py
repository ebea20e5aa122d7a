"""Differences between pgvector-python releases that we support (0.3 and later).

0.3 returns numpy arrays for ``vector`` columns and keeps ``HalfVector`` in ``pgvector.utils``;
0.4 and later return ``Vector`` objects and export everything from ``pgvector``. Some peers
(langchain-postgres) still pin 0.3, so both must work.
"""

from __future__ import annotations

import importlib
from typing import Any

import pgvector

# Looked up rather than imported, so that the type checker is happy with either release.
HalfVector: Any = (
    getattr(pgvector, "HalfVector", None) or importlib.import_module("pgvector.utils").HalfVector
)

__all__ = ["HalfVector", "vector_to_list"]


def vector_to_list(value: Any) -> list[float]:
    """A loaded ``vector`` or ``halfvec`` value as a list of floats."""
    if hasattr(value, "to_list"):
        return [float(x) for x in value.to_list()]
    return [float(x) for x in value.tolist()]
