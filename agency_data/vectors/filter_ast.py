"""The metadata filter language, parsed and checked into a small tree.

A filter is a JSON-like dict::

    {"kind": "fact"}                                   # shorthand for {"kind": {"$eq": "fact"}}
    {"score": {"$gte": 0.5, "$lt": 0.9}}               # several operators on one field: all hold
    {"$or": [{"tags": {"$contains": "red"}}, {"lang": {"$in": ["en", "fr"]}}]}
    {"$not": {"source": {"$like": "%.pdf"}}}
    {"author.name": {"$exists": True}}                 # dots reach into nested objects
    {"created_at": {"$gte": datetime(2025, 1, 1, tzinfo=UTC)}}   # the record's own column

Fields are metadata keys, except the record's own columns (``id``, ``entity_type``,
``entity_id``, ``content``, ``created_at``); ``metadata.<key>`` always means metadata.
Comparisons are typed by the value given: numbers compare as numbers, strings as strings (by
code point), datetimes as instants; a value of another type never matches. ``$ne`` and ``$nin``
also match records where the field is missing (they are ``$not`` of ``$eq`` and ``$in``).

The same tree is compiled to SQL (:mod:`.filter_sql`) and evaluated in Python
(:mod:`.filter_eval`); the tests hold the two to the same answers.

A filter is bounded in depth, parts, values and characters (the ``MAX_*`` below), counted as
they appear, so that a small object reused many times cannot grow into a huge query; nesting is
refused before it is followed, never by running out of Python's stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, TypeAlias
from uuid import UUID

from agency_data.errors import ValidationError
from agency_data.inputs import encodable

__all__ = [
    "ARRAY_INDEX",
    "COLUMNS",
    "And",
    "Comparison",
    "Field",
    "FilterNode",
    "Not",
    "Or",
    "parse_filter",
]

# Every part and value is counted where it appears: a list or dict used twice counts twice,
# since it is compiled (and sent) twice.
MAX_DEPTH = 12  # nesting of $and / $or / $not, at the filter's level or a field's
MAX_NODES = 256  # conditions, and the $and / $or / $not that combine them
MAX_LIST = 1000  # values in one $in / $nin
MAX_VALUES = 10_000  # values in all, counting each element of a list or object
MAX_STRING = 10_000  # characters in one string
MAX_CHARS = 1_000_000  # characters in all the filter's strings together

ColumnKind = Literal["text", "timestamptz"]
COLUMNS: dict[str, ColumnKind] = {
    "id": "text",
    "entity_type": "text",
    "entity_id": "text",
    "content": "text",
    "created_at": "timestamptz",
}
Operator = Literal[
    "$eq", "$gt", "$gte", "$lt", "$lte", "$in", "$exists", "$contains", "$like", "$ilike"
]
_ORDERING = ("$gt", "$gte", "$lt", "$lte")
_KEY = re.compile(r"^[^\x00]{1,256}$")
# A path step that PostgreSQL's ``#>`` reads as an array position when it meets an array
# (strtol's syntax: leading blanks, a sign, ASCII digits); any other step only names a key.
ARRAY_INDEX = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


@dataclass(frozen=True)
class Field:
    """What a comparison looks at: one of the record's columns, or a path into metadata."""

    column: str | None
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.column or "metadata." + ".".join(self.path)

    @property
    def keys_only(self) -> bool:
        """True for a metadata path that can only pass through objects, never array elements."""
        return self.column is None and not any(ARRAY_INDEX.fullmatch(p) for p in self.path)


@dataclass(frozen=True)
class Comparison:
    """``field <op> value``. ``value`` is a JSON scalar, a datetime, or a tuple of them."""

    field: Field
    op: Operator
    value: Any


@dataclass(frozen=True)
class And:
    """Every child holds (an empty And always holds)."""

    children: tuple[FilterNode, ...]


@dataclass(frozen=True)
class Or:
    """At least one child holds (an empty Or never holds)."""

    children: tuple[FilterNode, ...]


@dataclass(frozen=True)
class Not:
    """The child does not hold."""

    child: FilterNode


FilterNode: TypeAlias = "Comparison | And | Or | Not"


def parse_filter(raw: Any) -> FilterNode:
    """Check ``raw`` and turn it into a tree; :class:`ValidationError` says what is wrong."""
    return _Parser().filter(raw, depth=0, where="filter")


def _fail(where: str, message: str) -> ValidationError:
    return ValidationError(f"{where}: {message}", field=where)


class _Parser:
    """One filter's parse: what it has used of the limits so far.

    Depth is checked before each step down, so hostile nesting is refused long before
    Python's recursion limit; counts grow as parts are met, so a huge filter fails early.
    """

    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0
        self.chars = 0

    def node(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(where, f"the filter has more than {MAX_NODES} parts; simplify it")

    def value(self, where: str, count: int = 1) -> None:
        self.values += count
        if self.values > MAX_VALUES:
            raise _fail(where, f"the filter holds more than {MAX_VALUES} values in all; use fewer")

    def text(self, value: str, where: str) -> None:
        if len(value) > MAX_STRING or "\x00" in value or not encodable(value):
            raise _fail(
                where,
                f"strings in filters are at most {MAX_STRING} characters, without NUL or "
                "unpaired surrogates",
            )
        self.chars += len(value)
        if self.chars > MAX_CHARS:
            raise _fail(where, f"the filter's strings hold more than {MAX_CHARS} characters in all")

    def filter(self, raw: Any, *, depth: int, where: str) -> FilterNode:
        if not isinstance(raw, dict):
            raise _fail(where, f"a filter is a dict, not {type(raw).__name__}")
        children: list[FilterNode] = []
        for key, value in raw.items():
            if not isinstance(key, str):
                raise _fail(where, f"keys are strings, not {key!r}")
            inner = f"{where}.{key}" if where != "filter" else key
            if key in ("$and", "$or"):
                if not isinstance(value, list | tuple):
                    raise _fail(inner, f"{key} takes a list of filters")
                self.node(inner)
                _deeper(depth, inner)
                parsed = tuple(
                    self.filter(item, depth=depth + 1, where=f"{inner}[{i}]")
                    for i, item in enumerate(value)
                )
                children.append(And(parsed) if key == "$and" else Or(parsed))
            elif key == "$not":
                self.node(inner)
                _deeper(depth, inner)
                children.append(Not(self.filter(value, depth=depth + 1, where=inner)))
            elif key.startswith("$"):
                raise _fail(inner, f"unknown operator {key}; use $and, $or, $not at this level")
            else:
                children.extend(self.conditions(_field(key, inner), value, depth, inner))
        if len(children) == 1:
            return children[0]
        self.node(where)
        return And(tuple(children))

    def conditions(self, field: Field, value: Any, depth: int, where: str) -> list[FilterNode]:
        if not (
            isinstance(value, dict)
            and value
            and all(isinstance(k, str) and k.startswith("$") for k in value)
        ):
            # A bare value means equality; a dict without operators is compared as a whole.
            return [self.comparison(field, "$eq", value, where)]
        nodes: list[FilterNode] = []
        for op, operand in value.items():
            inner = f"{where}.{op}"
            if op == "$ne":
                nodes.append(self.negation(self.comparison(field, "$eq", operand, inner), inner))
            elif op == "$nin":
                nodes.append(self.negation(self.comparison(field, "$in", operand, inner), inner))
            elif op == "$not":
                _deeper(depth, inner)
                sub = self.conditions(field, operand, depth + 1, inner)
                if len(sub) > 1:
                    self.node(inner)
                nodes.append(self.negation(sub[0] if len(sub) == 1 else And(tuple(sub)), inner))
            elif op in ("$eq", "$in", "$exists", "$contains", "$like", "$ilike", *_ORDERING):
                nodes.append(self.comparison(field, op, operand, inner))
            else:
                raise _fail(
                    inner,
                    f"unknown operator {op}; known: $eq $ne $gt $gte $lt $lte $in $nin $exists "
                    "$contains $like $ilike $not",
                )
        return nodes

    def negation(self, node: FilterNode, where: str) -> Not:
        self.node(where)
        return Not(node)

    def comparison(self, field: Field, op: Operator, operand: Any, where: str) -> Comparison:
        self.node(where)
        kind = COLUMNS.get(field.column or "")
        if op == "$exists":
            if not isinstance(operand, bool):
                raise _fail(where, "$exists takes true or false")
            return Comparison(field, op, operand)
        if op == "$in":
            if not isinstance(operand, list | tuple | set | frozenset):
                raise _fail(where, "$in and $nin take a list")
            if len(operand) > MAX_LIST:
                raise _fail(where, f"$in lists hold at most {MAX_LIST} values")
            values = tuple(self.operand(item, kind, where, allow_json=True) for item in operand)
            if kind is None and any(isinstance(v, datetime) for v in values):
                raise _fail(where, "$in compares metadata as JSON; use $gte/$lte for datetimes")
            return Comparison(field, op, values)
        if op in ("$like", "$ilike"):
            if not isinstance(operand, str):
                raise _fail(where, f"{op} takes a string pattern")
            if kind not in (None, "text"):
                raise _fail(where, f"{op} works on text, not on {field}")
            trailing = len(operand) - len(operand.rstrip("\\"))
            if trailing % 2:
                raise _fail(
                    where,
                    f"{op} pattern ends with the escape character \\; double it for a literal one",
                )
            return Comparison(field, op, self.operand(operand, kind, where))
        if op == "$contains":
            if isinstance(operand, dict | list | tuple) or operand is None:
                raise _fail(where, "$contains takes a string, number or boolean")
            if kind not in (None, "text"):
                raise _fail(where, f"$contains works on text or arrays, not on {field}")
            return Comparison(field, op, self.operand(operand, kind, where))
        if op in _ORDERING:
            value = self.operand(operand, kind, where)
            if value is None or isinstance(value, bool):
                raise _fail(where, f"{op} compares numbers, strings or datetimes, not {operand!r}")
            return Comparison(field, op, value)
        return Comparison(field, op, self.operand(operand, kind, where, allow_json=True))

    def operand(
        self, value: Any, kind: ColumnKind | None, where: str, *, allow_json: bool = False
    ) -> Any:
        self.value(where)
        if allow_json and kind is None and isinstance(value, dict | list):
            self.json(value, where)
            return value
        return _value(value, kind, where, self)

    def json(self, value: dict[str, Any] | list[Any], where: str) -> None:
        # A stack, not recursion: the depth limit is checked before each step down.
        pending: list[tuple[Any, int]] = [(value, 0)]
        while pending:
            item, depth = pending.pop()
            if isinstance(item, dict | list):
                if depth >= MAX_DEPTH:
                    raise _fail(where, "the value nests too deep")
                self.value(where, len(item))
                if isinstance(item, dict):
                    for key, inner in item.items():
                        if not isinstance(key, str):
                            raise _fail(where, "object keys must be strings")
                        self.text(key, where)
                        pending.append((inner, depth + 1))
                else:
                    pending.extend((inner, depth + 1) for inner in item)
            elif isinstance(item, str):
                self.text(item, where)
            elif isinstance(item, float) and not math.isfinite(item):
                raise _fail(where, "NaN and infinities cannot be compared")
            elif not (isinstance(item, int | float | bool) or item is None):
                raise _fail(where, f"cannot compare with a {type(item).__name__}")


def _deeper(depth: int, where: str) -> None:
    if depth >= MAX_DEPTH:
        raise _fail(where, f"filters nest deeper than {MAX_DEPTH} levels")


def _field(key: str, where: str) -> Field:
    if not _KEY.match(key) or not encodable(key):
        raise _fail(where, "field names are 1-256 characters without NUL or unpaired surrogates")
    if key in COLUMNS:
        return Field(column=key)
    path = key.removeprefix("metadata.") if key.startswith("metadata.") else key
    parts = tuple(path.split("."))
    if any(part == "" for part in parts):
        raise _fail(where, f"{key!r} has an empty path segment")
    return Field(column=None, path=parts)


def _value(value: Any, kind: ColumnKind | None, where: str, parser: _Parser) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, "NaN and infinities cannot be compared")
    if isinstance(value, str):
        parser.text(value, where)
    if isinstance(value, str | int | float | bool) or value is None:
        _check_column_value(value, kind, where)
        return value
    raise _fail(where, f"cannot compare with a {type(value).__name__}")


def _check_column_value(value: Any, kind: ColumnKind | None, where: str) -> None:
    if kind == "text" and not isinstance(value, str):
        raise _fail(where, f"this column holds text, not {value!r}")
    elif kind == "timestamptz":
        raise _fail(where, "compare created_at with a datetime")
