"""Embedding ids: any non-empty string of up to :data:`MAX_ID_LENGTH` characters.

LangChain, LangGraph and most vector stores name documents by strings ("1", "doc-42", a path),
so a collection takes them as they are; ids are unique per tenant. A ``uuid.UUID`` is taken as
its canonical text (lowercase, hyphenated), which is also the form of the ids the layer makes
when none is given, and of the UUID ids stored before ids were strings. Strings are compared
exactly: ``"ABC"`` and ``"abc"`` are two ids.

Storing checks an id; looking one up never fails on its form: an id that could not have been
stored (empty, too long, with a NUL) is simply missing.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from agency_data.errors import ValidationError
from agency_data.inputs import as_items, brief, encodable

__all__ = ["MAX_ID_LENGTH", "lookup_id", "lookup_ids", "stored_id"]

MAX_ID_LENGTH = 512


def stored_id(value: Any, field: str) -> str:
    """``value`` as an id to store under, or a :class:`ValidationError` saying why not."""
    text = _text(value, field)
    if _storable(text):
        return text
    if not text:
        problem = "is empty"
    elif len(text) > MAX_ID_LENGTH:
        problem = f"is {len(text)} characters long; ids have at most {MAX_ID_LENGTH}"
    elif "\x00" in text:
        problem = "holds a NUL character, which PostgreSQL text cannot store"
    else:
        problem = "holds unpaired surrogates, which cannot be stored"
    raise ValidationError(f"{field} {brief(value)} {problem}", field=field)


def lookup_id(value: Any, field: str) -> str | None:
    """``value`` as an id to look up; None when no stored id can be it."""
    text = _text(value, field)
    return text if _storable(text) else None


def lookup_ids(values: Any, field: str) -> list[str]:
    """The ids among ``values`` (a list, tuple or other iterable) that could be stored ones."""
    found: list[str] = []
    for n, value in enumerate(as_items(values, field)):
        text = lookup_id(value, f"{field}[{n}]")
        if text is not None:
            found.append(text)
    return found


def _storable(text: str) -> bool:
    return 0 < len(text) <= MAX_ID_LENGTH and "\x00" not in text and encodable(text)


def _text(value: Any, field: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):  # a str subclass (an enum member, a DSN-like wrapper)
        return str.__str__(value)
    raise ValidationError(
        f"{field} {brief(value)} is not an id: ids are strings (or UUIDs), "
        f"not {type(value).__name__}",
        field=field,
    )
