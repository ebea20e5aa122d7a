"""The filter language's limits: every part and value counted where it appears, deep input
refused with a ValidationError (never a RecursionError), and the limits themselves usable."""

from __future__ import annotations

from typing import Any

import pytest

from agency_data import ValidationError
from agency_data.vectors.filter_ast import (
    MAX_CHARS,
    MAX_DEPTH,
    MAX_LIST,
    MAX_NODES,
    MAX_STRING,
    MAX_VALUES,
    parse_filter,
)

SHARED = list(range(MAX_LIST))  # one list, used many times over


def field_not(levels: int, inner: Any) -> dict[str, Any]:
    """``{"a": {"$not": {"$not": ... inner}}}``, ``levels`` deep."""
    for _ in range(levels):
        inner = {"$not": inner}
    return {"a": inner}


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 200, 5_000, 100_000])
def test_field_level_not_counts_against_the_depth(levels: int) -> None:
    with pytest.raises(ValidationError, match="deeper than"):
        parse_filter(field_not(levels, {"$eq": 1}))


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5_000, 100_000])
def test_filter_level_nesting_is_refused(levels: int) -> None:
    raw: dict[str, Any] = {"a": 1}
    for i in range(levels):
        raw = {"$and": [raw]} if i % 3 == 0 else {"$or": [raw]} if i % 3 == 1 else {"$not": raw}
    with pytest.raises(ValidationError, match="deeper than"):
        parse_filter(raw)


def test_both_kinds_of_nesting_add_up() -> None:
    half = MAX_DEPTH // 2
    parse_filter(_filter_not(half, field_not(MAX_DEPTH - half, {"$eq": 1})))
    with pytest.raises(ValidationError, match="deeper than"):
        parse_filter(_filter_not(half, field_not(MAX_DEPTH - half + 1, {"$eq": 1})))


def _filter_not(levels: int, inner: dict[str, Any]) -> dict[str, Any]:
    for _ in range(levels):
        inner = {"$not": inner}
    return inner


def test_a_filter_that_contains_itself_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["$not"] = loop
    with pytest.raises(ValidationError, match="deeper than"):
        parse_filter(loop)
    operators: dict[str, Any] = {}
    operators["$not"] = operators
    with pytest.raises(ValidationError, match="deeper than"):
        parse_filter({"a": operators})
    values: list[Any] = []
    values.append(values)
    with pytest.raises(ValidationError, match="nests too deep"):
        parse_filter({"a": {"$in": [values]}})


def test_a_shared_list_counts_each_time_it_appears() -> None:
    # 200 conditions, each with the same 1,000 values: 200,000 values to compile and send.
    with pytest.raises(ValidationError, match=f"more than {MAX_VALUES} values"):
        parse_filter({"$or": [{"a": {"$in": SHARED}}] * 200})
    with pytest.raises(ValidationError, match=f"more than {MAX_VALUES} values"):
        parse_filter({"$and": [{"a": {"$nin": SHARED}, "b": {"$in": SHARED}}] * 6})


def test_a_shared_list_through_many_levels_is_refused() -> None:
    # The tester's case: one 1,000-value list reused at each of 100 field-level $not levels.
    level: dict[str, Any] = {"$in": SHARED, "$nin": SHARED}
    for _ in range(100):
        level = {"$in": SHARED, "$nin": SHARED, "$not": level}
    with pytest.raises(ValidationError, match=f"more than {MAX_VALUES} values"):
        parse_filter({"a": level})


def test_values_inside_json_values_count() -> None:
    with pytest.raises(ValidationError, match="values"):
        parse_filter({"a": list(range(MAX_VALUES + 1))})
    shared = {str(i): i for i in range(MAX_LIST)}
    with pytest.raises(ValidationError, match="values"):
        parse_filter({"$or": [{"a": {"$in": [shared]}}] * 20})


def test_strings_are_bounded_one_by_one_and_in_all() -> None:
    long = "x" * MAX_STRING
    parse_filter({"a": long})
    with pytest.raises(ValidationError, match="at most"):
        parse_filter({"a": long + "x"})
    with pytest.raises(ValidationError, match="at most"):
        parse_filter({"a": {"$in": [[long + "x"]]}})  # inside a JSON value too
    with pytest.raises(ValidationError, match="at most"):
        parse_filter({"a": {long + "x": 1}})  # and its keys
    with pytest.raises(ValidationError, match="characters in all"):
        parse_filter({"$or": [{"a": {"$in": [long] * 20}}] * (MAX_CHARS // MAX_STRING // 20 + 1)})


def test_nul_is_refused_anywhere_in_a_value() -> None:
    # PostgreSQL's jsonb cannot hold it: refused here instead of failing in the database.
    for raw in ({"a": {"$in": [["x\x00"]]}}, {"a": {"x\x00": 1}}, {"a": [{"b": "\x00"}]}):
        with pytest.raises(ValidationError, match="without NUL"):
            parse_filter(raw)


def test_every_condition_counts_as_a_part() -> None:
    # Operators on one field are parts each, as are the $not behind $ne and $nin.
    with pytest.raises(ValidationError, match=f"more than {MAX_NODES} parts"):
        parse_filter({"$and": [{"a": {"$gt": 1, "$lt": 2, "$ne": 3}}] * 60})
    with pytest.raises(ValidationError, match=f"more than {MAX_NODES} parts"):
        parse_filter({"$or": [{}] * (MAX_NODES + 1)})  # empty filters are parts too


def test_filters_within_the_limits_pass() -> None:
    parse_filter(field_not(MAX_DEPTH, {"$in": SHARED}))
    parse_filter({"$or": [{"a": {"$in": SHARED}}] * (MAX_VALUES // MAX_LIST)})
    parse_filter({"$and": [{"a": i} for i in range(MAX_NODES - 1)]})
    parse_filter({"a": {"$eq": [[[[1, 2], {"b": None}]]]}})
