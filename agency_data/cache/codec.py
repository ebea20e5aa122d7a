"""Encoding cached values: JSON (orjson), compressed with zlib above a size threshold. Never pickle.

The first byte says how the rest is encoded, so the compression setting can change while old
entries are still in Redis. Values are JSON types after a round trip (tuples come back as
lists, datetimes and UUIDs as ISO strings); non-finite floats become null, as in JavaScript.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from agency_data.errors import ValidationError

__all__ = ["Codec"]

_JSON = b"j"
_ZLIB = b"z"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Codec:
    """Turns values into bytes for Redis and back."""

    def __init__(self, *, compression: bool, threshold: int, max_bytes: int) -> None:
        self.compression = compression
        self.threshold = threshold
        self.max_bytes = max_bytes

    def encode(self, value: Any) -> bytes:
        """``value`` as bytes, or a :class:`ValidationError` when it is not JSON-shaped or too big."""
        try:
            body = orjson.dumps(value, option=_OPTIONS)
        except TypeError as exc:
            raise ValidationError(
                f"cannot cache a value of this type ({exc}); cache JSON-shaped data "
                "(dicts, lists, strings, numbers, booleans, None, datetimes, UUIDs)",
                field="value",
            ) from None
        if self.compression and len(body) > self.threshold:
            packed = _ZLIB + zlib.compress(body, 1)
        else:
            packed = _JSON + body
        if len(packed) > self.max_bytes:
            raise ValidationError(
                f"the encoded value is {len(packed)} bytes, over cache.max_value_bytes "
                f"({self.max_bytes})",
                field="value",
            )
        return packed

    def decode(self, data: bytes) -> Any:
        """The value that :meth:`encode` turned into ``data``."""
        kind, body = data[:1], data[1:]
        if kind == _ZLIB:
            return orjson.loads(zlib.decompress(body))
        if kind == _JSON:
            return orjson.loads(body)
        raise ValueError(f"not a value this cache wrote (leading byte {kind!r})")
