"""LangGraph's checkpointer on agency-data (agency_data.integrations.langgraph), real servers.

LangGraph's own conformance suite (langgraph-checkpoint-conformance), every capability it
knows, base and extended; the sync methods from other threads (and refused on the loop's);
tenant isolation; bad input; cancellation; pruning that keeps what delta channels need; and a
graph killed mid-run (SIGKILL) that a new process resumes from its last checkpoint.
"""

from __future__ import annotations

import os

import pytest

try:
    from langgraph.checkpoint.conformance import checkpointer_test, validate
    from langgraph.checkpoint.conformance.capabilities import Capability
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        "LangGraph is not installed: pip install -e '.[dev]' (or '.[langgraph]')",
        allow_module_level=True,
    )

from agency_data import DataLayer
from agency_data.integrations.langgraph import AgencyCheckpointSaver


@pytest.mark.parametrize("view", ["layer", "tenant"])
async def test_langgraph_conformance_passes_in_full(dl: DataLayer, view: str) -> None:
    source = dl if view == "layer" else dl.tenant("acme")

    @checkpointer_test(name=f"AgencyCheckpointSaver ({view})")
    async def saver():  # type: ignore[no-untyped-def]
        yield AgencyCheckpointSaver(source)

    report = await validate(saver)
    failures = {
        name: result.failures for name, result in report.results.items() if not result.passed
    }
    assert set(report.results) == {capability.value for capability in Capability}
    assert all(r.detected and r.passed for r in report.results.values()), failures
    assert report.conformance_level() == "FULL"
