"""Bulk-write parameters in PostgreSQL's binary form, built a slice at a time with numpy.

``store_many`` sends each slice of rows as one ``INSERT ... SELECT FROM unnest(...)`` whose
parameters are whole columns: arrays of ids, texts, vectors and JSON. psycopg would adapt such
lists element by element in Python (a pgvector dumper call, a byte-order conversion and a
``struct.pack`` per vector); here the fixed-width arrays (ids, vectors) are numpy structured
arrays converted in one go, and only the short texts are joined element by element.

The binary form of a one-dimensional array: dimensions (1), a has-nulls flag, the element
type's oid, the length and the lower bound (1); then each element as a 32-bit length (-1 for
NULL) and its bytes. The statement casts each parameter (``%b::uuid[]``), so it is sent with
an unknown type and the server reads it as the array the cast names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from uuid import UUID

import numpy as np
import numpy.typing as npt
from psycopg.adapt import Dumper
from psycopg.pq import Format

__all__ = [
    "ArrayDumper",
    "BinaryArray",
    "jsonb_array",
    "random_ids",
    "text_array",
    "uuid_array",
    "vector_array",
]

# Built-in types' oids (fixed in PostgreSQL's catalog); pgvector's vary by database.
_UUID = 2950
_TEXT = 25
_JSONB = 3802
_JSONB_VERSION = b"\x01"
_NULL = b"\xff\xff\xff\xff"


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


def uuid_array(ids: Sequence[UUID]) -> BinaryArray:
    """``uuid[]`` of ``ids``."""
    elements = np.empty(len(ids), dtype=[("length", ">i4"), ("id", "V16")])
    elements["length"] = 16
    elements["id"] = np.frombuffer(b"".join([i.bytes for i in ids]), dtype="V16")
    return BinaryArray(_header(_UUID, len(ids)) + elements.tobytes())


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


def random_ids(count: int) -> list[UUID]:
    """``count`` random (version 4) UUIDs, as ``uuid.uuid4()`` makes them, from one read of
    the system's random source rather than one per id."""
    raw = np.frombuffer(bytearray(os.urandom(16 * count)), dtype=np.uint8).reshape(count, 16)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    data = raw.tobytes()
    return [UUID(bytes=data[i : i + 16]) for i in range(0, 16 * count, 16)]
