"""Checking vectors before they reach the database: shape, dimension, finiteness, range."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agency_data.errors import ValidationError

__all__ = ["HALF_MAX", "INDEX_LIMITS", "MAX_DIMENSION", "as_matrix", "as_vector"]

MAX_DIMENSION = 16_000
# pgvector's limits for HNSW and IVFFlat indexes, by storage type (bit: binary quantization).
INDEX_LIMITS = {"vector": 2_000, "halfvec": 4_000, "bit": 64_000}
HALF_MAX = 65_504.0


def as_vector(
    value: Any, dimension: int, storage: str, where: str = "vector"
) -> npt.NDArray[np.float32]:
    """One vector as float32, checked like :func:`as_matrix`."""
    matrix = as_matrix([value], dimension, storage, where=where, single=True)
    row: npt.NDArray[np.float32] = matrix[0]
    return row


def as_matrix(
    values: Sequence[Any],
    dimension: int,
    storage: str,
    *,
    where: str = "vector",
    single: bool = False,
    offset: int = 0,
    items: str = "",
) -> npt.NDArray[np.float32]:
    """``values`` as an ``(n, dimension)`` float32 matrix, or a :class:`ValidationError`.

    The error names the first offending item (counting from ``offset``), as
    ``{items}[{index}].{where}``: wrong length, not numbers, NaN or infinite, or (for halfvec)
    beyond half precision's range.
    """
    try:
        raw = np.asarray(values)
        # Strings and booleans would be converted silently by numpy; only numbers are vectors.
        ok = raw.dtype.kind in "fiu" and raw.ndim == 2 and raw.shape[1] == dimension
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are caught below
            matrix = raw.astype(np.float32, copy=False) if ok else raw
    except (ValueError, TypeError):
        ok = False
    if not ok:
        for index, value in enumerate(values):
            _check_one(value, dimension, _label(where, index + offset, single, items))
        raise ValidationError(f"{where}: vectors must be sequences of numbers", field=where)
    finite = np.isfinite(matrix)
    if not finite.all():
        index = int(np.argmin(finite.all(axis=1)))
        raise ValidationError(
            f"{_label(where, index + offset, single, items)} holds NaN or an infinite value (or one beyond float32's range)",
            field=_label(where, index + offset, single, items),
        )
    if storage == "halfvec":
        too_big = np.abs(matrix) > HALF_MAX
        if too_big.any():
            index = int(np.argmax(too_big.any(axis=1)))
            raise ValidationError(
                f"{_label(where, index + offset, single, items)} has a value beyond half precision's ±{HALF_MAX:g}",
                field=_label(where, index + offset, single, items),
            )
    return matrix


def _label(where: str, index: int, single: bool, items: str = "") -> str:
    return where if single else f"{items}[{index}].{where}"


def _check_one(value: Any, dimension: int, label: str) -> None:
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise ValidationError(f"{label} is not a sequence of numbers", field=label)
    if len(value) == 0:
        raise ValidationError(f"{label} is empty", field=label)
    if len(value) != dimension:
        raise ValidationError(
            f"{label} has {len(value)} dimensions; this collection holds {dimension}", field=label
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise ValidationError(f"{label} is not a flat sequence of numbers", field=label) from None
    if array.ndim != 1:
        raise ValidationError(f"{label} is not a flat sequence of numbers", field=label)
    if array.dtype.kind not in "fiu":
        raise ValidationError(f"{label} holds something that is not a number", field=label)
