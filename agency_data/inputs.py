"""Checking input before it reaches a server: numbers, seconds, JSON values, limits, cursors.

Every public entry point checks its arguments with these, so bad input becomes a
:class:`ValidationError` naming the argument before anything is written.
"""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import orjson
import pydantic

from agency_data.errors import ValidationError

__all__ = [
    "MAX_PAGE",
    "as_choice",
    "as_list",
    "as_uuid",
    "check_int",
    "check_limit",
    "check_seconds",
    "check_tenant",
    "decode_cursor",
    "encode_cursor",
    "encode_json",
    "like_pattern",
    "validated",
]

MAX_PAGE = 1000
_TENANT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
M = TypeVar("M", bound=pydantic.BaseModel)


def validated(model: type[M], values: dict[str, Any]) -> M:
    """``model`` built from ``values``, or a :class:`ValidationError` naming the bad field."""
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise ValidationError(f"{field}: {first['msg']}", field=field) from None


def encode_json(value: Any, field: str, max_bytes: int) -> str:
    """``value`` as compact JSON text, refusing NaN, infinities, odd types and oversize documents.

    orjson does the work (several times faster than the standard library); it writes NaN and
    infinities as null, so a document containing null is checked for them before it passes.
    Datetimes, dates and UUIDs become ISO strings.
    """
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise ValidationError(
            f"{field} is not valid JSON ({exc}); use dicts with string keys, lists, strings, "
            "finite numbers, booleans and None",
            field=field,
        ) from None
    if b"null" in data and _has_non_finite(value):
        raise ValidationError(
            f"{field} holds NaN or an infinity, which JSON cannot carry", field=field
        )
    if b"\\u0000" in data:
        raise ValidationError(
            f"{field} contains a NUL character, which PostgreSQL cannot store", field=field
        )
    if len(data) > max_bytes:
        raise ValidationError(
            f"{field} is {len(data)} bytes of JSON, over the limit of {max_bytes} "
            "(postgresql.max_json_bytes); store large payloads elsewhere and keep a reference",
            field=field,
        )
    return data.decode()


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant id."""
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ValidationError(
            f"tenant id {tenant!r} must be 1-64 letters, digits or _ . : -", field="tenant_id"
        )
    return tenant


def check_int(value: Any, field: str, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"{field} must be an integer from {low} to {high}, not {_short(value)}", field=field
        )
    return value


def check_seconds(
    value: Any, field: str, *, low: float = 0.0, high: float = 86_400.0 * 366
) -> float:
    """``value`` as float seconds if it is a finite number from ``low`` to ``high``.

    NaN and infinities are refused: a NaN compares false with every bound, so a loop waiting
    ``nan`` seconds would never end, and an infinite TTL overflows Redis's integer milliseconds.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValidationError(
            f"{field} must be a number of seconds from {low:g} to {high:g}, not {_short(value)}",
            field=field,
        )
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_limit(limit: int) -> int:
    """``limit`` if it is a page size we serve."""
    return check_int(limit, "limit", 1, MAX_PAGE)


def as_list(value: Any, field: str, kind: type) -> list[Any] | None:
    """One value or several, as a list of ``kind`` (None stays None)."""
    if value is None:
        return None
    items = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    for item in items:
        if not isinstance(item, kind):
            raise ValidationError(
                f"{field} takes {kind.__name__} values, not {item!r}", field=field
            )
    return items


def as_uuid(value: Any, field: str = "id") -> UUID:
    """``value`` as a UUID, or a :class:`ValidationError`."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ValidationError(
            f"{field} {value!r} is not a valid id (a UUID)", field=field
        ) from None


def as_choice(value: Any, choices: type[StrEnum], field: str) -> str:
    """``value`` as one of the enum's values, or a :class:`ValidationError` listing them."""
    try:
        return choices(value).value
    except ValueError:
        allowed = ", ".join(c.value for c in choices)
        raise ValidationError(f"{field} {value!r} is not one of: {allowed}", field=field) from None


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with the user's own wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(created_at: datetime, id_: UUID) -> str:
    """An opaque cursor for the row after ``(created_at, id)`` in keyset order."""
    raw = json.dumps([created_at.isoformat(), str(id_)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The position an :func:`encode_cursor` cursor names."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(created), UUID(ident)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValidationError(
            f"cursor {cursor[:40]!r} is not one this library issued; pass next_cursor from a page",
            field="cursor",
        ) from exc
