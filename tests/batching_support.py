"""Shared by the tests of gathered calls (agency_data.batching)."""

from __future__ import annotations

from typing import Any

import psycopg.waiting
import pytest

from agency_data.batching import Coalescer


@pytest.fixture
def yielding_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make psycopg hand the event loop back before it polls a socket.

    For up to 5 ms psycopg 3.3 polls a pipelined query's socket without yielding, so a quick
    lone query can be answered before the next caller even runs, and which calls gather
    would then depend on timing. Tests that count gathered calls use this to count the same
    way every time.
    """
    monkeypatch.setattr(psycopg.waiting, "MAX_BUSY_TIME", 0.0)


def spy(calls: Coalescer[Any, Any]) -> dict[str, list[int]]:
    """Record how many items each call of ``calls`` carried: ``one`` for a call that went
    alone, ``many`` for a gathered one (the calls still run)."""
    seen: dict[str, list[int]] = {"one": [], "many": []}
    one, many = calls._one, calls._many

    async def counted_one(item: Any) -> Any:
        seen["one"].append(1)
        return await one(item)

    async def counted_many(items: list[Any]) -> Any:
        seen["many"].append(len(items))
        return await many(items)

    calls._one, calls._many = counted_one, counted_many
    return seen


def check_gathered(seen: dict[str, list[int]], total: int) -> None:
    """All ``total`` calls were made, the first alone and the rest gathered. Now and then the
    first is answered before the second caller even runs, which then goes alone too."""
    assert len(seen["one"]) <= 2, seen
    assert len(seen["one"]) + sum(seen["many"]) == total, seen
    assert seen["many"], seen
