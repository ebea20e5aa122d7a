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

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from agency_data import DataLayer, ValidationError
from agency_data.vectors import _sql
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
    st.sampled_from(KEYS),
    st.sampled_from(["nested.x", "tags.0", "tags. 1", "tags.-1", "metadata.a"]),
)
column_fields = st.sampled_from(["entity_type", "content"])


def comparisons() -> st.SearchStrategy[dict[str, Any]]:
    ordered = st.one_of(numbers, texts, instants)
    # Objects and arrays too: equality with them must not turn into containment, which would
    # also match a larger object or array.
    json_values = st.one_of(scalars, scalars, values)
    operator = st.one_of(
        st.tuples(st.just("$eq"), st.one_of(json_values, instants)),
        st.tuples(st.just("$ne"), st.one_of(json_values, instants)),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ordered),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(json_values, max_size=3)),
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
    shorthand = st.builds(lambda f, v: {f: v}, st.sampled_from(KEYS), json_values)
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
    both_pick(conn, rows, raw)  # every generated filter is valid; bad ones are tested below


def both_pick(
    conn: psycopg.Connection[Any], rows: list[dict[str, Any]], raw: dict[str, Any]
) -> list[int]:
    """The positions of the rows ``raw`` picks, after checking that SQL and Python agree."""
    node = parse_filter(raw)
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
    return [i for i, ident in enumerate(ids) if ident in from_sql]


def meta(*documents: Any) -> list[dict[str, Any]]:
    return [
        {"metadata": d, "entity_type": "t", "content": None, "created_at": BASE} for d in documents
    ]


@pytest.mark.parametrize(
    ("raw", "documents", "picked"),
    [
        # Containment would match a larger object or array; equality does not.
        ({"a": {"x": 1}}, [{"a": {"x": 1}}, {"a": {"x": 1, "y": 2}}], [0]),
        ({"a": [1]}, [{"a": [1]}, {"a": [1, 2]}, {"a": 1}], [0]),
        ({"a": {"$in": [[1], "z"]}}, [{"a": [1]}, {"a": [1, 2]}, {"a": "z"}], [0, 2]),
        # A scalar is not found inside an array by equality; $contains finds it.
        ({"a": "x"}, [{"a": ["x"]}, {"a": "x"}], [1]),
        ({"a": {"$contains": "x"}}, [{"a": ["x"]}, {"a": "wxy"}, {"a": ["wxy"]}], [0, 1]),
        ({"a": {"$contains": 1}}, [{"a": [1.0]}, {"a": 1}, {"a": [[1]]}, {"a": ["1"]}], [0]),
        ({"a": {"$contains": True}}, [{"a": [True]}, {"a": [1]}, {"a": "True"}], [0]),
        # Numbers by value; booleans, strings and numbers apart; null is a value.
        ({"a": 1}, [{"a": 1.0}, {"a": 1}, {"a": "1"}, {"a": True}, {"a": [1]}], [0, 1]),
        ({"a": {"$in": [1, None]}}, [{"a": 1e0}, {"a": None}, {}, {"a": False}], [0, 1]),
        ({"a": {"$ne": 2}}, [{"a": 2.0}, {"a": 3}, {}, {"b": 2}], [1, 2, 3]),
        ({"a": {"$nin": [2, "x"]}}, [{"a": 2}, {"a": "x"}, {"a": ["x"]}, {}], [2, 3]),
        ({"a.b": 1}, [{"a": {"b": 1}}, {"a": [{"b": 1}]}, {"a": {"b": [1]}}, {"a.b": 1}], [0]),
        # Steps that may be array positions, read as PostgreSQL reads them.
        ({"a.1": "y"}, [{"a": ["x", "y"]}, {"a": {"1": "y"}}, {"a": "xy"}], [0, 1]),
        ({"a. 1": "y"}, [{"a": ["x", "y"]}, {"a": {" 1": "y"}}], [0, 1]),
        ({"a.-1": "y"}, [{"a": ["x", "y"]}, {"a": ["y", "x"]}], [0]),
        ({"a.1 ": "y"}, [{"a": ["x", "y"]}, {"a": {"1 ": "y"}}], [1]),
        ({"a.1_0": 10}, [{"a": list(range(12))}, {"a": {"1_0": 10}}], [1]),
        ({"a.+1": {"$in": ["y"]}}, [{"a": ["x", "y"]}], [0]),
        # LIKE: a character at a time, escapes, and the pattern that used to backtrack.
        ({"a": {"$like": "a\\%_"}}, [{"a": "a%b"}, {"a": "abb"}, {"a": "a%"}], [0]),
        ({"a": {"$like": "%a" * 14 + "%b"}}, [{"a": "a" * 40}, {"a": "a" * 40 + "b"}], [1]),
        ({"a": {"$ilike": "%A" * 14 + "%"}}, [{"a": "a" * 40}, {"a": "a" * 13}], [0]),
        ({"a": {"$ilike": "_%_b_%"}}, [{"a": "xxbx"}, {"a": "xBx"}, {"a": "xbx"}], [0]),
    ],
)
def test_sql_and_python_agree_by_example(
    conn: psycopg.Connection[Any], raw: dict[str, Any], documents: list[Any], picked: list[int]
) -> None:
    assert both_pick(conn, meta(*documents), raw) == picked


def test_ilike_lowers_one_character_at_a_time(conn: psycopg.Connection[Any]) -> None:
    # The answer depends on the database's character type; this is PostgreSQL's in a UTF-8 one.
    upper, lower, final = "\u03a3", "\u03c3", "\u03c2"  # Greek capital, small, final sigma
    if conn.execute("SELECT lower(%s) = %s", [upper, lower]).fetchone() != (True,):
        pytest.skip("the test database does not lower non-ASCII letters")
    # Lowered alone, a capital sigma is never the final form (a regex's IGNORECASE says it is).
    documents = [{"a": "x" + upper}, {"a": "x" + final}, {"a": "x" + lower}]
    assert both_pick(conn, meta(*documents), {"a": {"$ilike": "x" + final}}) == [1]
    assert both_pick(conn, meta(*documents), {"a": {"$ilike": "X" + lower}}) == [0, 2]


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
        ({"id": {"$eq": 5}}, "holds text"),
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


async def test_selective_metadata_filters_can_use_a_gin_index(dl: DataLayer) -> None:
    # Collections carry no GIN index on metadata: under row-level security (the application
    # role's pool) PostgreSQL lets only leakproof operators use an index, and jsonb's @> is not
    # one. A role that bypasses it (the owner, here) can add one, and the filters' @> form
    # lets it serve. Rows the size of real embeddings, enough that reading them all costs more.
    col = await dl.embeddings.create_collection("gin", dimension=384)
    vectors = np.random.default_rng(3).normal(size=(10_000, 384)).astype(np.float32)
    await col.store_many(
        {
            "entity_type": "doc",
            "entity_id": str(i),
            "vector": v,
            "metadata": {"group": i % 1000, "codes": [i % 1000, -1], "about": {"n": i % 500}},
        }
        for i, v in enumerate(vectors)
    )
    spec = await dl.embeddings._catalog.load("gin")
    indexes = await dl.admin.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s", [spec.table]
    )
    assert f"{spec.table}_metadata" not in {r["indexname"] for r in indexes}
    await dl.admin.execute(
        sql.SQL("CREATE INDEX {} ON {} USING gin (metadata jsonb_path_ops)").format(
            sql.Identifier(f"{spec.table}_metadata"), spec.table_id
        )
    )
    await dl.admin.execute(sql.SQL("ANALYZE {}").format(spec.table_id))
    wanted = f"Bitmap Index Scan on {spec.table}_metadata"
    for raw, picks in (
        ({"group": 7}, lambda m: m["group"] == 7),
        ({"metadata.group": {"$eq": 7.0}}, lambda m: m["group"] == 7),
        ({"group": {"$in": [7, 8]}}, lambda m: m["group"] in (7, 8)),
        ({"codes": {"$contains": 7}}, lambda m: 7 in m["codes"]),
        ({"about.n": 7, "group": {"$gte": 0}}, lambda m: m["about"]["n"] == 7),
    ):
        statement, params = _sql.search_sql(
            spec, "default", vectors[0], 10, parse_filter(raw), include_vectors=False
        )
        explained = await dl.admin.fetch_one(
            sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statement), params
        )
        assert explained is not None
        plan = explained["QUERY PLAN"][0]["Plan"]
        assert wanted in plan_steps(plan), (raw, plan)
        rows = await dl.admin.fetch(statement, params)
        hits = await col.find_similar(vectors[0], limit=10, filter=raw)
        assert [r["id"] for r in rows] == [h.id for h in hits]
        assert len(hits) == 10
        assert all(picks(hit.metadata) for hit in hits), raw


def plan_steps(node: dict[str, Any]) -> list[str]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, as "Node Type on index"."""
    steps, pending = [], [node]
    while pending:
        current = pending.pop()
        index = current.get("Index Name")
        steps.append(current["Node Type"] + (f" on {index}" if index else ""))
        pending.extend(current.get("Plans", []))
    return steps
