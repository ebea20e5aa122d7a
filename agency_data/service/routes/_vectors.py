"""Vectors as the API takes them: JSON arrays, or base64 of little-endian float32 or float16.

Base64 is several times smaller and faster to parse than JSON arrays of decimals. Decoding
checks only what the encoding itself can get wrong (the base64, the byte count); the library
checks the rest (dimension, NaN and infinities, half precision's range) and names the item.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agency_data.errors import ValidationError

__all__ = ["Encoding", "RawVector", "decode_vector"]

Encoding = Literal["json", "float32", "float16"]
"""How request vectors are written: JSON arrays, or base64 of little-endian float32/float16."""

RawVector = list[float] | str
"""A vector as a request carries it: an array of numbers, or a base64 string."""

_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


def decode_vector(
    value: RawVector, encoding: Encoding, field: str
) -> list[float] | npt.NDArray[np.float32]:
    """``value`` as numbers: a JSON array as it is, a base64 string decoded to float32."""
    dtype = _DTYPES.get(encoding)
    if dtype is None:
        if isinstance(value, str):
            raise ValidationError(
                f"{field} is a string, but encoding is json: send an array of numbers, or set "
                "encoding to float32 or float16 for base64",
                field=field,
            )
        return value
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} is an array, but encoding is {encoding}: send base64 of little-endian "
            f"{encoding} values, or set encoding to json",
            field=field,
        )
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{field} is not valid base64", field=field) from None
    if not raw or len(raw) % dtype.itemsize:
        raise ValidationError(
            f"{field} decodes to {len(raw)} bytes: {encoding} vectors need a positive "
            f"multiple of {dtype.itemsize}",
            field=field,
        )
    decoded: npt.NDArray[np.float32] = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    return decoded
