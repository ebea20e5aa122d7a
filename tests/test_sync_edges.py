"""The synchronous front end and its portal at their edges: an async caller on another loop
gets UsageError where a sync caller does (the portal closed under it, or its loop closed), a
call into a loop that is open but not running is refused instead of waiting for ever, and a
sync user's generator is read in the caller's thread, never on the layer's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agency_data.sync
from agency_data.errors import BackendUnavailable, UsageError
from agency_data.sync import Portal
from tests.conftest import DatabaseDsn, make_config


async def _forever(started: threading.Event) -> None:
    started.set()
    await asyncio.sleep(3600)


async def _one() -> int:
    return 1


async def test_closing_the_portal_fails_a_caller_on_another_loop_with_usage_error() -> None:
    portal = Portal.start("review-acall")
    started = threading.Event()
    waiting = asyncio.ensure_future(portal.acall(_forever(started)))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        await asyncio.to_thread(portal.close)
        done, _ = await asyncio.wait([waiting], timeout=10)
        assert done, "the caller still waits after close"
        outcome: BaseException | None = None
        try:
            waiting.result()
        except BaseException as exc:  # noqa: BLE001 - CancelledError is what the test looks for
            outcome = exc
        assert isinstance(outcome, UsageError), repr(outcome)
    finally:
        waiting.cancel()
        portal.close()


async def test_acall_into_a_closed_loop_is_a_usage_error() -> None:
    loop = asyncio.new_event_loop()
    portal = Portal.of(loop)
    loop.close()
    coro = _one()
    try:
        with pytest.raises(UsageError):
            await portal.acall(coro)
    finally:
        coro.close()  # the bug leaves it unawaited (a RuntimeWarning, an error here)


def test_a_call_into_a_loop_that_is_not_running_is_refused_not_hung() -> None:
    loop = asyncio.new_event_loop()

    async def portal_of_running_loop() -> Portal:
        return Portal.of(asyncio.get_running_loop())  # as integrations.bridge.reach does

    portal = loop.run_until_complete(portal_of_running_loop())
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(portal.call(_one()))
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        caller.join(5)
        assert not caller.is_alive(), "the call waits for a loop nobody runs"
        assert len(outcome) == 1
        assert isinstance(outcome[0], UsageError), repr(outcome[0])
    finally:
        # Run the loop briefly so that a hung caller gets its answer and ends.
        loop.run_until_complete(asyncio.sleep(0.2))
        caller.join(5)
        loop.close()


def test_a_sync_generator_fed_to_stream_store_runs_in_the_callers_thread(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, vector={"dimension": 3})
    with agency_data.sync.DataLayer(config) as dl:
        threads: set[str] = set()

        def items() -> Iterator[dict[str, Any]]:
            for n in range(3):
                threads.add(threading.current_thread().name)
                # Reading as it goes: a sync script's generator uses the sync API.
                dl.fetch_value("SELECT 1")
                yield {"entity_type": "row", "entity_id": str(n), "vector": [1.0, 0.0, 0.0]}

        assert dl.embeddings.stream_store(items(), batch_size=2) == 3
        assert threads == {threading.current_thread().name}
        assert dl.embeddings.count() == 3


def test_a_closed_front_end_says_so(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> None:
    config = make_config(database, redis_url, tmp_path)
    with agency_data.sync.DataLayer(config) as dl:
        agents = dl.agents
    for call in (lambda: dl.agents, lambda: agents.list(), lambda: dl.tenant("a").agents):
        with pytest.raises(UsageError, match="synchronous front end is closed"):
            call()
    never = agency_data.sync.DataLayer(config)
    with pytest.raises(BackendUnavailable, match=r"not connected.*dl\.connect\(\)"):
        never.agents.list()
    never.close()
