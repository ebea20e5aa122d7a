"""A LangGraph conversation as an OS process of its own, for tests/test_langgraph_checkpoint.py.

``python -u tests/langgraph_graph_process.py MODE`` with the database in ``GRAPH_DSN``, Redis
in ``GRAPH_REDIS_URL``, the tenant and thread in ``GRAPH_TENANT`` / ``GRAPH_THREAD``, and two
files: ``GRAPH_LOG`` (each node appends "pid name" as it runs) and ``GRAPH_STUCK`` (made by the
node that blocks).

The graph: ``greet -> think -> (search, draft) -> answer``, each node adding its name to the
``steps`` list, with our checkpointer and our store: ``greet`` and ``search`` remember a fact
in the store, ``answer`` counts what the store holds for the user. Modes:

- ``first``: the async API (``ainvoke``); ``draft`` blocks for ever once it started (after
  ``search``, its sibling in the same step, may have finished): the test kills the process.
- ``resume``: the sync front end (``agency_data.sync.DataLayer``, ``invoke`` from the main
  thread), continuing the thread from its last checkpoint; prints the final state as one
  JSON line.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph

from agency_data import DataLayer, DataLayerConfig
from agency_data import sync as agency_sync
from agency_data.integrations.langgraph import AgencyCheckpointSaver, AgencyStore

PID = os.getpid()
MODE = sys.argv[1]
LOG = Path(os.environ["GRAPH_LOG"])
STUCK = Path(os.environ["GRAPH_STUCK"])
THREAD = {"configurable": {"thread_id": os.environ["GRAPH_THREAD"]}}


MEMORIES = ("users", "ann", "memories")


class Conversation(TypedDict):
    steps: Annotated[list[str], operator.add]
    remembered: int


def ran(name: str) -> dict[str, Any]:
    with LOG.open("a") as log:
        log.write(f"{PID} {name}\n")
    return {"steps": [name]}


def greet(state: Conversation) -> dict[str, Any]:
    get_store().put(MEMORIES, "greeting", {"text": "ann says hello"})
    return ran("greet")


def think(state: Conversation) -> dict[str, Any]:
    return ran("think")


def search(state: Conversation) -> dict[str, Any]:
    get_store().put(MEMORIES, "topic", {"text": "ann asks about green tea"})
    return ran("search")


def draft(state: Conversation) -> dict[str, Any]:
    if MODE == "first":
        STUCK.write_text(str(PID))
        threading.Event().wait()  # until the test kills the process
    return ran("draft")


def answer(state: Conversation) -> dict[str, Any]:
    return {**ran("answer"), "remembered": len(get_store().search(MEMORIES, limit=10))}


def build(saver: AgencyCheckpointSaver, store: AgencyStore) -> Any:
    graph = StateGraph(Conversation)
    for node in (greet, think, search, draft, answer):
        graph.add_node(node.__name__, node)  # type: ignore[call-overload]
    graph.add_edge(START, "greet")
    graph.add_edge("greet", "think")
    graph.add_edge("think", "search")
    graph.add_edge("think", "draft")
    graph.add_edge(["search", "draft"], "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=saver, store=store)


def config() -> DataLayerConfig:
    return DataLayerConfig(
        postgresql={"dsn": os.environ["GRAPH_DSN"], "pool_min_size": 1, "pool_max_size": 3},
        redis={"url": os.environ["GRAPH_REDIS_URL"]},
        migration={"auto_migrate": False, "backup_before_migration": False},
        embedded={"data_dir": os.path.join(tempfile.gettempdir(), f"unused-embedded-{PID}")},
    )


async def first() -> None:
    async with asyncio.timeout(120), DataLayer(config()) as dl:
        tenant = dl.tenant(os.environ["GRAPH_TENANT"])
        saver, store = AgencyCheckpointSaver(tenant), AgencyStore(tenant)
        # Each step's checkpoint is stored before the next step starts.
        await build(saver, store).ainvoke({"steps": []}, THREAD, durability="sync")


def resume() -> None:
    with agency_sync.DataLayer(config()) as dl:
        tenant = dl.tenant(os.environ["GRAPH_TENANT"])
        graph = build(AgencyCheckpointSaver(tenant), AgencyStore(tenant))
        started = time.monotonic()
        state = graph.invoke(None, THREAD, durability="sync")
        print(json.dumps({"state": state, "seconds": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    if MODE == "first":
        asyncio.run(first())
    elif MODE == "resume":
        resume()
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
