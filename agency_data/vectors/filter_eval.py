"""Evaluating a parsed filter against a record in Python, with the SQL compiler's semantics.

Useful for checking records already in memory against a filter, and the reference that the
compiled SQL is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from agency_data.vectors.filter_ast import COLUMNS, And, Comparison, FilterNode, Not, Or

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
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
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
    # PostgreSQL LIKE: % any run, _ one character, backslash escapes the next character.
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch("".join(out), text, flags) is not None


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
    if COLUMNS[node.field.column or ""] == "uuid":
        wanted = [operand] if op == "$eq" else list(operand)
        return UUID(str(value)) in {UUID(str(item)) for item in wanted}
    if op == "$eq":
        return bool(value == operand)
    if op == "$in":
        return any(value == item for item in operand)
    if op == "$contains":
        return isinstance(value, str) and str(operand) in value
    if op in ("$like", "$ilike"):
        return _like(operand, value, ignore_case=op == "$ilike")
    return _ordered(value, op, operand)
