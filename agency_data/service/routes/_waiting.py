"""Long polls: a wait capped below the request's time limit, ended when the client leaves.

A handler that waits (a claim for work, a lock) runs its wait through :func:`while_connected`:
if the client disconnects first, the wait is cancelled (the library gives back whatever the
cancellation raced: claimed tasks, a granted lock) and :class:`ClientGone` says so; the
handler then undoes what the wait had won, since no one will read the answer. A disconnect
that comes after the check, while the answer is on its way, cannot be seen: the lease or the
lock's TTL is the bound on that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

from agency_data.service.routes._common import state_of

__all__ = ["ClientGone", "longest_wait", "while_connected"]

T = TypeVar("T")

# The share of service.request_timeout a wait may take, and the least left over: the work after
# the wait (one more claim, the answer) must finish before the gate ends the request with 504.
_WAIT_SHARE = 0.9
_MIN_SPARE = 1.0


class ClientGone(Exception):
    """The client disconnected while its request waited; ``won`` is what the work returned
    if it finished all the same (None if it was cancelled), for the handler to give back."""

    def __init__(self, won: Any = None) -> None:
        super().__init__("the client disconnected")
        self.won = won


def longest_wait(request: Request[Any, Any, Any], wait: float) -> float:
    """``wait`` (seconds), capped so that the request ends before the service's time limit."""
    limit = state_of(request).config.request_timeout
    return max(0.0, min(wait, limit * _WAIT_SHARE, limit - _MIN_SPARE))


async def while_connected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """``work``'s result; :class:`ClientGone` (``work`` cancelled) if the client leaves first.

    The request's body must have been read: what the client sends next can only be its
    disconnect.
    """
    doing: asyncio.Future[T] = asyncio.ensure_future(work)
    watching: asyncio.Future[Any] = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait([doing, watching], return_when=asyncio.FIRST_COMPLETED)
        if doing.done() and not watching.done():
            # A disconnect already noticed by the server is delivered on the next turn.
            await asyncio.sleep(0)
    except asyncio.CancelledError:
        await _cancel(doing)
        raise
    finally:
        watching.cancel()
    if watching.done() and not watching.cancelled():
        if not doing.done():
            await _cancel(doing)
            raise ClientGone
        if doing.exception() is None:
            # Done, but nobody to tell: the caller gives the result back.
            raise ClientGone(doing.result())
        raise ClientGone
    return doing.result()


async def _disconnect(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel(doing: asyncio.Future[Any]) -> None:
    doing.cancel()
    # Waited for, so that what the cancelled work gives back is given back before we answer.
    await asyncio.wait({doing})
    if not doing.cancelled():
        doing.exception()  # retrieved: its error no longer has anyone to go to
