"""The metadata filter language: the compiled SQL and the Python evaluator agree, bad filters fail.

Property-based: hypothesis generates records and filters; each filter runs as SQL (through the
real compiler and the migration's SQL functions) and in Python, and both must pick the same
records.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from agency_data import ValidationError
from agency_data.vectors.filter_ast import parse_filter
from agency_data.vectors.filter_eval import matches
from agency_data.vectors.filter_sql import compile_filter
from tests.conftest import TEMPLATE_DB, ServerSet

KEYS = ["a", "b", "tags", "when", "nested", "name"]
BASE = datetime(2025, 1, 1, tzinfo=UTC)

texts = st.text(alphabet="abAB%_ \\", max_size=4)
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.25, 2.0, 1e-3]))
instants = st.integers(-5, 5).map(lambda d: BASE + timedelta(days=d, hours=d % 3))
# A pattern may not end in a lone escape character (refused, tested below).
like_patterns = texts.filter(lambda t: (len(t) - len(t.rstrip("\\"))) % 2 == 0)
iso_strings = instants.map(lambda t: t.isoformat())
scalars = st.one_of(texts, numbers, st.booleans(), st.none(), iso_strings)
values = st.one_of(
    scalars,
    st.lists(st.one_of(texts, numbers, st.booleans()), max_size=3),
    st.fixed_dictionaries({"x": scalars}),
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)

fields = st.one_of(
    st.sampled_from(KEYS), st.just("nested.x"), st.just("tags.0"), st.just("metadata.a")
)
column_fields = st.sampled_from(["entity_type", "content"])


def comparisons() -> st.SearchStrategy[dict[str, Any]]:
    ordered = st.one_of(numbers, texts, instants)
    operator = st.one_of(
        st.tuples(st.just("$eq"), st.one_of(scalars, instants)),
        st.tuples(st.just("$ne"), st.one_of(scalars, instants)),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ordered),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(scalars, max_size=3)),
        st.tuples(st.just("$exists"), st.booleans()),
        st.tuples(st.just("$contains"), st.one_of(texts, numbers, st.booleans())),
        st.tuples(st.sampled_from(["$like", "$ilike"]), like_patterns),
    )
    metadata = st.builds(lambda f, op: {f: {op[0]: op[1]}}, fields, operator)
    column_op = st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne", "$gt", "$lte", "$contains"]), texts),
        st.tuples(st.sampled_from(["$like", "$ilike"]), like_patterns),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(texts, max_size=3)),
        st.tuples(st.just("$exists"), st.booleans()),
    )
    column = st.builds(lambda f, op: {f: {op[0]: op[1]}}, column_fields, column_op)
    created = st.builds(
        lambda op, t: {"created_at": {op: t}},
        st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$eq"]),
        instants,
    )
    shorthand = st.builds(lambda f, v: {f: v}, st.sampled_from(KEYS), scalars)
    return st.one_of(metadata, column, created, shorthand)


filters = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"$not": x}, inner),
        st.builds(lambda a, b: {**a, **b}, inner, inner),
    ),
    max_leaves=6,
)
records = st.lists(
    st.fixed_dictionaries(
        {
            "metadata": documents,
            "entity_type": texts.filter(lambda t: t.strip() != ""),
            "content": st.one_of(st.none(), texts),
            "created_at": instants,
        }
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def conn(servers: ServerSet) -> Iterator[psycopg.Connection[Any]]:
    name = servers.create_database(TEMPLATE_DB)
    with psycopg.connect(servers.dsn(name), autocommit=True) as connection:
        connection.execute("SET timezone = 'UTC'")
        connection.execute(
            "CREATE TABLE docs (id uuid PRIMARY KEY, tenant_id text, entity_type text, entity_id text, "
            "content text, created_at timestamptz, metadata jsonb)"
        )
        yield connection
    servers.drop_database(name)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=records, raw=filters)
def test_sql_agrees_with_python(
    conn: psycopg.Connection[Any], rows: list[dict[str, Any]], raw: dict[str, Any]
) -> None:
    node = parse_filter(raw)  # every generated filter is valid; bad ones are tested below
    conn.execute("TRUNCATE docs")
    ids = []
    for row in rows:
        ident = uuid.uuid4()
        ids.append(ident)
        conn.execute(
            "INSERT INTO docs VALUES (%s, 'default', %s, 'e', %s, %s, %s)",
            [ident, row["entity_type"], row["content"], row["created_at"], Jsonb(row["metadata"])],
        )
    condition, params = compile_filter(node)
    query = sql.SQL("SELECT id FROM docs WHERE {}").format(condition)
    from_sql = {r[0] for r in conn.execute(query, params).fetchall()}
    from_python = {ident for ident, row in zip(ids, rows, strict=True) if matches(node, row)}
    assert from_sql == from_python, (raw, rows)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"a": {"$regex": ".*"}}, "unknown operator"),
        ({"$where": "1=1"}, "unknown operator"),
        ({"a": {"$gt": True}}, "compares numbers"),
        ({"a": {"$gt": None}}, "compares numbers"),
        ({"a": {"$in": "x"}}, "take a list"),
        ({"a": {"$exists": "yes"}}, "true or false"),
        ({"a": {"$like": 5}}, "string pattern"),
        ({"a": {"$like": "50\\"}}, "escape character"),
        ({"a": {"$contains": {"x": 1}}}, "string, number or boolean"),
        ({"a": {"$eq": float("nan")}}, "NaN"),
        ({"a": {"$lt": float("inf")}}, "NaN"),
        ({"$and": {"a": 1}}, "list of filters"),
        ({"$or": [1]}, "a filter is a dict"),
        ("a = 1", "a filter is a dict"),
        ({"a..b": 1}, "empty path segment"),
        ({"": 1}, "field names"),
        ({"a": {"$in": list(range(1001))}}, "at most 1000"),
        ({"id": {"$eq": "not-a-uuid"}}, "not a UUID"),
        ({"id": {"$gt": str(uuid.uuid4())}}, "does not apply to ids"),
        ({"created_at": {"$gt": "yesterday"}}, "with a datetime"),
        ({"entity_type": {"$eq": 5}}, "holds text"),
        ({"a": {"$eq": "x\x00y"}}, "without NUL"),
    ],
)
def test_bad_filters_are_refused(raw: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_filter(raw)


def test_deep_and_huge_filters_are_refused() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(20):
        deep = {"$not": deep}
    with pytest.raises(ValidationError, match="deeper"):
        parse_filter(deep)
    with pytest.raises(ValidationError, match="more than"):
        parse_filter({"$and": [{"a": i} for i in range(300)]})


@pytest.mark.parametrize(
    "hostile",
    [
        "a') OR 1=1 --",
        'a"; DROP TABLE docs; --',
        "metadata'->>'x",
        "$$; DROP TABLE docs; $$",
    ],
)
def test_injection_in_keys_and_values_stays_data(
    conn: psycopg.Connection[Any], hostile: str
) -> None:
    conn.execute("TRUNCATE docs")
    conn.execute(
        "INSERT INTO docs VALUES (%s, 'default', 't', 'e', NULL, now(), %s)",
        [uuid.uuid4(), Jsonb({hostile: hostile, "safe": 1})],
    )
    key = "metadata." + hostile  # the explicit form also reaches keys that start with $
    for raw in ({key: hostile}, {"safe": {"$in": [hostile, 1]}}, {key: {"$like": hostile}}):
        condition, params = compile_filter(parse_filter(raw))
        assert hostile not in condition.as_string(conn)  # only ever a parameter
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM docs WHERE {}").format(condition), params
        ).fetchone()
        assert count == (1,)
    assert conn.execute("SELECT count(*) FROM docs").fetchone() == (1,)


def test_semantics_by_example() -> None:
    record = {
        "entity_type": "doc",
        "content": None,
        "created_at": BASE,
        "metadata": {
            "n": 5,
            "s": "5",
            "when": "2025-01-02T00:00:00Z",
            "tags": ["red", 1],
            "flag": True,
        },
    }

    def check(raw: dict[str, Any]) -> bool:
        return matches(parse_filter(raw), record)

    assert check({"n": 5})
    assert not check({"s": 5})  # numbers are not strings
    assert check({"n": {"$gt": 4.5}})
    assert not check({"s": {"$gt": 4}})
    assert check({"s": {"$gt": "4"}})
    assert check({"when": {"$gt": BASE}})  # an ISO string compares as an instant
    assert check({"tags": {"$contains": "red"}})
    assert not check({"flag": 1})  # booleans are not numbers
    assert check({"missing": {"$ne": 1}})
    assert check({"missing": {"$nin": [1]}})
    assert not check({"missing": {"$exists": True}})
    assert check({"content": {"$exists": False}})
    assert check({"$or": [{"n": 1}, {"entity_type": "doc"}]})
    assert not check({"$or": []})
    assert check({"$and": []})
