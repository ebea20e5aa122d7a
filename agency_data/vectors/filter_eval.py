"""Evaluating a parsed filter against a record in Python, with the SQL compiler's semantics.

Useful for checking records already in memory against a filter, and the reference that the
compiled SQL is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from agency_data.vectors.filter_ast import (
    ARRAY_INDEX,
    And,
    Comparison,
    FilterNode,
    Not,
    Or,
)

__all__ = ["json_equal", "matches"]

_MISSING = object()
_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
)


def matches(node: FilterNode, record: Mapping[str, Any]) -> bool:
    """True when ``record`` (its columns plus a ``metadata`` dict) satisfies ``node``."""
    if isinstance(node, And):
        return all(matches(child, record) for child in node.children)
    if isinstance(node, Or):
        return any(matches(child, record) for child in node.children)
    if isinstance(node, Not):
        return not matches(node.child, record)
    if node.field.column is not None:
        return _column(node, record.get(node.field.column, _MISSING))
    return _metadata(node, _lookup(record.get("metadata") or {}, node.field.path))


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, numbers compare by value, containers deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and Decimal(repr(a)) == Decimal(repr(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    current = document
    for part in path:
        if isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list):
            # As PostgreSQL's #> reads a position: Python's int() would also take "1_0" or "1 ".
            if not ARRAY_INDEX.fullmatch(part):
                return _MISSING
            try:
                current = current[int(part)]
            except IndexError:
                return _MISSING
        else:
            return _MISSING
    return current


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not _ISO.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _like(pattern: str, text: str, *, ignore_case: bool) -> bool:
    """PostgreSQL's LIKE: ``%`` any run, ``_`` one character, backslash escapes the next one.

    Matched piece by piece without backtracking: the pieces between ``%`` are placed leftmost,
    first to last, which finds a match whenever there is one. Time grows with the text times
    the pattern at worst, never exponentially (a regex's ``.*`` would, on ``%a%a%a...b``).
    """
    if ignore_case:
        pattern, text = _lower(pattern), _lower(text)
    pieces = _pieces(pattern)
    if len(pieces) == 1:
        return pieces[0].size == len(text) and pieces[0].fits(text, 0)
    first, *middle, last = pieces
    end = len(text) - last.size
    if first.size > end or not first.fits(text, 0) or not last.fits(text, end):
        return False
    at = first.size
    for piece in middle:
        found = piece.find(text, at, end)
        if found < 0:
            return False
        at = found + piece.size
    return True


@dataclass(frozen=True, slots=True)
class _Piece:
    """Part of a LIKE pattern between two ``%``: a plain string, or (with ``_``) a regex.

    The regex is literal characters and ``.`` only, of fixed length: trying it at one place
    costs at most its length, so searching is never worse than text times piece.
    """

    size: int
    literal: str | None
    regex: re.Pattern[str] | None

    def fits(self, text: str, at: int) -> bool:
        """True when the piece matches ``text`` from ``at`` (which leaves room for it)."""
        if self.regex is None:
            return text.startswith(self.literal or "", at)
        return self.regex.match(text, at) is not None

    def find(self, text: str, start: int, end: int) -> int:
        """Where the piece first fits inside ``text[start:end]``, or -1."""
        if self.regex is None:
            return text.find(self.literal or "", start, end)
        found = self.regex.search(text, start, end)
        return -1 if found is None else found.start()


def _pieces(pattern: str) -> list[_Piece]:
    """The pattern cut at each unescaped ``%``: always one more piece than there are ``%``."""
    cut: list[list[str | None]] = [[]]  # None stands for "_"
    chars = iter(pattern)
    for char in chars:
        if char == "%":
            cut.append([])
        elif char == "_":
            cut[-1].append(None)
        else:
            cut[-1].append(next(chars, "\\") if char == "\\" else char)
    pieces = []
    for piece in cut:
        if None in piece:
            regex = "".join("." if c is None else re.escape(c) for c in piece)
            pieces.append(_Piece(len(piece), None, re.compile(regex, re.DOTALL)))
        else:
            pieces.append(_Piece(len(piece), "".join(c or "" for c in piece), None))
    return pieces


def _lower(text: str) -> str:
    # Character by character, as PostgreSQL's ILIKE lowers each character on its own: no
    # context rules (Greek final sigma), and one character stays one ("İ" becomes "i").
    if text.isascii():
        return text.lower()
    return "".join(c.lower()[0] for c in text)


def _ordered(value: Any, op: str, bound: Any) -> bool:
    if isinstance(bound, datetime):
        left = _as_datetime(value) if isinstance(value, str | datetime) else None
        if left is None:
            return False
        return _compare(left, op, bound)
    if isinstance(bound, str):
        return isinstance(value, str) and _compare(value, op, bound)
    if not _is_number(value):
        return False
    return _compare(Decimal(repr(value)), op, Decimal(repr(bound)))


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "$gt":
        return bool(left > right)
    if op == "$gte":
        return bool(left >= right)
    if op == "$lt":
        return bool(left < right)
    return bool(left <= right)


def _metadata(node: Comparison, value: Any) -> bool:
    op, operand = node.op, node.value
    if op == "$exists":
        return bool((value is not _MISSING) == operand)
    if value is _MISSING:
        return False
    if op == "$eq":
        if isinstance(operand, datetime):
            left = _as_datetime(value) if isinstance(value, str) else None
            return left is not None and left == operand
        return json_equal(value, operand)
    if op == "$in":
        return any(json_equal(value, item) for item in operand)
    if op == "$contains":
        if isinstance(value, list):
            return any(json_equal(item, operand) for item in value)
        return isinstance(value, str) and isinstance(operand, str) and operand in value
    if op in ("$like", "$ilike"):
        return isinstance(value, str) and _like(operand, value, ignore_case=op == "$ilike")
    return _ordered(value, op, operand)


def _column(node: Comparison, value: Any) -> bool:
    op, operand = node.op, node.value
    if op == "$exists":
        return bool((value is not _MISSING and value is not None) == operand)
    if value is _MISSING or value is None:
        return False
    if op == "$eq":
        return bool(value == operand)
    if op == "$in":
        return any(value == item for item in operand)
    if op == "$contains":
        return isinstance(value, str) and str(operand) in value
    if op in ("$like", "$ilike"):
        return _like(operand, value, ignore_case=op == "$ilike")
    return _ordered(value, op, operand)
