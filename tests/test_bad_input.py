"""Bad input: every wrong argument is a typed AgencyDataError that names it, and writes nothing.

Two parts. First, regressions for the calls issue 10 found letting raw exceptions escape (or
taking wrong input silently). Then a property test that feeds wrong types and values to every
public method of every surface, one argument at a time, found by introspection so that a new
public method is covered without anyone remembering to add it.
"""

# The point of this file is passing arguments of the wrong type.
# mypy: disable-error-code="arg-type, call-overload, list-item"

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import agency_data.sync
from agency_data import (
    AgencyDataError,
    Agent,
    BackendUnavailable,
    ConfigError,
    DataLayer,
    DataLayerConfig,
    ValidationError,
)
from agency_data.admin import Admin
from agency_data.audit import AuditTrail
from agency_data.cache.store import Cache
from agency_data.coord.locks import Lock
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.sessions import SessionStore
from agency_data.events import Events
from agency_data.inputs import brief
from agency_data.memory import KnowledgeGraph, ManagedMemory
from agency_data.outbox import Changes
from agency_data.postgres.agents import AgentStore
from agency_data.scope import TenantScope
from agency_data.security.api_keys import ApiKeys
from agency_data.subjects import SubjectRights
from agency_data.sync import Portal
from agency_data.tasks import TaskStore
from agency_data.vectors.collection import Collection
from agency_data.vectors.store import ManagedEmbeddingStore
from tests.conftest import TEMPLATE_DB, ServerSet, make_config
from tests.embedding_support import HashingEmbedder

try:  # optional extras: probed when installed (always under CI, which installs them)
    from agency_data.integrations.langgraph import AgencyCheckpointSaver, AgencyStore
except ImportError:
    AgencyCheckpointSaver = None  # type: ignore[assignment, misc]
    AgencyStore = None  # type: ignore[assignment, misc]

DIM = 3
VECTOR = [0.1, 0.2, 0.3]
TENANT = "acme"
COLLECTION = "probe_notes"
MEMORY_COLLECTION = "probe_memories"
MEMORY = "probe-memory"


class _Opaque:
    """An object no argument wants."""


class _FreshGenerator:
    """Stands for a generator, made anew for each call (a generator is spent once read)."""

    def __repr__(self) -> str:
        return "<generator>"


class _Deep:
    """Stands for a list nested 5,000 deep (hypothesis cannot print the real thing)."""

    def __repr__(self) -> str:
        return "[[[...5000 deep...]]]"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _deep(levels: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(levels):
        nested = [nested]
    return nested


_DEEP = _deep(5000)


def _item() -> dict[str, Any]:
    return {"entity_type": "note", "entity_id": "1", "vector": list(VECTOR)}


# -- regressions: the calls issue 10 listed -----------------------------------------------------


async def _refused(call: Awaitable[Any], field: str, case: object = "") -> ValidationError:
    """The ValidationError ``call`` raises, checked to name ``field`` (attribute and message)."""
    with pytest.raises(ValidationError) as info:
        await call
    message = str(info.value)
    assert info.value.field == field, f"{case!r}: {message} (field {info.value.field!r})"
    assert field in message or field.replace("_", " ") in message, f"{case!r}: {message}"
    return info.value


async def _drain(results: AsyncIterator[Any]) -> None:
    async for _ in results:
        pass


@pytest.fixture
async def notes(dl: DataLayer) -> Collection:
    """A small collection of the default tenant's, with nothing in it."""
    return await dl.embeddings.create_collection("notes", dimension=DIM)


async def test_store_many_refuses_what_is_not_a_list_of_items(notes: Collection) -> None:
    for bad in [None, "abc", b"abc", {"entity_type": "t"}, 5, _Opaque()]:
        await _refused(notes.store_many(bad), "items", bad)
        await _refused(notes.stream_store(bad), "items", bad)
    assert await notes.count() == 0


async def test_a_bad_item_is_named_by_its_index(notes: Collection) -> None:
    error = await _refused(notes.store_many([_item(), _item(), 5]), "items[2]")
    assert "int" in str(error)
    await _refused(
        notes.store_many([_item(), {**_item(), "vector": [math.nan] * DIM}]), "items[1].vector"
    )
    await _refused(notes.store_many([_item(), {**_item(), "metadata": []}]), "items[1].metadata")
    odd_keys: dict[Any, Any] = {**_item(), 1: "x", "colour": "red"}
    await _refused(notes.store_many([odd_keys]), "items[0]")
    # One item alone is "item".
    await _refused(notes.store(5), "item")
    await _refused(notes.store({**_item(), "vector": "x"}), "item.vector")
    assert await notes.count() == 0


async def test_a_bad_item_in_a_stream_is_named_by_its_place_in_the_stream(
    notes: Collection,
) -> None:
    stream = ({**_item(), "vector": "bad"} if index == 3 else _item() for index in range(5))
    await _refused(notes.stream_store(stream, batch_size=2), "items[3].vector")
    assert await notes.count() == 2  # the first batch was stored; the second was refused


async def test_get_many_refuses_what_is_not_a_list_of_ids(dl: DataLayer, notes: Collection) -> None:
    for bad in [None, "abc", 5, {"a": 1}]:
        await _refused(dl.agents.get_many(bad), "agent_ids", bad)
        await _refused(dl.tasks.get_many(bad), "task_ids", bad)
        await _refused(notes.get_many(bad), "embedding_ids", bad)
        await _refused(notes.delete(bad), "ids", bad)


async def test_a_bad_id_is_named_by_its_index(dl: DataLayer, notes: Collection) -> None:
    agent = await dl.agents.create(name="a", type="t")
    await _refused(dl.agents.get_many([agent.id, "nope"]), "agent_ids[1]")
    await _refused(dl.tasks.get_many([uuid.uuid4(), 7]), "task_ids[1]")
    await _refused(notes.get_many([None]), "embedding_ids[0]")
    # Any iterable of ids will do, a set or a generator included.
    assert [a.id for a in await dl.agents.get_many({agent.id})] == [agent.id]
    assert [a.id for a in await dl.agents.get_many(i for i in [agent.id])] == [agent.id]


async def test_create_many_refuses_what_is_not_a_list_of_tasks(dl: DataLayer) -> None:
    for bad in [None, "abc", {"type": "t"}, 5]:
        await _refused(dl.tasks.create_many(bad), "items", bad)
    assert await dl.tasks.count() == 0


async def test_create_many_names_the_bad_task(dl: DataLayer) -> None:
    await _refused(dl.tasks.create_many([{"type": "ok"}, 5]), "items[1]")
    await _refused(dl.tasks.create_many([{"type": "ok"}, {"type": ""}]), "items[1].type")
    assert await dl.tasks.count() == 0


BAD_QUERIES: list[tuple[Any, str]] = [
    (None, "queries"),
    ("abc", "queries"),
    ({"vector": VECTOR}, "queries"),
    ([5], "queries[0]"),
    ([{"vector": VECTOR}, {"vector": VECTOR, "limit": "x"}], "queries[1].limit"),
    ([{"vector": VECTOR, "threshold": math.nan}], "queries[0].threshold"),
    ([{"vector": VECTOR, "threshold": "x"}], "queries[0].threshold"),
    ([{"vector": VECTOR, "filter": "kind = note"}], "queries[0].filter"),
    (
        [{"vector": VECTOR}, {"vector": VECTOR, "filter": {"k": {"$bogus": 1}}}],
        "queries[1].filter.k.$bogus",
    ),
    ([{"vector": [1.0]}], "queries[0].vector"),
    ([{"limit": 3}], "queries[0].vector"),
    ([{"vector": VECTOR, "limt": 3}], "queries[0]"),
]


async def test_batch_search_names_the_bad_query(notes: Collection) -> None:
    for queries, field in BAD_QUERIES:
        await _refused(notes.batch_search(queries), field, queries)


async def test_batch_search_takes_any_iterable_of_queries(notes: Collection) -> None:
    await notes.store_many([_item()])
    queries: list[dict[str, Any]] = [{"vector": VECTOR}, {"vector": VECTOR, "limit": 1}]
    as_list = await notes.batch_search(queries)
    from_generator = await notes.batch_search(q for q in queries)
    assert as_list == from_generator
    assert len(as_list) == 2


async def test_batch_search_refuses_an_endless_generator(notes: Collection) -> None:
    def endless() -> Iterator[dict[str, Any]]:
        while True:
            yield {"vector": VECTOR}

    error = await _refused(notes.batch_search(endless()), "queries")
    assert "batch" in str(error)


async def test_find_similar_refuses_a_bad_threshold(notes: Collection) -> None:
    for bad in ["x", math.nan, math.inf, [0.5]]:
        await _refused(notes.find_similar(VECTOR, threshold=bad), "threshold", bad)
        await _refused(_drain(notes.search_stream(VECTOR, threshold=bad)), "threshold", bad)


async def test_search_stream_refuses_a_bad_batch_size(notes: Collection) -> None:
    for bad in ["x", 0, -1, 1.5, None]:
        await _refused(_drain(notes.search_stream(VECTOR, batch_size=bad)), "batch_size", bad)


async def test_find_similar_refuses_bad_options(notes: Collection) -> None:
    for kwargs, field in [
        ({"include_vectors": {1: 2}}, "include_vectors"),
        ({"include_vectors": "no"}, "include_vectors"),
        ({"exact": "yes"}, "exact"),
        ({"limit": "5"}, "limit"),
        ({"filter": ["kind"]}, "filter"),
    ]:
        await _refused(notes.find_similar(VECTOR, **kwargs), field, kwargs)


async def test_hybrid_search_names_candidates(notes: Collection) -> None:
    await _refused(notes.hybrid_search("note", VECTOR, candidates="x"), "candidates")
    await _refused(notes.hybrid_search("note", VECTOR, candidates=0), "candidates")
    await _refused(notes.hybrid_search(b"note", VECTOR), "text")


async def test_update_metadata_refuses_a_bad_merge(notes: Collection) -> None:
    (ident,) = await notes.store_many([{**_item(), "metadata": {"a": 1}}])
    await _refused(notes.update_metadata(ident, {"b": 2}, merge="no"), "merge")
    assert (await notes.get(ident)).metadata == {"a": 1}


async def test_index_options_are_all_checked(dl: DataLayer, notes: Collection) -> None:
    await _refused(dl.admin.create_index("notes", "ivfflat", m="x"), "m")
    await _refused(dl.admin.create_index("notes", "hnsw", progress=5), "progress")
    await _refused(dl.admin.create_index("notes", "hnsw", replace="yes"), "replace")
    await _refused(dl.admin.create_index(["notes"]), "collection")
    await _refused(dl.admin.create_collection("other", dimension=DIM, exist_ok="yes"), "exist_ok")
    await _refused(dl.admin.create_collection("other", dimension=DIM, metric=["cosine"]), "metric")
    assert (await notes.describe()).index is None
    assert await dl.admin.list_collections() == ["notes"]


async def test_claim_refuses_a_bad_wait(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    task = await dl.tasks.create("t")
    for bad in ["x", -5, math.nan, math.inf, 1e300, 86_400.0]:
        async with asyncio.timeout(5):  # wait=nan used to wait forever
            await _refused(dl.tasks.claim(agent.id, wait=bad), "wait", bad)
    assert (await dl.tasks.get(task.id)).status == "pending"


async def test_claim_takes_zero_as_no_wait(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    assert await dl.tasks.claim(agent.id, wait=0) == []
    await dl.tasks.create("t")
    assert len(await dl.tasks.claim(agent.id, wait=0.5)) == 1


async def test_fetch_refuses_a_bad_query_params_timeout_or_model(dl: DataLayer) -> None:
    await _refused(dl.fetch(5), "query")
    await _refused(dl.fetch("SELECT 1", 5), "params")
    await _refused(dl.fetch("SELECT %s", "a"), "params")
    await _refused(dl.execute("SELECT 1", {1, 2}), "params")
    for bad in ("x", math.nan, math.inf):
        await _refused(dl.fetch("SELECT 1", timeout=bad), "timeout")
    await _refused(dl.fetch("SELECT 1", model=int), "model")
    await _refused(dl.fetch_one("SELECT 1", model=5), "model")


async def test_fetch_says_when_rows_do_not_fit_the_model(dl: DataLayer) -> None:
    await dl.agents.create(name="a", type="t")
    error = await _refused(dl.fetch("SELECT id, name FROM agents", model=Agent), "model")
    assert "Agent" in str(error)


async def test_execute_transaction_refuses_bad_operations_and_runs_none(dl: DataLayer) -> None:
    insert = ("INSERT INTO agents (name, type) VALUES ('a', 't')", None)
    await _refused(dl.execute_transaction(None), "operations")
    await _refused(dl.execute_transaction([insert, 5]), "operations[1]")
    await _refused(dl.execute_transaction([insert, ("SELECT 1", 5)]), "operations[1].params")
    await _refused(dl.execute_transaction([insert, int]), "operations[1]")
    await _refused(dl.execute_transaction([insert, _noop]), "operations[1]")
    await _refused(dl.execute_transaction([insert], retries="x"), "retries")
    await _refused(dl.execute_transaction([insert], isolation="chaos"), "isolation")
    assert await dl.agents.count() == 0


async def test_execute_transaction_runs_a_generator_of_operations(dl: DataLayer) -> None:
    # The checks used to read the generator to its end, leaving nothing to run.
    results = await dl.execute_transaction(
        op for op in [("INSERT INTO agents (name, type) VALUES ('a', 't')", None)] * 2
    )
    assert results == [1, 1]
    assert await dl.agents.count() == 2


async def test_run_in_transaction_refuses_bad_arguments(dl: DataLayer) -> None:
    async def write(tx: Any) -> None:
        await dl.agents.create(name="a", type="t")

    def not_async(tx: Any) -> None:
        return None

    await _refused(dl.run_in_transaction(write, retries="x"), "retries")
    await _refused(dl.run_in_transaction(write, retries=-1), "retries")
    await _refused(dl.run_in_transaction(5), "fn")
    await _refused(dl.run_in_transaction(not_async), "fn")
    await _refused(dl.run_in_transaction(write, isolation="chaos"), "isolation")
    assert await dl.agents.count() == 0


async def test_transaction_refuses_a_bad_isolation(dl: DataLayer) -> None:
    async def write_in(**kwargs: Any) -> None:
        async with dl.transaction(**kwargs):
            await dl.agents.create(name="a", type="t")

    await _refused(write_in(isolation="chaos"), "isolation")  # was a KeyError
    await _refused(write_in(isolation=5), "isolation")
    await _refused(write_in(readonly="yes"), "readonly")
    assert await dl.agents.count() == 0


async def test_listing_refuses_a_bad_cursor(dl: DataLayer) -> None:
    for bad in [5, b"abc", "", "x" * 201, [1]]:
        await _refused(dl.agents.list(cursor=bad), "cursor", bad)
        await _refused(dl.tasks.list(cursor=bad), "cursor", bad)


async def test_naive_datetimes_are_refused(dl: DataLayer) -> None:
    agent = await dl.agents.create(name="a", type="t")
    naive = datetime.now()
    await _refused(dl.tasks.list(created_after=naive), "created_after")
    await _refused(dl.tasks.count(created_before=naive), "created_before")
    await _refused(
        dl.agents.update(agent.id, name="b", expected_updated_at=naive), "expected_updated_at"
    )
    await _refused(dl.agents.update(agent.id, name="b", expected_version="1"), "expected_version")
    assert await dl.agents.get(agent.id) == agent
    # An aware datetime works as before.
    assert (await dl.tasks.list(created_after=datetime.now(UTC))).items == []


async def test_agent_filters_are_checked(dl: DataLayer) -> None:
    for kwargs, field in [
        ({"capabilities": ["plan"]}, "capabilities"),
        ({"capabilities": {1: True}}, "capabilities"),
        ({"name_contains": 5}, "name_contains"),
        ({"name_contains": "x" * 10_000}, "name_contains"),
        ({"status": _DEEP}, "status"),
    ]:
        await _refused(dl.agents.list(**kwargs), field, field)


async def test_a_wrong_value_never_floods_the_message(dl: DataLayer) -> None:
    error = await _refused(dl.agents.get("x" * 100_000), "agent_id")
    assert len(str(error)) < 200
    error = await _refused(dl.tasks.search("x" * 100_000), "text")
    assert len(str(error)) < 200


async def test_tenant_refuses_a_bad_id(dl: DataLayer) -> None:
    for bad in ([1], {"a": 1}, 5, "", "a b"):
        with pytest.raises(ValidationError) as info:
            dl.tenant(bad)
        assert info.value.field == "tenant_id"


async def test_health_and_migrate_check_their_arguments(dl: DataLayer) -> None:
    await _refused(dl.health(timeout="x"), "timeout")
    await _refused(dl.health(timeout=math.inf), "timeout")
    await _refused(dl.migrate(to=5), "to")
    await _refused(dl.migrate(dry_run="no"), "dry_run")


async def test_a_layer_not_yet_connected_says_how_to_connect() -> None:
    layer = DataLayer()
    for surface in ("agents", "tasks", "embeddings", "admin", "cache", "sessions", "pool"):
        with pytest.raises(BackendUnavailable, match=r"await dl\.connect\(\)") as info:
            getattr(layer, surface)
        assert "async with DataLayer() as dl" in str(info.value)
    with pytest.raises(BackendUnavailable, match="connect"):
        layer.tenant("acme")
    with pytest.raises(BackendUnavailable, match="connect"):
        await layer.fetch("SELECT 1")


def test_a_config_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        DataLayer(5)
    assert info.value.field == "config"
    config = DataLayerConfig(embedded={"data_dir": tmp_path})
    with pytest.raises(ConfigError, match="postgresql"):
        DataLayer(config, postgresql=5)
    assert DataLayer(config, vector={"dimension": 7}).config.vector.dimension == 7


# -- the property: every public method, every argument, wrong values ---------------------------


# Kinds of wrong value every argument gets, besides hypothesis's own draws.
JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    -1.0,
    "",
    "x",
    "\x00",
    "x" * 100_000,
    b"bytes",
    [_Opaque()],
    [None, "x", 5],
    {"x": _Opaque()},
    {1: 2},
    {"": None},
    _Opaque(),
    int,
    datetime(2024, 1, 1),  # naive
    datetime(2024, 1, 1, tzinfo=UTC),
    {"x", "y"},
    ("x", 1),
    uuid.UUID(int=0),
    Decimal("NaN"),
    _Deep(),
    _noop,
    _FreshGenerator(),
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.datetimes(),
)
junk_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.dictionaries(st.text(max_size=6), _scalars, max_size=3),
    st.sampled_from(JUNK),
)


@dataclass
class Probe:
    """What the property's calls use for the arguments they are not testing."""

    dl: DataLayer
    agent_id: uuid.UUID
    task_id: uuid.UUID
    embedding_id: uuid.UUID
    tenant_embedding_id: uuid.UUID
    session_id: str
    message_id: str
    memory_id: str
    entity_id: str
    other_entity_id: str
    relation_id: str


async def _noop_tx(tx: Any) -> int:
    return 1


async def _load() -> int:
    return 1


# The value of each required argument that is not under test, looked up as
# "surface.method.argument", then "method.argument", then "surface.argument", then "argument".
BASELINES: dict[str, Callable[[Probe], Any]] = {
    "query": lambda p: "SELECT 1 AS one",
    "operations": lambda p: [("SELECT 1", None)],
    "fn": lambda p: _noop_tx,
    "tenant_id": lambda p: TENANT,
    "lock.name": lambda p: "probe-lock",
    "agents.create.name": lambda p: "probe",
    "type": lambda p: "t",
    "agents.agent_id": lambda p: p.agent_id,
    "tasks.agent_id": lambda p: p.agent_id,
    "sessions.agent_id": lambda p: "agent-1",
    "agent_ids": lambda p: [p.agent_id],
    "task_id": lambda p: p.task_id,
    "tasks.task": lambda p: p.task_id,
    "tasks.name": lambda p: "probe-schedule",
    "handler": lambda p: _load,
    "task_ids": lambda p: [p.task_id],
    "error": lambda p: "boom",
    "text": lambda p: "note",
    "texts": lambda p: ["a note"],
    "search_text.query": lambda p: "note",
    "embedder": lambda p: HashingEmbedder(DIM),
    "tasks.create_many.items": lambda p: [{"type": "t"}],
    "store_many.items": lambda p: [_item()],
    "stream_store.items": lambda p: [_item()],
    "cache.set_many.items": lambda p: {"k": 1},
    "item": lambda p: _item(),
    "vector": lambda p: list(VECTOR),
    "queries": lambda p: [{"vector": list(VECTOR)}],
    "embeddings.embedding_id": lambda p: p.embedding_id,
    "collection.embedding_id": lambda p: p.tenant_embedding_id,
    "embeddings.embedding_ids": lambda p: [p.embedding_id],
    "collection.embedding_ids": lambda p: [p.tenant_embedding_id],
    "metadata": lambda p: {"a": 1},
    "collection.name": lambda p: COLLECTION,
    "create_collection.name": lambda p: "probe_extra",
    "drop_collection.name": lambda p: "probe_absent",
    "dimension": lambda p: DIM,
    "admin.collection": lambda p: COLLECTION,
    "admin.audit.table": lambda p: "agents",
    "api_keys.tenant": lambda p: TENANT,
    "admin.refuse_shared.name": lambda p: COLLECTION,
    "admin.refuse_shared.tenant": lambda p: TENANT,
    "api_keys.role": lambda p: "read-only",
    "api_keys.key_id": lambda p: "0000000000000000",
    "api_keys.verify.text": lambda p: "adk_x",
    "changes.table": lambda p: "agents",
    "changes.columns": lambda p: ["name", "status"],
    "export.source": lambda p: "tasks",
    "subjects.tenant": lambda p: TENANT,
    "subject": lambda p: "nobody@example.com",
    "region.name": lambda p: "nowhere",
    "key": lambda p: "k",
    "value": lambda p: 1,
    "keys": lambda p: ["k"],
    "cache.delete.keys": lambda p: ("k",),
    "loader": lambda p: _load,
    "pattern": lambda p: "k*",
    "prefix": lambda p: "k",
    "namespace": lambda p: "other",
    "tags": lambda p: ("t",),
    "session_id": lambda p: p.session_id,
    "data": lambda p: {"a": 1},
    "channel": lambda p: "ch",
    "message": lambda p: {"a": 1},
    "channels": lambda p: ("ch",),
    "stream": lambda p: "st",
    "events.event": lambda p: "task.completed",
    "group": lambda p: "g",
    "consumer": lambda p: "c",
    "message_ids": lambda p: (p.message_id,),
    # The knowledge graph (of tenant acme, whose memory probe-memory exists).
    "graph.name": lambda p: "Probe",
    "graph.entity_id": lambda p: p.entity_id,
    "graph.entity": lambda p: p.entity_id,
    "graph.source": lambda p: p.entity_id,
    "graph.target": lambda p: p.other_entity_id,
    "graph.relation": lambda p: "knows",
    "graph.relation_id": lambda p: p.relation_id,
    "graph.memory_id": lambda p: MEMORY,
    "graph.entity_ids": lambda p: [p.entity_id],
    "graph.memory_ids": lambda p: [MEMORY],
    # LangGraph's checkpointer.
    "checkpointer.config": lambda p: {"configurable": {"thread_id": "probe-thread"}},
    "checkpointer.put_writes.config": lambda p: _checkpoint_config(),
    "checkpointer.aput_writes.config": lambda p: _checkpoint_config(),
    "checkpointer.checkpoint": lambda p: {
        "v": 1,
        "id": "probe-checkpoint",
        "ts": "2024-01-01T00:00:00+00:00",
        "channel_values": {"k": 1},
        "channel_versions": {"k": "1"},
        "versions_seen": {},
        "updated_channels": None,
    },
    "new_versions": lambda p: {"k": "1"},
    "writes": lambda p: [("k", 1)],
    "checkpointer.task_id": lambda p: "probe-task",
    "thread_id": lambda p: "probe-thread",
    "thread_ids": lambda p: ["probe-thread"],
    "run_ids": lambda p: ["probe-run"],
    "source_thread_id": lambda p: "probe-thread",
    "target_thread_id": lambda p: "probe-copy",
    "checkpointer.channels": lambda p: ["k"],
    "current": lambda p: None,
    "checkpointer.channel": lambda p: None,
    "extra_allowlist": lambda p: [("probe_module", "ProbeClass")],
    "lg_store.namespace": lambda p: ("probe", "memories"),
    "lg_store.namespace_prefix": lambda p: ("probe",),
    "lg_store.key": lambda p: "k",
    "lg_store.value": lambda p: {"text": "a memory"},
    "lg_store.ops": lambda p: [],
    # Agent memory (its collection made by the probe fixture).
    "memory.agent_id": lambda p: "probe-agent",
    "memory.content": lambda p: "a memory",
    "memory.recall.query": lambda p: "a memory",
    "memory.memory_id": lambda p: p.memory_id,
    "memory.summary_id": lambda p: p.memory_id,
    "memory.summarise": lambda p: _summarise,
    "memory.dimension": lambda p: DIM,
    "memory.collection": lambda p: MEMORY_COLLECTION,
}


def _summarise(memories: list[Any]) -> str:
    return "a summary"


def _checkpoint_config() -> dict[str, Any]:
    return {"configurable": {"thread_id": "probe-thread", "checkpoint_id": "probe-checkpoint"}}


# Each surface: its class (what introspection reads) and how to reach one from a DataLayer.
SURFACES: dict[str, tuple[type, Callable[[DataLayer], Any]]] = {
    "dl": (DataLayer, lambda dl: dl),
    "tenant": (TenantScope, lambda dl: dl.tenant(TENANT)),
    "agents": (AgentStore, lambda dl: dl.agents),
    "tasks": (TaskStore, lambda dl: dl.tasks),
    "embeddings": (ManagedEmbeddingStore, lambda dl: dl.embeddings),
    "collection": (
        Collection,
        lambda dl: dl.tenant(TENANT).embeddings.collection(
            COLLECTION, embedder=HashingEmbedder(DIM)
        ),
    ),
    "admin": (Admin, lambda dl: dl.admin),
    "audit": (AuditTrail, lambda dl: dl.tenant(TENANT).audit),
    "subjects": (SubjectRights, lambda dl: dl.subjects),
    "cache": (Cache, lambda dl: dl.cache),
    "sessions": (SessionStore, lambda dl: dl.sessions),
    "pubsub": (PubSub, lambda dl: dl.pubsub),
    "streams": (Streams, lambda dl: dl.streams),
    "events": (Events, lambda dl: dl.tenant(TENANT).events),
    "lock": (Lock, lambda dl: dl.lock("probe-held", ttl=30)),
    "changes": (Changes, lambda dl: dl.changes),
    "memory": (ManagedMemory, lambda dl: dl.memory.with_embedder(HashingEmbedder(DIM))),
    "graph": (KnowledgeGraph, lambda dl: dl.tenant(TENANT).memory.graph),
    "api_keys": (ApiKeys, lambda dl: dl.admin.api_keys),
}
if AgencyCheckpointSaver is not None:
    # Built on the test's running loop, so its sync methods are refused there (UsageError).
    SURFACES["checkpointer"] = (AgencyCheckpointSaver, lambda dl: AgencyCheckpointSaver(dl))
if AgencyStore is not None:
    SURFACES["lg_store"] = (
        AgencyStore,
        lambda dl: AgencyStore(dl, index={"dims": DIM, "embed": HashingEmbedder(DIM)}),
    )
# Methods taking free keyword arguments (**match): the keyword the probe passes its value as.
FREE_KEYWORDS = {"events.subscribe": "type"}
# Lifecycle, not input: closing the layer would end every later case; a sweeper started
# would outlive its case (the store's own tests check its arguments).
SKIPPED = {"dl.aclose", "dl.connect", "lg_store.astart_ttl_sweeper", "lg_store.start_ttl_sweeper"}
# Calls that wait by design (for work, messages or a lock): cut short, which is fine.
WAITING = {"claim", "consume", "subscribe", "lock", "acquire", "run_scheduler"}
# Feeds that wait for the next change once they have read what is there: cut short as well
# (their sync twins return at once here, as the feed is empty, so they keep their probes).
FEEDS = {"changes"}


def _arguments(cls: type, name: str) -> Iterator[str]:
    function = getattr(cls, name)
    for param in list(inspect.signature(function).parameters.values())[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            # **options: Unpack[SomeTypedDict] -- each of its keys is an argument.
            hint = typing.get_type_hints(function, include_extras=True)[param.name]
            if typing.get_origin(hint) is not typing.Unpack:
                # **match: Any (fields by name): one of them, FREE_KEYWORDS says which.
                yield param.name
                continue
            (typed,) = typing.get_args(hint)
            yield from typing.get_type_hints(typed)
        else:
            yield param.name


def _cases() -> Iterator[Any]:
    for surface, (cls, _) in SURFACES.items():
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            if f"{surface}.{name}" in SKIPPED:
                continue
            for argument in _arguments(cls, name):
                case = f"{surface}.{name}.{argument}"
                yield pytest.param(surface, name, argument, id=case)


def _baseline(probe: Probe, surface: str, method: str, argument: str) -> Any:
    for key in (
        f"{surface}.{method}.{argument}",
        f"{method}.{argument}",
        f"{surface}.{argument}",
        argument,
    ):
        if key in BASELINES:
            return BASELINES[key](probe)
    raise LookupError(f"no baseline for {surface}.{method}({argument}): add one to BASELINES")


def _fresh(value: Any) -> Any:
    if isinstance(value, _FreshGenerator):
        return (item for item in [1, "x", None, _Opaque()])
    if isinstance(value, _Deep):
        return _DEEP
    return value


def _call_arguments(
    probe: Probe, surface: str, method: str, target: str, value: Any
) -> tuple[list[Any], dict[str, Any]]:
    cls = SURFACES[surface][0]
    params = list(inspect.signature(getattr(cls, method)).parameters.values())[1:]
    positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in params:
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(
                [value] if param.name == target else _baseline(probe, surface, method, param.name)
            )
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            if param.name == target:
                kwargs[FREE_KEYWORDS[f"{surface}.{method}"]] = value
            elif target not in {p.name for p in params}:
                kwargs[target] = value
            continue
        # Positional-only parameters (LangGraph's ``search(namespace_prefix, /)``) always go
        # by place; the others too when a *args follows them.
        by_place = param.kind is inspect.Parameter.POSITIONAL_ONLY or (
            positional and param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        if param.name == target:
            given = value
        elif param.default is not inspect.Parameter.empty:
            if by_place:
                args.append(param.default)
            continue
        else:
            given = _baseline(probe, surface, method, param.name)
        if by_place:
            args.append(given)
        else:
            kwargs[param.name] = given
    return args, kwargs


async def _use(result: Any) -> None:
    """Run what a call gave back: await it, step an async generator, enter a context."""
    if inspect.isawaitable(result):
        result = await result
    if inspect.isasyncgen(result):
        try:
            await anext(result)
        except StopAsyncIteration:
            pass
        finally:
            await result.aclose()
    elif hasattr(result, "__aenter__"):
        async with result:
            pass
    elif isinstance(result, Collection):
        await result.count()


@pytest.fixture(scope="module")
async def probe(
    servers: ServerSet, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Probe]:
    """One layer for the whole property (a fresh one per case would cost most of a minute)."""
    name = servers.create_database(TEMPLATE_DB)
    config = make_config(
        servers.database_dsn(name),
        servers.redis_url,
        tmp_path_factory.mktemp("bad-input"),
        vector={"dimension": DIM},
    )
    try:
        async with DataLayer(config) as dl:
            agent = await dl.agents.create(name="probe", type="t")
            task = await dl.tasks.create("t")
            await dl.tasks.claim(agent.id)
            await dl.admin.create_collection(COLLECTION, dimension=DIM)
            tenant_embedding = (
                await dl.tenant(TENANT).embeddings.collection(COLLECTION).store(_item())
            )
            embedding = await dl.embeddings.store(_item())
            session = await dl.sessions.create("agent-1")
            message = await dl.streams.publish("st", {"a": 1})
            await dl.cache.set("k", 1)
            await dl.memory.setup(DIM, embedder=HashingEmbedder(DIM))
            await dl.memory.setup(DIM, collection=MEMORY_COLLECTION)
            remembered = await dl.memory.remember("probe-agent", list(VECTOR), text="kept")
            await dl.tenant(TENANT).execute(
                "INSERT INTO memories (tenant_id, id, collection, kind, importance, happened_at) "
                "VALUES (%s, %s, 'memories', 'fact', 0.5, now())",
                [TENANT, MEMORY],
            )
            graph = dl.tenant(TENANT).memory.graph
            entity = await graph.upsert_entity("Probe", "thing")
            other = await graph.upsert_entity("Other", "thing")
            relation = await graph.relate(entity, "knows", other)
            yield Probe(
                dl=dl,
                agent_id=agent.id,
                task_id=task.id,
                embedding_id=embedding,
                tenant_embedding_id=tenant_embedding,
                session_id=session.id,
                message_id=message,
                memory_id=remembered.id,
                entity_id=entity.id,
                other_entity_id=other.id,
                relation_id=relation.id,
            )
    finally:
        servers.drop_database(name)


def _with_junk(test: Callable[..., Any]) -> Callable[..., Any]:
    # Every kind of JUNK is tried for every argument; hypothesis adds draws of its own.
    for value in reversed(JUNK):
        test = example(value=value)(test)
    return test


@pytest.mark.parametrize(("surface", "method", "argument"), list(_cases()))
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=junk_values)
@_with_junk
async def test_only_typed_errors_come_out(
    probe: Probe, surface: str, method: str, argument: str, value: Any
) -> None:
    """Wrong input to any public method raises an AgencyDataError (or works), nothing else."""
    target = SURFACES[surface][1](probe.dl)
    assert isinstance(target, SURFACES[surface][0])
    if isinstance(target, Lock) and method != "acquire":
        await target.acquire()  # extend() and release() have something to act on
    args, kwargs = _call_arguments(probe, surface, method, argument, _fresh(value))
    seconds = 0.1 if method in WAITING | FEEDS else 10.0
    try:
        async with asyncio.timeout(seconds) as deadline:
            await _use(getattr(target, method)(*args, **kwargs))
    except AgencyDataError:
        pass
    except TimeoutError:
        if not deadline.expired():
            raise
    except Exception as exc:
        raise AssertionError(
            f"{surface}.{method}({argument}={brief(value)}) raised "
            f"{type(exc).__module__}.{type(exc).__name__}: {brief(str(exc))}"
        ) from exc
    finally:
        if isinstance(target, Lock):
            with contextlib.suppress(AgencyDataError):
                await target.release()


# -- the sync face: the same checks, reached through the generated twins ------------------------


# The integrations have sync methods of their own (probed with the async ones), no twin.
NO_TWIN = {"checkpointer", "lg_store"}


def _sync_cases() -> Iterator[Any]:
    for surface, (cls, _) in SURFACES.items():
        if surface in NO_TWIN:
            continue
        twin = getattr(agency_data.sync, cls.__name__)
        for name, member in inspect.getmembers(twin):
            mapped = "aclose" if name == "close" else name
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            if not inspect.isfunction(getattr(cls, mapped, None)):
                continue  # the twin's own (wrap)
            if f"{surface}.{mapped}" in SKIPPED or name in WAITING:
                continue  # waiting calls cannot be cut short from outside a thread
            for argument in _arguments(cls, mapped):
                yield pytest.param(surface, name, argument, id=f"sync.{surface}.{name}.{argument}")


def _use_sync(result: Any) -> None:
    """Run what a sync call gave back: step an iterator, enter a context, count a collection."""
    if inspect.isgenerator(result):
        with contextlib.suppress(StopIteration):
            next(result)
        result.close()
    elif hasattr(result, "__enter__"):
        with result:
            pass
    elif isinstance(result, agency_data.sync.Collection):
        result.count()


@pytest.mark.parametrize(("surface", "method", "argument"), list(_sync_cases()))
async def test_the_sync_face_refuses_what_the_async_one_does(
    probe: Probe, surface: str, method: str, argument: str
) -> None:
    """Each argument of each sync method, given an object no argument wants: a typed error
    (the twins forward to the async layer's checks), never a raw one."""
    layer = agency_data.sync.DataLayer.wrap(probe.dl, Portal.of(asyncio.get_running_loop()))
    target = SURFACES[surface][1](layer)  # type: ignore[arg-type]
    mapped = "aclose" if method == "close" else method

    def run() -> None:
        if isinstance(target, agency_data.sync.Lock):
            target.acquire()
        args, kwargs = _call_arguments(probe, surface, mapped, argument, _Opaque())
        try:
            _use_sync(getattr(target, method)(*args, **kwargs))
        except AgencyDataError:
            pass
        except Exception as exc:
            raise AssertionError(
                f"sync {surface}.{method}({argument}=<opaque>) raised "
                f"{type(exc).__module__}.{type(exc).__name__}: {brief(str(exc))}"
            ) from exc
        finally:
            if isinstance(target, agency_data.sync.Lock):
                with contextlib.suppress(AgencyDataError):
                    target.release()

    await asyncio.wait_for(asyncio.to_thread(run), 30)


# -- cache and coordination: calls that used to raise raw errors or accept nonsense ------------


async def test_cache_calls_refuse_what_they_used_to_misread(dl: DataLayer) -> None:
    await _refused(dl.cache.set("k", 1, tags="abc"), "tags")  # once tags a, b and c
    await _refused(dl.cache.set_many([("k", 1)]), "items")  # type: ignore[arg-type]
    for ttl in (math.nan, math.inf, 1e300, -1, 0):
        await _refused(dl.cache.set("k", 1, ttl=ttl), "ttl", ttl)
    await _refused(dl.cache.get_many(None), "keys")  # type: ignore[arg-type]
    await _refused(dl.cache.get_or_set("k", None), "loader")  # type: ignore[arg-type]
    assert await dl.cache.get("k") is None, "nothing was written"


async def test_sessions_and_streams_refuse_what_they_used_to_misread(dl: DataLayer) -> None:
    await _refused(dl.sessions.create(None), "agent_id")  # once a session of agent "None"
    assert await dl.sessions.list_by_agent("None") == []
    for claim_after in (math.nan, math.inf, -1):
        consumer = dl.streams.consume("s", "g", "c", claim_after=claim_after)
        await _refused(anext(consumer), "claim_after", claim_after)
    await _refused(dl.streams.ack("s", "g", "not-an-id"), "message_ids")
