"""LangGraph's checkpointer on agency-data (agency_data.integrations.langgraph), real servers.

LangGraph's own conformance suite (langgraph-checkpoint-conformance), every capability it
knows, base and extended; the sync methods from other threads (and refused on the loop's);
tenant isolation; bad input; cancellation; pruning that keeps what delta channels need; and a
graph killed mid-run (SIGKILL) that a new process resumes from its last checkpoint.
"""

# Bad input on purpose, and LangGraph's TypedDicts built loosely.
# mypy: disable-error-code="arg-type, typeddict-item, typeddict-unknown-key, list-item, dict-item"

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
import pytest

try:
    from langgraph.channels.delta import DeltaChannel
    from langgraph.checkpoint.base import ERROR, INTERRUPT, CheckpointTuple
    from langgraph.checkpoint.conformance import checkpointer_test, validate
    from langgraph.checkpoint.conformance.capabilities import Capability
    from langgraph.checkpoint.conformance.test_utils import (
        generate_checkpoint,
        generate_config,
        generate_metadata,
    )
    from langgraph.graph import END, START, StateGraph
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        "LangGraph is not installed: pip install -e '.[dev]' (or '.[langgraph]')",
        allow_module_level=True,
    )

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, Conflict, UsageError, ValidationError
from agency_data.integrations.langgraph import AgencyCheckpointSaver
from agency_data.sync import Portal
from tests.conftest import DatabaseDsn, make_config

SCRIPT = Path(__file__).with_name("langgraph_graph_process.py")
TABLES = ("langgraph_checkpoints", "langgraph_checkpoint_blobs", "langgraph_checkpoint_writes")


async def put(
    saver: AgencyCheckpointSaver,
    thread: str,
    *,
    parent: dict[str, Any] | None = None,
    ns: str = "",
    values: dict[str, Any] | None = None,
    step: int = 0,
    **metadata: Any,
) -> dict[str, Any]:
    """Store a checkpoint of ``thread`` (child of ``parent``) holding ``values``, all new."""
    config = generate_config(thread, checkpoint_ns=ns)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    versions = {channel: saver.get_next_version(None, None) for channel in values or {}}
    checkpoint = generate_checkpoint(channel_values=values or {}, channel_versions=versions)
    return dict(
        await saver.aput(config, checkpoint, generate_metadata(step=step, **metadata), versions)
    )


async def listed(saver: AgencyCheckpointSaver, config: Any, **options: Any) -> list[str]:
    return [t.checkpoint["id"] async for t in saver.alist(config, **options)]


async def rows(dl: DataLayer, tenant: str = "default") -> dict[str, int]:
    """How many rows each checkpoint table holds for ``tenant``."""
    scope = dl.tenant(tenant)
    return {table: await scope.fetch_value(f"SELECT count(*) FROM {table}") for table in TABLES}


# -- LangGraph's conformance suite --------------------------------------------------------------


@pytest.mark.parametrize("view", ["layer", "tenant"])
async def test_langgraph_conformance_passes_in_full(dl: DataLayer, view: str) -> None:
    source = dl if view == "layer" else dl.tenant("acme")

    @checkpointer_test(name=f"AgencyCheckpointSaver ({view})")
    async def saver() -> AsyncIterator[AgencyCheckpointSaver]:
        yield AgencyCheckpointSaver(source)

    report = await validate(saver)
    summary = {
        name: (r.detected, r.tests_passed, r.tests_failed, r.failures)
        for name, r in report.results.items()
    }
    assert set(report.results) == {capability.value for capability in Capability}, summary
    for name, result in report.results.items():
        assert result.detected, (name, summary)
        assert result.passed, (name, summary)
        assert result.tests_passed > 0, (name, summary)
        assert result.tests_failed == 0, (name, summary)
    assert report.conformance_level() == "FULL", summary


# -- what the suite does not look at ------------------------------------------------------------


async def test_values_and_writes_round_trip_in_langgraphs_order(dl: DataLayer) -> None:
    saver = AgencyCheckpointSaver(dl)
    values = {
        "text": "nul \x00 and ünïcode",
        "number": 2**62,
        "ratio": math.pi,
        "raw": b"\x00\xff",
        "nothing": None,
        "nested": {"list": [1, "two", {"three": 3.0}], "set": {1, 2}},
    }
    stored = await put(saver, "t", values=values)
    many = [(f"channel-{i % 7}", {"i": i}) for i in range(500)]
    await saver.aput_writes(stored, many, "task-b", "path-b")
    await saver.aput_writes(stored, [("x", 1), (ERROR, "first"), (INTERRUPT, "stop")], "task-a")
    # A task's retry: the regular write stays as first stored, the special one is replaced.
    await saver.aput_writes(stored, [("x", 2), (ERROR, "second")], "task-a")
    got = await saver.aget_tuple(stored)
    assert got is not None
    assert got.checkpoint["channel_values"] == values
    assert got.pending_writes is not None
    # writes_sort_key: task path ("" first), task id, index (specials are negative).
    assert got.pending_writes[:3] == [
        ("task-a", INTERRUPT, "stop"),
        ("task-a", ERROR, "second"),
        ("task-a", "x", 1),
    ]
    assert got.pending_writes[3:] == [("task-b", channel, value) for channel, value in many]
    # With a wider allow-list (a copy, when the serde has one): the same layer and rows.
    wider = saver.with_allowlist([("my_module", "MyClass")])
    assert isinstance(wider, AgencyCheckpointSaver)
    assert (await wider.aget_tuple(stored)) == got


async def test_a_channel_without_a_value_is_absent_and_calls_join_the_callers_transaction(
    dl: DataLayer,
) -> None:
    scope = dl.tenant("acme")
    saver = AgencyCheckpointSaver(scope)
    versions = {"cleared": "00000000000000000000000000000002.0.5"}
    checkpoint = generate_checkpoint(channel_values={}, channel_versions=versions)
    stored = generate_config("t", checkpoint_id=checkpoint["id"])

    async def fails_after_storing() -> None:
        async with scope.transaction():
            await saver.aput(generate_config("t"), checkpoint, generate_metadata(), versions)
            await saver.aput_writes(stored, [("k", 1)], "task")
            seen = await saver.aget_tuple(stored)
            assert seen is not None
            assert seen.pending_writes == [("task", "k", 1)]
            _ = 1 / 0  # the application's own work fails: the checkpoint goes with it

    with pytest.raises(ZeroDivisionError):
        await fails_after_storing()
    assert await saver.aget_tuple(stored) is None
    assert await rows(dl, "acme") == dict.fromkeys(TABLES, 0)
    await saver.aput(generate_config("t"), checkpoint, generate_metadata(), versions)
    got = await saver.aget_tuple(stored)
    assert got is not None
    assert got.checkpoint["channel_values"] == {}
    assert got.checkpoint["channel_versions"] == versions
    assert await scope.fetch("SELECT channel, type, blob FROM langgraph_checkpoint_blobs") == [
        {"channel": "cleared", "type": "empty", "blob": None}
    ]


class Reversing:
    """A serde of the test's own: UTF-8 text, stored backwards."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "reversed", str(obj).encode()[::-1]

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        if data[0] != "reversed":
            raise ValueError(f"not mine: {data[0]}")
        return data[1][::-1].decode()


async def test_a_serde_of_ones_own_is_used_and_a_foreign_value_is_reported(
    dl: DataLayer,
) -> None:
    mine = AgencyCheckpointSaver(dl, serde=Reversing())
    stored = await put(mine, "t", values={"k": "value"})
    assert await dl.fetch_value("SELECT blob FROM langgraph_checkpoint_blobs") == b"eulav"
    got = await mine.aget_tuple(stored)
    assert got is not None
    assert got.checkpoint["channel_values"] == {"k": "value"}
    # LangGraph's default serde wrote this one: the saver says which value it cannot read.
    await put(AgencyCheckpointSaver(dl), "other", values={"k": "value"})
    with pytest.raises(AgencyDataError, match=r"channel 'k'.*could not be read back.*serde"):
        await mine.aget_tuple(generate_config("other"))


async def test_listing_pages_newest_first_within_and_across_threads(dl: DataLayer) -> None:
    saver = AgencyCheckpointSaver(dl)
    made: list[str] = []
    parents: dict[str, dict[str, Any] | None] = {"a": None, "b": None}
    for i in range(130):  # several pages of the listing
        thread = "ab"[i % 2]
        stored = await put(saver, thread, parent=parents[thread], step=i, parity=i % 2)
        parents[thread] = stored
        made.append(stored["configurable"]["checkpoint_id"])
    newest_first = made[::-1]
    assert await listed(saver, None) == newest_first
    of_a = newest_first[1::2]
    assert await listed(saver, generate_config("a")) == of_a
    assert await listed(saver, generate_config("a"), limit=57) == of_a[:57]
    assert await listed(saver, generate_config("a"), limit=0) == []
    before = generate_config("a", checkpoint_id=of_a[10])
    assert await listed(saver, generate_config("a"), before=before, limit=51) == of_a[11:62]
    assert await listed(saver, None, filter={"parity": 1}) == newest_first[::2]
    assert await listed(saver, None, filter={"step": 7, "parity": 1}) == [made[7]]
    assert await listed(saver, generate_config("a", checkpoint_id=of_a[3])) == [of_a[3]]
    # Leaving a listing early is fine: nothing is held between pages.
    async for _ in saver.alist(None):
        break
    assert (await saver.aget_tuple(generate_config("b"))) is not None


class Chat(TypedDict):
    messages: Annotated[list[str], lambda old, new: old + new]


async def test_a_conversation_accumulates_over_turns_of_a_real_graph(dl: DataLayer) -> None:
    def reply(state: Chat) -> dict[str, Any]:
        return {"messages": [f"echo {state['messages'][-1]}"]}

    graph = StateGraph(Chat)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    graph.add_edge("reply", END)
    app = graph.compile(checkpointer=AgencyCheckpointSaver(dl.tenant("acme")))
    config = {"configurable": {"thread_id": "chat-1"}}
    await app.ainvoke({"messages": ["hi"]}, config)
    final = await app.ainvoke({"messages": ["again"]}, config)
    assert final["messages"] == ["hi", "echo hi", "again", "echo again"]
    history = [snapshot async for snapshot in app.aget_state_history(config)]
    assert len(history) == 6  # input and reply of each turn, each with the step before
    assert history[0].values == final


def test_channel_versions_increase_and_read_back_whatever_their_tail() -> None:
    from agency_data.integrations.langgraph import _inputs

    version = None
    for tail in (0.5, 4.4e-05, 1e-300, 0.0, 0.9999999999999999):
        following = _inputs.next_version(version, tail)
        assert "e" not in following  # never the exponent form
        assert version is None or following > version
        version = following
    assert version == "00000000000000000000000000000005.0.9999999999999999"
    # LangGraph's own savers print small tails in exponent form: still a version.
    assert _inputs.next_version("00000000000000000000000000000007.4.4e-05", 0.25) == (
        "00000000000000000000000000000008.0.2500000000000000"
    )
    assert _inputs.next_version(3, 0.5).startswith("00000000000000000000000000000004.")


# -- sync methods -------------------------------------------------------------------------------


async def test_sync_methods_work_from_another_thread_and_refuse_on_the_loop(
    dl: DataLayer,
) -> None:
    saver = AgencyCheckpointSaver(dl)
    config = generate_config("sync")

    def work() -> tuple[Any, ...]:
        checkpoint = generate_checkpoint(channel_values={"k": "v"}, channel_versions={"k": "1"})
        stored = saver.put(config, checkpoint, generate_metadata(run_id="run-1"), {"k": "1"})
        saver.put_writes(stored, [("k", "w")], "task")
        got = saver.get_tuple(stored)
        first = [t.checkpoint["id"] for t in saver.list(config)]
        saver.copy_thread("sync", "copy")
        saver.prune(["copy"], strategy="keep_latest")
        copied = [t.checkpoint["id"] for t in saver.list(generate_config("copy"))]
        saver.delete_for_runs(["run-1"])
        after_runs = saver.get_tuple(config)
        history = saver.get_delta_channel_history(config=stored, channels=["k"])
        saver.delete_thread("copy")
        gone = saver.get_tuple(generate_config("copy"))
        return stored, got, first, copied, after_runs, gone, history

    stored, got, first, copied, after_runs, gone, history = await asyncio.to_thread(work)
    assert history == {"k": {"writes": []}}  # a root checkpoint: no ancestors, no seed
    cid = stored["configurable"]["checkpoint_id"]
    assert isinstance(got, CheckpointTuple)
    assert got.checkpoint["channel_values"] == {"k": "v"}
    assert got.pending_writes == [("task", "k", "w")]
    assert first == [cid]
    assert copied == [cid]
    assert after_runs is None
    assert gone is None
    # On the loop's own thread a sync call would wait for ever on itself: refused at once.
    refused: list[Callable[[], Any]] = [
        lambda: saver.get_tuple(config),
        lambda: saver.list(config),
        lambda: saver.put(config, generate_checkpoint(), generate_metadata(), {}),
        lambda: saver.put_writes(stored, [("k", 1)], "task"),
        lambda: saver.delete_thread("sync"),
        lambda: saver.delete_for_runs(["run-1"]),
        lambda: saver.copy_thread("sync", "other"),
        lambda: saver.prune(["sync"]),
        lambda: saver.get(config),
    ]
    for call in refused:
        with pytest.raises(UsageError, match="await"):
            call()


async def test_a_sync_front_ends_portal_serves_callers_on_other_loops(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    """The layer on a private loop (as a sync DataLayer runs it): async callers on another
    loop and sync callers on any other thread both reach it through its portal."""
    portal = Portal.start("checkpoint-test")
    layer = DataLayer(make_config(database, redis_url, tmp_path))
    try:
        await portal.acall(layer.connect())
        saver = AgencyCheckpointSaver(layer.tenant("acme"), portal=portal)
        stored = await put(saver, "t", values={"k": "v"})
        await put(saver, "t", parent=stored)
        assert len(await listed(saver, generate_config("t"))) == 2
        # This test's loop is not the layer's: a sync call from here is served too.
        got = saver.get_tuple(stored)
        assert got is not None
        assert got.checkpoint["channel_values"] == {"k": "v"}
        assert len(list(saver.list(generate_config("t")))) == 2
        # Listings left early, from either side, are closed on the layer's loop.
        async for _ in saver.alist(generate_config("t")):
            break
        for _ in saver.list(generate_config("t")):
            break
        await saver.adelete_thread("t")
        assert await saver.aget_tuple(generate_config("t")) is None
    finally:
        await portal.acall(layer.aclose())
        portal.close()


# -- tenancy ------------------------------------------------------------------------------------


async def test_each_tenant_sees_only_its_own_threads(dl: DataLayer) -> None:
    a = AgencyCheckpointSaver(dl.tenant("a"))
    b = AgencyCheckpointSaver(dl.tenant("b"))
    default = AgencyCheckpointSaver(dl)
    stored_a = await put(a, "same-thread", values={"who": "a"}, run_id="run")
    stored_b = await put(b, "same-thread", values={"who": "b"}, run_id="run")
    await a.aput_writes(stored_a, [("said", "a")], "task")
    await b.aput_writes(stored_b, [("said", "b")], "task")
    got_a = await a.aget_tuple(generate_config("same-thread"))
    got_b = await b.aget_tuple(generate_config("same-thread"))
    assert got_a is not None
    assert got_b is not None
    assert got_a.checkpoint["channel_values"] == {"who": "a"}
    assert got_b.checkpoint["channel_values"] == {"who": "b"}
    assert got_a.pending_writes == [("task", "said", "a")]
    assert got_b.pending_writes == [("task", "said", "b")]
    # Another tenant's checkpoint id is not found by this one, even named outright.
    assert await a.aget_tuple(stored_b) is None
    assert await default.aget_tuple(generate_config("same-thread")) is None
    assert await listed(a, None) == [stored_a["configurable"]["checkpoint_id"]]
    assert await listed(default, None) == []
    # Removals stay within the tenant too.
    await a.adelete_for_runs(["run"])
    await a.acopy_thread("same-thread", "copy")  # a has nothing left to copy
    assert await rows(dl, "a") == dict.fromkeys(TABLES, 0)
    assert await rows(dl, "b") == dict.fromkeys(TABLES, 1)
    await b.acopy_thread("same-thread", "copy")
    await a.aprune(["same-thread", "copy"], strategy="delete")
    assert await rows(dl, "b") == dict.fromkeys(TABLES, 2)
    await b.adelete_thread("copy")
    assert await rows(dl, "b") == dict.fromkeys(TABLES, 1)


async def test_erasing_a_tenant_removes_its_checkpoints(dl: DataLayer) -> None:
    for tenant in ("acme", "globex"):
        saver = AgencyCheckpointSaver(dl.tenant(tenant))
        stored = await put(saver, "thread", values={"k": tenant})
        await saver.aput_writes(stored, [("k", 1)], "task")
    report = await dl.subjects.erase_tenant("acme")
    assert {table: report.removed[table] for table in TABLES} == dict.fromkeys(TABLES, 1)
    assert await rows(dl, "acme") == dict.fromkeys(TABLES, 0)
    assert await rows(dl, "globex") == dict.fromkeys(TABLES, 1)


# -- removals: what stays, what goes ------------------------------------------------------------


async def test_removals_take_the_values_nothing_uses_any_more(dl: DataLayer) -> None:
    saver = AgencyCheckpointSaver(dl)
    first = await put(saver, "t", values={"kept": 1, "replaced": "old"}, run_id="r1")
    await saver.aput_writes(first, [("kept", 2)], "task")
    config = generate_config("t", checkpoint_id=first["configurable"]["checkpoint_id"])
    # The second checkpoint keeps "kept" at its first version and gives "replaced" a new one.
    old = (await saver.aget_tuple(first)).checkpoint["channel_versions"]  # type: ignore[union-attr]
    versions = {"replaced": saver.get_next_version(old["replaced"], None)}
    checkpoint = generate_checkpoint(
        channel_values={"kept": 1, "replaced": "new"},
        channel_versions={"kept": old["kept"], **versions},
    )
    second = await saver.aput(config, checkpoint, generate_metadata(run_id="r2"), versions)
    assert await rows(dl) == {
        "langgraph_checkpoints": 2,
        "langgraph_checkpoint_blobs": 3,
        "langgraph_checkpoint_writes": 1,
    }
    await saver.adelete_for_runs(["r1"])
    assert await rows(dl) == {
        "langgraph_checkpoints": 1,
        "langgraph_checkpoint_blobs": 2,  # "kept" is still named by the second
        "langgraph_checkpoint_writes": 0,
    }
    got = await saver.aget_tuple(second)
    assert got is not None
    assert got.checkpoint["channel_values"] == {"kept": 1, "replaced": "new"}
    await saver.aprune(["t"], strategy="delete")
    assert await rows(dl) == dict.fromkeys(TABLES, 0)


async def test_copying_into_a_thread_that_has_checkpoints_is_refused(dl: DataLayer) -> None:
    saver = AgencyCheckpointSaver(dl)
    await put(saver, "source", values={"k": 1})
    await put(saver, "target", values={"k": 2})
    with pytest.raises(Conflict, match="has checkpoints already") as info:
        await saver.acopy_thread("source", "target")
    assert info.value.field == "target_thread_id"
    assert await rows(dl) == dict.fromkeys(TABLES[:2], 2) | {TABLES[2]: 0}


def _append(log: list[str], writes: list[list[str]]) -> list[str]:
    # DeltaChannel's reducer takes a batch of writes at once.
    return [*log, *(item for write in writes for item in write)]


class Counted(TypedDict):
    log: Annotated[list[str], DeltaChannel(_append, snapshot_frequency=3)]
    n: int


async def test_pruning_keeps_the_ancestors_a_delta_channel_is_rebuilt_from(
    dl: DataLayer,
) -> None:
    def step(state: Counted) -> dict[str, Any]:
        return {"log": [f"s{state['n']}"], "n": state["n"] + 1}

    graph = StateGraph(Counted)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", lambda s: END if s["n"] >= 7 else "step")
    saver = AgencyCheckpointSaver(dl)
    app = graph.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "delta"}}
    await app.ainvoke({"log": [], "n": 0}, config)
    before = (await app.aget_state(config)).values
    assert before == {"log": [f"s{i}" for i in range(7)], "n": 7}
    history = [t async for t in saver.alist(config)]  # one chain, newest first
    assert "counters_since_delta_snapshot" in history[0].metadata
    # What must stay: the latest, and its ancestors back to the first holding a snapshot.
    needed = [history[0]]
    for ancestor in history[1:]:
        needed.append(ancestor)
        if "log" in ancestor.checkpoint["channel_values"]:
            break
    assert 1 < len(needed) < len(history)
    rebuilt = await saver.aget_delta_channel_history(config=config, channels=["log"])
    await saver.aprune(["delta"])
    assert await listed(saver, config) == [t.checkpoint["id"] for t in needed]
    assert await saver.aget_delta_channel_history(config=config, channels=["log"]) == rebuilt
    assert (await app.aget_state(config)).values == before
    await app.ainvoke({"log": ["more"], "n": 7}, config)
    assert (await app.aget_state(config)).values["log"] == [*before["log"], "more", "s7"]


# -- bad input ----------------------------------------------------------------------------------


def _bad_calls(
    saver: AgencyCheckpointSaver, stored: dict[str, Any]
) -> list[tuple[Callable[[], Any], str]]:
    good = generate_checkpoint()
    meta = generate_metadata()
    cfg = generate_config("t")
    return [
        (lambda: saver.aget_tuple({"configurable": {}}), "config.configurable.thread_id"),
        (lambda: saver.aget_tuple(None), "config"),
        (lambda: saver.aget_tuple({"configurable": "t"}), "config"),
        (lambda: saver.aget_tuple(generate_config(["t"])), "config.configurable.thread_id"),
        (
            lambda: saver.aget_tuple({"configurable": {"thread_id": ""}}),
            "config.configurable.thread_id",
        ),
        (lambda: saver.aget_tuple(generate_config("x" * 513)), "config.configurable.thread_id"),
        (lambda: saver.aget_tuple(generate_config("a\x00b")), "config.configurable.thread_id"),
        (
            lambda: saver.aget_tuple(generate_config("t", checkpoint_ns=5)),
            "config.configurable.checkpoint_ns",
        ),
        (
            lambda: saver.aget_tuple(generate_config("t", checkpoint_id=7)),
            "config.configurable.checkpoint_id",
        ),
        (lambda: saver.aput({"configurable": {}}, good, meta, {}), "config.configurable.thread_id"),
        (lambda: saver.aput(cfg, "checkpoint", meta, {}), "checkpoint"),
        (lambda: saver.aput(cfg, {**good, "id": None}, meta, {}), "checkpoint.id"),
        (
            lambda: saver.aput(cfg, {**good, "channel_values": []}, meta, {}),
            "checkpoint.channel_values",
        ),
        (lambda: saver.aput(cfg, good, meta, {"k": True}), "new_versions"),
        (lambda: saver.aput(cfg, good, meta, {"k": None}), "new_versions"),
        (lambda: saver.aput(cfg, good, meta, [("k", 1)]), "new_versions"),
        (lambda: saver.aput(cfg, good, "meta", {}), "metadata"),
        (lambda: saver.aput(cfg, good, {**meta, "x": object()}, {}), "metadata"),
        (lambda: saver.aput(cfg, good, {**meta, "x": math.nan}, {}), "metadata"),
        # LangGraph strips NUL from the top level's strings; deeper, JSON in PostgreSQL has none.
        (lambda: saver.aput(cfg, good, {**meta, "x": {"y": "a\x00"}}, {}), "metadata"),
        (lambda: saver.aput({**cfg, "metadata": 5}, good, meta, {}), "config.metadata"),
        (
            lambda: saver.aput(
                cfg,
                {**good, "channel_values": {"k": object()}, "channel_versions": {"k": "1"}},
                meta,
                {"k": "1"},
            ),
            "checkpoint.channel_values['k']",
        ),
        (lambda: saver.aput_writes(cfg, [("k", 1)], "task"), "config.configurable.checkpoint_id"),
        (lambda: saver.aput_writes(stored, "kv", "task"), "writes"),
        (lambda: saver.aput_writes(stored, [("k", 1), ("k",)], "task"), "writes[1]"),
        (lambda: saver.aput_writes(stored, [(5, 1)], "task"), "writes[0][0]"),
        (lambda: saver.aput_writes(stored, [("k", lambda: 1)], "task"), "writes[0][1]"),
        (lambda: saver.aput_writes(stored, [("k", 1)], ""), "task_id"),
        (lambda: saver.aput_writes(stored, [("k", 1)], None), "task_id"),
        (lambda: saver.aput_writes(stored, [("k", 1)], "task", 5), "task_path"),
        (lambda: anext(saver.alist(cfg, limit=-1)), "limit"),
        (lambda: anext(saver.alist(cfg, limit=True)), "limit"),
        (lambda: anext(saver.alist(cfg, filter=["step"])), "filter"),
        (lambda: anext(saver.alist(cfg, filter={"x": object()})), "filter"),
        (lambda: anext(saver.alist(cfg, before=cfg)), "before.configurable.checkpoint_id"),
        (lambda: anext(saver.alist({"configurable": {}})), "config.configurable.thread_id"),
        (lambda: saver.adelete_thread(None), "thread_id"),
        (lambda: saver.adelete_thread(["t"]), "thread_id"),
        (lambda: saver.adelete_for_runs("run-1"), "run_ids"),
        (lambda: saver.adelete_for_runs([None]), "run_ids[0]"),
        (lambda: saver.acopy_thread("t", "t"), "target_thread_id"),
        (lambda: saver.acopy_thread("t", 1.5), "target_thread_id"),
        (lambda: saver.aprune("t"), "thread_ids"),
        (lambda: saver.aprune(["t"], strategy="oldest"), "strategy"),
        (lambda: saver.aget_delta_channel_history(config=cfg, channels="log"), "channels"),
        (lambda: saver.aget_delta_channel_history(config=cfg, channels=[1]), "channels[0]"),
        (lambda: saver.aget_delta_channel_history(config={}, channels=["log"]), "config"),
        (lambda: _now(saver.get_next_version, "v1", None), "current"),
        (lambda: _now(saver.get_next_version, 1.5, None), "current"),
        (lambda: _now(saver.with_allowlist, "module"), "extra_allowlist"),
        (lambda: _now(saver.with_allowlist, [("module", 5)]), "extra_allowlist[0]"),
        (lambda: _now(saver.with_allowlist, [()]), "extra_allowlist[0]"),
    ]


async def _refusal(call: Callable[[], Any]) -> ValidationError | None:
    try:
        await call()
    except ValidationError as error:
        return error
    return None


async def _now(call: Callable[..., Any], *args: Any) -> Any:
    """A synchronous call, awaitable like the others."""
    return call(*args)


async def test_bad_input_is_a_validation_error_naming_it_and_writes_nothing(
    dl: DataLayer,
) -> None:
    saver = AgencyCheckpointSaver(dl)
    stored = await put(saver, "t", values={"k": "v"})
    before = await rows(dl)
    for index, (call, field) in enumerate(_bad_calls(saver, stored)):
        error = await _refusal(call)
        assert error is not None, f"no error for case {index} ({field})"
        assert error.field == field, (index, field, str(error))
        assert field.split(".")[0].split("[")[0] in str(error), (index, str(error))
    assert await rows(dl) == before
    # A UUID or a number names a thread as its text does.
    thread = uuid.uuid4()
    await put(saver, thread)
    assert await saver.aget_tuple(generate_config(str(thread))) is not None
    await put(saver, 42)
    assert await saver.aget_tuple(generate_config("42")) is not None


async def test_the_constructor_refuses_what_it_cannot_use(dl: DataLayer) -> None:
    for source in (None, "dl", dl.agents):
        with pytest.raises(ValidationError) as info:
            AgencyCheckpointSaver(source)
        assert info.value.field == "source"
    with pytest.raises(ValidationError) as info:
        AgencyCheckpointSaver(dl, portal=asyncio.get_running_loop())
    assert info.value.field == "portal"
    with pytest.raises(ValidationError) as info:
        AgencyCheckpointSaver(dl, serde="json")
    assert info.value.field == "serde"
    # Outside any event loop, which loop the sync methods should use is unknown.
    with pytest.raises(UsageError, match="portal="):
        await asyncio.to_thread(AgencyCheckpointSaver, dl)


# -- cancellation -------------------------------------------------------------------------------


@asynccontextmanager
async def tables_locked(database: DatabaseDsn) -> AsyncIterator[None]:
    """The checkpoint tables locked by another session: every call on them waits."""
    async with await psycopg.AsyncConnection.connect(database.owner) as conn:
        await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
        yield
        await conn.rollback()


async def test_every_waiting_call_can_be_cancelled_and_leaves_nothing_half_done(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    saver = AgencyCheckpointSaver(dl)
    stored = await put(saver, "t", values={"k": "v"}, run_id="run")
    before = await rows(dl)
    fresh = generate_checkpoint(channel_values={"a": 1, "b": 2}, channel_versions={"a": 1, "b": 1})
    calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
        "aget_tuple": lambda: saver.aget_tuple(stored),
        "alist": lambda: anext(saver.alist(None)),
        "aput": lambda: saver.aput(
            generate_config("new"), fresh, generate_metadata(), {"a": 1, "b": 1}
        ),
        "aput_writes": lambda: saver.aput_writes(stored, [("k", 1), ("j", 2)], "task"),
        "adelete_thread": lambda: saver.adelete_thread("t"),
        "adelete_for_runs": lambda: saver.adelete_for_runs(["run"]),
        "acopy_thread": lambda: saver.acopy_thread("t", "copy"),
        "aprune": lambda: saver.aprune(["t"], strategy="delete"),
    }
    for name, call in calls.items():
        async with tables_locked(database):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), timeout=0.5)
        assert await rows(dl) == before, name
    got = await saver.aget_tuple(stored)
    assert got is not None
    assert got.checkpoint["channel_values"] == {"k": "v"}


# -- a graph killed mid-run, resumed by a new process -------------------------------------------


async def _run_graph(mode: str, env: dict[str, str], tmp_path: Path) -> asyncio.subprocess.Process:
    errors = (tmp_path / f"{mode}.stderr").open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            str(SCRIPT),
            mode,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            env={**os.environ, **env},
        )
    finally:
        errors.close()


async def test_a_graph_killed_mid_run_resumes_in_a_new_process(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    log, stuck = tmp_path / "nodes.log", tmp_path / "stuck"
    env = {
        "GRAPH_DSN": str(database),
        "GRAPH_REDIS_URL": redis_url,
        "GRAPH_TENANT": "acme",
        "GRAPH_THREAD": "conversation-1",
        "GRAPH_LOG": str(log),
        "GRAPH_STUCK": str(stuck),
    }
    saver = AgencyCheckpointSaver(dl.tenant("acme"))
    config = generate_config("conversation-1")

    def stderr(mode: str) -> str:
        return (tmp_path / f"{mode}.stderr").read_text(errors="replace")[-3000:]

    first = await _run_graph("first", env, tmp_path)
    try:
        # Killed once "draft" is stuck and "search", its sibling in the step, has its write
        # stored against the last checkpoint: a pending write the resumed run must reuse.
        async with asyncio.timeout(90):
            while True:
                latest = await saver.aget_tuple(config)
                writes = latest.pending_writes if latest is not None else None
                if stuck.exists() and writes and ("steps", ["search"]) in [w[1:] for w in writes]:
                    break
                assert first.returncode is None, stderr("first")
                await asyncio.sleep(0.05)
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    assert latest is not None
    assert latest.checkpoint["channel_values"]["steps"] == [
        "greet",
        "think",
    ]

    second = await _run_graph("resume", env, tmp_path)
    try:
        out, _ = await asyncio.wait_for(second.communicate(), timeout=90)
    finally:
        if second.returncode is None:
            second.send_signal(signal.SIGKILL)
            await second.wait()
    assert second.returncode == 0, stderr("resume")
    state = json.loads(out.decode().strip().splitlines()[-1])["state"]
    assert Counter(state["steps"]) == Counter(["greet", "think", "search", "draft", "answer"])
    assert state["steps"][:2] == ["greet", "think"]
    assert state["steps"][-1] == "answer"
    # What the killed process remembered is in the store for the resumed one to find.
    assert state["remembered"] == 2
    # Who ran what: the new process ran only what had not finished.
    ran = [line.split() for line in log.read_text().splitlines()]
    assert [name for pid, name in ran if int(pid) == first.pid] == ["greet", "think", "search"]
    assert [name for pid, name in ran if int(pid) == second.pid] == ["draft", "answer"]
    final = await saver.aget_tuple(config)
    assert final is not None
    assert final.checkpoint["channel_values"]["steps"] == state["steps"]
