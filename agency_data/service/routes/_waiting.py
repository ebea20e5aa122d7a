"""Long polls: a wait capped below the request's time limit, ended when the client leaves.

A handler that waits (a claim for work, a lock) runs its wait through :func:`while_connected`.
Without it, a client's disconnect would go unnoticed (the server does not cancel a handler
when its client leaves): the wait would go on and take a task or a lock for nobody. With it,
the wait is cancelled (the library gives back what the cancellation raced), what it won all
the same is given back, and :class:`ClientGone` says so. A disconnect that comes after the
check, while the answer is on its way, cannot be seen: the lease or the lock's TTL bounds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request

from agency_data.errors import AgencyDataError
from agency_data.service.routes._common import state_of

__all__ = ["ClientGone", "longest_wait", "while_connected"]

T = TypeVar("T")

_log = logging.getLogger("agency_data.service")
# Give-backs still running after their request ended; held so they are not collected.
_GIVING_BACK: set[asyncio.Future[None]] = set()

# The share of service.request_timeout a wait may take, and the least left over: the work after
# the wait (one more claim, the answer) must finish before the gate ends the request with 504.
_WAIT_SHARE = 0.9
_MIN_SPARE = 1.0


class ClientGone(Exception):
    """The client disconnected, or the service began to stop, while its request waited (what
    the wait won was given back)."""


def longest_wait(request: Request[Any, Any, Any], wait: float) -> float:
    """``wait`` (seconds), capped so that the request ends before the service's time limit."""
    limit = state_of(request).config.request_timeout
    return max(0.0, min(wait, limit * _WAIT_SHARE, limit - _MIN_SPARE))


async def while_connected(
    request: Request[Any, Any, Any],
    work: Awaitable[T],
    give_back: Callable[[T], Awaitable[Any]],
) -> T:
    """``work``'s result; :class:`ClientGone` if the client leaves first.

    ``work`` is then cancelled, and if it finished all the same, ``give_back`` undoes what it
    won (claimed tasks, a granted lock): nobody would read the answer. The same happens when
    the request itself is cancelled (the service's time limit). The request's body must have
    been read: what the client sends next can only be its disconnect.
    """
    doing: asyncio.Future[T] = asyncio.ensure_future(work)
    watching: asyncio.Future[Any] = asyncio.ensure_future(_disconnect_or_stop(request))
    try:
        await asyncio.wait([doing, watching], return_when=asyncio.FIRST_COMPLETED)
        if doing.done() and not watching.done():
            # A disconnect the server has already seen is delivered on the next turn.
            await asyncio.sleep(0)
    except asyncio.CancelledError:
        await _abandon(doing, give_back)
        raise
    finally:
        watching.cancel()
    if watching.done() and not watching.cancelled() and watching.exception() is None:
        await _abandon(doing, give_back)
        raise ClientGone("the client disconnected")
    return doing.result()


async def _disconnect_or_stop(request: Request[Any, Any, Any]) -> None:
    # The service stopping ends a wait as the client leaving does: the wait's answer (nothing
    # claimed, no lock) goes out at once, rather than the shutdown waiting for the wait.
    stopping = asyncio.ensure_future(state_of(request).stopping.wait())
    try:
        while not stopping.done():
            receiving = asyncio.ensure_future(request.receive())
            await asyncio.wait([receiving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                return
            if receiving.result()["type"] == "http.disconnect":
                return
    finally:
        stopping.cancel()


async def _abandon(doing: asyncio.Future[T], give_back: Callable[[T], Awaitable[Any]]) -> None:
    """Cancel ``doing`` and give back what it won if it finished anyway; run to its end even
    if the caller is cancelled again meanwhile."""

    async def run() -> None:
        doing.cancel()
        await asyncio.wait([doing])
        if doing.cancelled() or doing.exception() is not None:
            return  # it won nothing (its error has nobody to go to)
        try:
            await give_back(doing.result())
        except AgencyDataError as exc:
            _log.warning("what a request won as its client left was not given back: %s", exc)

    task = asyncio.ensure_future(run())
    _GIVING_BACK.add(task)
    task.add_done_callback(_GIVING_BACK.discard)
    await asyncio.shield(task)
