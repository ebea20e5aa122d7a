"""Checking input before it reaches a server: numbers, seconds, JSON values, limits, cursors.

Every public entry point checks its arguments with these, so bad input becomes a
:class:`ValidationError` naming the argument before anything is written.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import reprlib
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    "as_items",
    "as_list",
    "as_uuid",
    "brief",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_datetime",
    "check_int",
    "check_iterable",
    "check_limit",
    "check_mapping",
    "check_number",
    "check_seconds",
    "check_tenant",
    "check_text",
    "decode_cursor",
    "encodable",
    "encode_cursor",
    "encode_json",
    "encode_json_batch",
    "first_problem",
    "like_pattern",
    "located",
    "utf8_size",
    "validated",
]

MAX_PAGE = 1000
# The longest text a UUID is written as ("urn:uuid:" and braces included), and a cursor.
_UUID_TEXT = 45
_MAX_CURSOR = 200
_TENANT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
M = TypeVar("M", bound=pydantic.BaseModel)


def validated(model: type[M], values: dict[str, Any]) -> M:
    """``model`` built from ``values``, or a :class:`ValidationError` naming the bad field."""
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        field, problem = first_problem(exc)
        raise ValidationError(f"{field}: {problem}", field=field) from None


def first_problem(exc: pydantic.ValidationError) -> tuple[str | None, str]:
    """The dotted place (None at the top) and the message of pydantic's first complaint."""
    first = exc.errors(include_url=False, include_input=False)[0]
    return ".".join(str(part) for part in first["loc"]) or None, first["msg"]


@contextmanager
def located(where: str) -> Iterator[None]:
    """Re-raise the block's :class:`ValidationError` as one about a part of ``where``.

    ``type: ...`` raised for the fourth item of a batch becomes ``items[3].type: ...``, with
    the field ``items[3].type``, so a caller knows which item was wrong.
    """
    try:
        yield
    except ValidationError as exc:
        text = str(exc)
        if exc.field is not None and text.startswith(exc.field):
            raise ValidationError(f"{where}.{text}", field=f"{where}.{exc.field}") from None
        field = f"{where}.{exc.field}" if exc.field else where
        raise ValidationError(f"{where}: {text}", field=field) from None


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


def encode_json_batch(
    values: Sequence[Any], field: str, max_bytes: int, *, offset: int = 0
) -> list[bytes]:
    """Each of ``values`` as compact JSON (UTF-8 bytes), checked like :func:`encode_json`.

    For bulk writers, which send bytes: ``field`` names an item's value with ``{}`` for its
    index (``"items[{}].metadata"``), counting from ``offset``, and is formatted only for the
    error.
    """
    encoded: list[bytes] = []
    for index, value in enumerate(values):
        try:
            data = orjson.dumps(value)
        except TypeError:
            data = b""  # not JSON: encode_json below says why
        if (
            not data
            or (b"null" in data and _has_non_finite(value))
            or b"\\u0000" in data
            or len(data) > max_bytes
        ):
            data = encode_json(value, field.format(index + offset), max_bytes).encode()
        encoded.append(data)
    return encoded


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def check_tenant(tenant: Any) -> str:
    """``tenant`` if it is a valid tenant id."""
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ValidationError(
            f"tenant id {brief(tenant)} must be 1-64 letters, digits or _ . : -",
            field="tenant_id",
        )
    return tenant


def check_int(value: Any, field: str, low: int, high: int) -> int:
    """``value`` if it is an integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"{field} must be an integer from {low} to {high}, not {brief(value)}", field=field
        )
    return value


def check_seconds(
    value: Any, field: str, *, low: float = 0.0, high: float = 86_400.0 * 366
) -> float:
    """``value`` as float seconds if it is a finite number from ``low`` to ``high``.

    NaN and infinities are refused: a NaN compares false with every bound, so a loop waiting
    ``nan`` seconds would never end, and an infinite TTL overflows Redis's integer milliseconds.
    """
    if not _finite_in(value, low, high):
        raise ValidationError(
            f"{field} must be a number of seconds from {low:g} to {high:g}, not {brief(value)}",
            field=field,
        )
    return float(value)


def check_number(
    value: Any, field: str, *, low: float = -math.inf, high: float = math.inf
) -> float:
    """``value`` as a float if it is a finite number (not a bool) from ``low`` to ``high``.

    NaN is refused: it compares false with everything, so a filter holding it silently
    matches nothing (or everything).
    """
    if not _finite_in(value, low, high):
        bounds = "" if math.isinf(low) and math.isinf(high) else f" from {low:g} to {high:g}"
        raise ValidationError(
            f"{field} must be a finite number{bounds}, not {brief(value)}", field=field
        )
    return float(value)


def _finite_in(value: Any, low: float, high: float) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and low <= value <= high
    )


def check_datetime(value: Any, field: str) -> datetime:
    """``value`` if it is a datetime with a timezone.

    A naive datetime is refused rather than guessed at: PostgreSQL would read it in the
    session's time zone, so the same call would filter differently on another server.
    """
    if not isinstance(value, datetime):
        raise ValidationError(
            f"{field} must be a datetime with a timezone, not {brief(value)}", field=field
        )
    if value.utcoffset() is None:
        raise ValidationError(
            f"{field} is a naive datetime (no timezone), which would be read in the server's "
            "time zone; pass an aware one, such as datetime.now(UTC) or "
            "datetime(2024, 5, 1, tzinfo=UTC)",
            field=field,
        )
    return value


def check_text(
    value: Any, field: str, *, max_length: int = 10_000, max_bytes: int | None = None
) -> str:
    """``value`` if it is a string of at most ``max_length`` characters (and ``max_bytes``
    bytes of UTF-8, for text that goes into an index entry), without NUL or unpaired
    surrogates (which no encoding carries)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, not {brief(value)}", field=field)
    if len(value) > max_length:
        raise ValidationError(
            f"{field} is {len(value)} characters long; the limit is {max_length}", field=field
        )
    if "\x00" in value:
        raise ValidationError(
            f"{field} contains a NUL character, which PostgreSQL cannot store", field=field
        )
    if not value.isascii():
        size = utf8_size(value, field)
        if max_bytes is not None and size > max_bytes:
            raise ValidationError(
                f"{field} is {size} bytes long in UTF-8; the limit is {max_bytes}", field=field
            )
    return value


def encodable(text: str) -> bool:
    """Whether ``text`` can be encoded (holds no unpaired surrogates); ASCII at once."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_size(value: str, field: str) -> int:
    """How many bytes ``value`` takes in UTF-8; a :class:`ValidationError` when it holds
    unpaired surrogates (what a broken decode leaves), which no encoding can carry."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(
            f"{field} holds unpaired surrogates (such as {brief(value[:20])}), which cannot be "
            "stored or sent: decode the text it came from with errors='replace'",
            field=field,
        ) from None


def check_mapping(value: Any, field: str) -> dict[str, Any]:
    """``value`` as a dict if it is a mapping with string keys."""
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{field} must be a dict with string keys, not {brief(value)}", field=field
        )
    for key in value:
        if not isinstance(key, str):
            raise ValidationError(
                f"{field} has the key {brief(key)}; keys must be strings", field=field
            )
    return dict(value)


def check_bool(value: Any, field: str) -> bool:
    """``value`` if it is True or False (not merely truthy: ``"no"`` would read as yes)."""
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be True or False, not {brief(value)}", field=field)
    return value


def check_callable(value: Any, field: str) -> Any:
    """``value`` if it is a function (or other callable that is not a class)."""
    # A class is called to make an object, not to do the work asked for.
    if not callable(value) or isinstance(value, type):
        raise ValidationError(f"{field} must be a function, not {brief(value)}", field=field)
    return value


# Iterables that are one value, not a collection of items.
_SINGLE = (str, bytes, bytearray, memoryview, Mapping)


def as_items(value: Any, field: str, *, most: int | None = None) -> list[Any]:
    """The items of a list, tuple or other iterable, as a new list.

    None, strings, bytes, mappings (a dict is one item, not several) and things that cannot
    be iterated are refused, naming ``field``; so is an iterable of more than ``most`` items
    (read no further than that, so an endless generator cannot hang the caller).
    """
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, _SINGLE) or not isinstance(value, Iterable):
        raise ValidationError(_not_items(value, field), field=field)
    else:
        items = list(value if most is None else itertools.islice(value, most + 1))
    if most is not None and len(items) > most:
        raise ValidationError(
            f"{field} holds more than {most} items; send at most {most} in one batch", field=field
        )
    return items


def check_iterable(value: Any, field: str) -> Any:
    """``value`` if it is an iterable or async iterable of items (see :func:`as_items`)."""
    if isinstance(value, _SINGLE) or not isinstance(value, Iterable | AsyncIterable):
        raise ValidationError(_not_items(value, field), field=field)
    return value


def _not_items(value: Any, field: str) -> str:
    return f"{field} must be a list (or tuple) of items, not {brief(value)}"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlevel = 2


def brief(value: Any) -> str:
    """``value``'s repr for an error message: short however large or deeply nested, never failing."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"a {type(value).__name__}"


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
                f"{field} takes {kind.__name__} values, not {brief(item)}", field=field
            )
    return items


def as_uuid(value: Any, field: str = "id") -> UUID:
    """``value`` as a UUID, or a :class:`ValidationError`."""
    if isinstance(value, UUID):
        return value
    try:
        # Other UUID types (asyncpg's, uuid_utils') are accepted by their text.
        text = value if isinstance(value, str) else str(value)
        if len(text) <= _UUID_TEXT:
            return UUID(text)
    except Exception:  # noqa: BLE001 - any failure means "not a UUID", said below
        pass
    raise ValidationError(f"{field} {brief(value)} is not a valid id (a UUID)", field=field)


def as_choice(value: Any, choices: type[StrEnum], field: str) -> str:
    """``value`` as one of the enum's values, or a :class:`ValidationError` listing them."""
    # The members are strings: anything else is refused before the enum looks it up.
    return choices(check_choice(value, field, [c.value for c in choices])).value


def check_choice(value: Any, field: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of the ``allowed`` strings, or a :class:`ValidationError` listing them."""
    choices = list(allowed)
    if not isinstance(value, str) or value not in choices:
        raise ValidationError(
            f"{field} {brief(value)} is not one of: {', '.join(choices)}", field=field
        )
    return value


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with the user's own wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(created_at: datetime, id_: UUID) -> str:
    """An opaque cursor for the row after ``(created_at, id)`` in keyset order."""
    raw = json.dumps([created_at.isoformat(), str(id_)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any) -> tuple[datetime, UUID]:
    """The position an :func:`encode_cursor` cursor names."""
    try:
        if not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR:
            raise TypeError("not a cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = datetime.fromisoformat(created)
        if moment.utcoffset() is None:
            raise ValueError("naive")
        return moment, UUID(ident)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationError(
            f"cursor {brief(cursor)} is not one this library issued; pass next_cursor from a "
            "page, or None for the first page",
            field="cursor",
        ) from exc
