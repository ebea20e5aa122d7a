"""Small asyncio helpers shared by the background tasks (listeners, lock renewal, watchers)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]

_GRACE = 5.0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is None:
        return
    # Cancelled again until it takes: on Python 3.11 asyncio.wait_for (which psycopg_pool
    # waits for a connection with) drops a cancellation that lands as its result arrives.
    # The grace between tries leaves room for the task's own cleanup.
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=_GRACE)
    with contextlib.suppress(asyncio.CancelledError):
        await task
