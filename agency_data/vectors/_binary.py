"""Bulk-write parameters in PostgreSQL's binary form, built a slice at a time with numpy.

``store_many`` sends each slice of rows as one ``INSERT ... SELECT FROM unnest(...)`` whose
parameters are whole columns: arrays of ids, texts, vectors and JSON. psycopg would adapt such
lists element by element in Python (a pgvector dumper call, a byte-order conversion and a
``struct.pack`` per vector); here the fixed-width arrays (vectors) are numpy structured
arrays converted in one go, and only the short texts are joined element by element.

The binary form of a one-dimensional array: dimensions (1), a has-nulls flag, the element
type's oid, the length and the lower bound (1); then each element as a 32-bit length (-1 for
NULL) and its bytes. The statement casts each parameter (``%b::text[]``), so it is sent with
an unknown type and the server reads it as the array the cast names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from psycopg.adapt import Dumper
from psycopg.pq import Format

__all__ = [
    "ArrayDumper",
    "BinaryArray",
    "id_array",
    "jsonb_array",
    "random_ids",
    "text_array",
    "vector_array",
]

# Built-in types' oids (fixed in PostgreSQL's catalog); pgvector's vary by database.
_TEXT = 25
_JSONB = 3802
_JSONB_VERSION = b"\x01"
_NULL = b"\xff\xff\xff\xff"
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Where a UUID's 32 hex digits go in its 36-character text (the rest are hyphens).
_DIGIT_PLACES = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


class BinaryArray:
    """An array parameter already in PostgreSQL's binary form (see the module's docstring)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ArrayDumper(Dumper):
    """Sends a :class:`BinaryArray` as it is, leaving its type to the query's cast."""

    format = Format.BINARY
    oid = 0  # unknown: the server takes the type from the cast in the query

    def dump(self, obj: BinaryArray) -> bytes:
        """The array's bytes, unchanged."""
        return obj.data


def _header(element_oid: int, count: int, nulls: bool = False) -> bytes:
    return b"".join(
        (
            (1).to_bytes(4, "big"),
            int(nulls).to_bytes(4, "big"),
            element_oid.to_bytes(4, "big"),
            count.to_bytes(4, "big"),
            (1).to_bytes(4, "big"),
        )
    )


def id_array(ids: Sequence[str]) -> BinaryArray:
    """``text[]`` of embedding ids (never NULL, and unlike other texts never repeated)."""
    parts = [_header(_TEXT, len(ids))]
    for id_ in ids:
        data = id_.encode()
        parts.append(len(data).to_bytes(4, "big") + data)
    return BinaryArray(b"".join(parts))


@lru_cache(maxsize=64)
def _vector_elements(storage: str, dimension: int) -> np.dtype[np.void]:
    # pgvector's binary form: the dimension and an unused int16, then the values (float4 for
    # vector, float2 for halfvec), all big-endian.
    value = ">f2" if storage == "halfvec" else ">f4"
    return np.dtype(
        [
            ("length", ">i4"),
            ("dimension", ">u2"),
            ("unused", ">u2"),
            ("values", value, (dimension,)),
        ]
    )


def vector_array(matrix: npt.NDArray[np.float32], storage: str, element_oid: int) -> BinaryArray:
    """``vector[]`` (or ``halfvec[]``) of the rows of ``matrix``, already checked: finite, and
    within half precision's range for halfvec. ``element_oid`` is the type's in this database."""
    count, dimension = matrix.shape
    dtype = _vector_elements(storage, dimension)
    elements = np.empty(count, dtype=dtype)
    elements["length"] = dtype.itemsize - 4
    elements["dimension"] = dimension
    elements["unused"] = 0
    elements["values"] = matrix
    return BinaryArray(_header(element_oid, count) + elements.tobytes())


def text_array(values: Sequence[str | None], encoding: str = "utf-8") -> BinaryArray:
    """``text[]`` of ``values`` (None for NULL), in the connection's ``encoding``."""
    count = len(values)
    if values.count(None) == count:
        return BinaryArray(_header(_TEXT, count, True) + _NULL * count)
    known: dict[str, bytes] = {}  # a batch often repeats a few values (entity types)
    parts = [_header(_TEXT, count, None in values)]
    for value in values:
        if value is None:
            parts.append(_NULL)
            continue
        element = known.get(value)
        if element is None:
            data = value.encode(encoding)
            element = len(data).to_bytes(4, "big") + data
            if len(known) < 64:
                known[value] = element
        parts.append(element)
    return BinaryArray(b"".join(parts))


def jsonb_array(documents: Sequence[bytes]) -> BinaryArray:
    """``jsonb[]`` of JSON texts (UTF-8, as psycopg sends JSON whatever the encoding)."""
    parts = [_header(_JSONB, len(documents))]
    for document in documents:
        parts += ((len(document) + 1).to_bytes(4, "big"), _JSONB_VERSION, document)
    return BinaryArray(b"".join(parts))


def random_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs' texts, as ``str(uuid.uuid4())`` makes them, from one
    read of the system's random source and one numpy pass (a seventh of the cost of the
    ``uuid`` module's objects)."""
    raw = np.frombuffer(bytearray(os.urandom(16 * count)), dtype=np.uint8).reshape(count, 16)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = np.empty((count, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    text = np.full((count, 36), ord("-"), dtype=np.uint8)
    text[:, _DIGIT_PLACES] = digits
    joined = text.tobytes().decode("ascii")
    return [joined[i : i + 36] for i in range(0, 36 * count, 36)]
