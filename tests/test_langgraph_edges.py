"""The LangGraph checkpointer at its edges: ids Python cannot encode are refused by name, id
lengths are checked in bytes, as the primary keys need, and a synchronous graph run inside
``with dl.transaction()`` rolls back with it (LangGraph writes its checkpoints from threads of
its own, which carry the caller's context), as the async one does.
"""

# LangGraph's TypedDicts built loosely.
# mypy: disable-error-code="arg-type, typeddict-item, typeddict-unknown-key"

from __future__ import annotations

import operator
import os
import random
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

try:
    from langgraph.checkpoint.conformance.test_utils import (
        generate_checkpoint,
        generate_config,
        generate_metadata,
    )
    from langgraph.config import get_store
    from langgraph.graph import END, START, StateGraph
except ImportError:  # pragma: no cover - the extra is part of the dev install
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("LangGraph is not installed", allow_module_level=True)

import agency_data.sync
from agency_data import DataLayer
from agency_data.errors import AgencyDataError, ValidationError
from agency_data.integrations.langgraph import AgencyCheckpointSaver, AgencyStore
from tests.conftest import DatabaseDsn, make_config

LONE = "\ud800"  # a lone surrogate: no UTF-8 form
TABLES = ("langgraph_checkpoints", "langgraph_checkpoint_blobs", "langgraph_checkpoint_writes")


def cjk(count: int, seed: int) -> str:
    """``count`` random CJK characters (three UTF-8 bytes each, and they do not compress)."""
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(count))


def _checkpoint() -> tuple[Any, Any, dict[str, str]]:
    versions = {"k": "1"}
    return (
        generate_checkpoint(channel_values={"k": 1}, channel_versions=versions),
        (generate_metadata()),
        versions,
    )


async def test_ids_python_cannot_encode_are_validation_errors(dl: DataLayer) -> None:
    saver = AgencyCheckpointSaver(dl)
    checkpoint, metadata, versions = _checkpoint()
    calls: dict[str, Any] = {
        "aget_tuple": lambda: saver.aget_tuple(generate_config(f"t{LONE}")),
        "aput": lambda: saver.aput(generate_config(f"t{LONE}"), checkpoint, metadata, versions),
        "adelete_thread": lambda: saver.adelete_thread(f"t{LONE}"),
        "aput (namespace)": lambda: saver.aput(
            generate_config("t", checkpoint_ns=LONE), checkpoint, metadata, versions
        ),
    }
    raw: dict[str, str] = {}
    for name, call in calls.items():
        try:
            await call()
        except ValidationError:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            raw[name] = f"{type(exc).__name__}: {exc}"
    assert raw == {}, f"raw exceptions: {raw}"


async def test_ids_within_the_documented_lengths_are_stored_or_refused_by_name(
    dl: DataLayer,
) -> None:
    saver = AgencyCheckpointSaver(dl)
    checkpoint, metadata, versions = _checkpoint()
    config = generate_config(cjk(512, 1), checkpoint_ns=cjk(1024, 2))
    refused: ValidationError | None = None
    try:
        stored = await saver.aput(config, checkpoint, metadata, versions)
    except ValidationError as exc:
        refused = exc
    except AgencyDataError as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
    if refused is not None:
        # Refused up front, naming the id that is too long: fine.
        assert refused.field is not None
        assert "config" in refused.field
        return
    found = await saver.aget_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == {"k": 1}


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def _graph(saver: AgencyCheckpointSaver) -> Any:
    builder = StateGraph(State)
    builder.add_node("first", lambda state: {"log": ["first"]})
    builder.add_node("second", lambda state: {"log": ["second"]})
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    return builder.compile(checkpointer=saver)


async def test_an_async_graph_run_inside_a_transaction_rolls_back_with_it(dl: DataLayer) -> None:
    """What the sync test below expects, as the async API does it (passes now)."""
    scope = dl.tenant("acme")
    graph = _graph(AgencyCheckpointSaver(scope))
    config = {"configurable": {"thread_id": "in-a-transaction"}}

    async def run_then_fail() -> None:
        async with scope.transaction():
            await graph.ainvoke({"log": []}, config)
            _ = 1 / 0  # the application's own work in the transaction fails

    with pytest.raises(ZeroDivisionError):
        await run_then_fail()
    assert (await graph.aget_state(config)).values == {}
    for table in TABLES:
        assert await scope.fetch_value(f"SELECT count(*) FROM {table}") == 0, table


def test_a_sync_graph_run_inside_a_transaction_rolls_back_with_it(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    with agency_data.sync.DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        scope = dl.tenant("acme")
        graph = _graph(AgencyCheckpointSaver(scope))
        config = {"configurable": {"thread_id": "in-a-transaction"}}

        def run_then_fail() -> None:
            with scope.transaction():
                graph.invoke({"log": []}, config)
                _ = 1 / 0

        with pytest.raises(ZeroDivisionError):
            run_then_fail()
        assert graph.get_state(config).values == {}
        for table in TABLES:
            assert scope.fetch_value(f"SELECT count(*) FROM {table}") == 0, table


def test_a_sync_graph_writing_to_the_store_inside_a_transaction(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    """LangGraph writes the checkpoints from a thread of its own while a node's store.put
    opens a savepoint in the same transaction: the two share its connection in turn."""
    with agency_data.sync.DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        scope = dl.tenant("acme")
        store = AgencyStore(scope)

        def remember(state: State) -> dict[str, Any]:
            get_store().put(("users", "ann"), f"m{len(state['log'])}", {"text": "green tea"})
            return {"log": ["remember"]}

        builder = StateGraph(State)
        builder.add_node("remember", remember)
        builder.add_node("recall", lambda state: {"log": ["recall"]})
        builder.add_edge(START, "remember")
        builder.add_edge("remember", "recall")
        builder.add_edge("recall", END)
        graph = builder.compile(checkpointer=AgencyCheckpointSaver(scope), store=store)
        for run in range(5):
            config = {"configurable": {"thread_id": f"thread-{run}"}}
            with dl.transaction():
                state = graph.invoke({"log": []}, config)
            assert state["log"] == ["remember", "recall"]
        assert len(store.search(("users", "ann"), limit=10)) == 1

        def run_then_fail() -> None:
            with scope.transaction():
                graph.invoke({"log": []}, {"configurable": {"thread_id": "rolled-back"}})
                _ = 1 / 0

        with pytest.raises(ZeroDivisionError):
            run_then_fail()
        assert graph.get_state({"configurable": {"thread_id": "rolled-back"}}).values == {}
