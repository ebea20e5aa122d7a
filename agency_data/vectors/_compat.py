"""Differences between pgvector-python releases that we support (0.3 and later).

0.3 returns numpy arrays for ``vector`` columns and keeps ``HalfVector`` in ``pgvector.utils``;
0.4 and later return ``Vector`` objects and export everything from ``pgvector``. Some peers
(langchain-postgres) still pin 0.3, so both must work.
"""

from __future__ import annotations

from typing import Any

try:
    from pgvector import HalfVector
except ImportError:  # pgvector < 0.4
    from pgvector.utils import HalfVector

__all__ = ["HalfVector", "vector_to_list"]


def vector_to_list(value: Any) -> list[float]:
    """A loaded ``vector`` or ``halfvec`` value as a list of floats."""
    if hasattr(value, "to_list"):
        return [float(x) for x in value.to_list()]
    return [float(x) for x in value.tolist()]
