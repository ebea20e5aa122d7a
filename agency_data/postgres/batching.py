"""Concurrent point reads gathered into one query, as DataLoader does.

Many agents in one process often read records by id at the same moment. Each read on its own
costs a round trip; together they can share one ``= ANY(...)`` query. A read made while nothing
else is waiting goes out at once, on its own (a lone caller pays nothing extra); reads made
while others are in flight gather for the rest of the event loop's turn and go out together.
Each caller gets its own row (or None), or the error of the shared query.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from agency_data._tasks import cancel_and_wait

__all__ = ["PointReads"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")
# The most keys one gathered query carries; more wait for the next.
_MAX_BATCH = 500


class PointReads(Generic[K, R]):
    """Reads by key: alone through ``one``, gathered through ``many`` (keys -> rows found)."""

    def __init__(
        self,
        one: Callable[[K], Awaitable[R | None]],
        many: Callable[[Sequence[K]], Awaitable[Mapping[K, R]]],
    ) -> None:
        self._one = one
        self._load = many
        self._waiting: dict[K, list[asyncio.Future[R | None]]] | None = None
        self._in_flight = 0
        self._loads: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> R | None:
        """The row with ``key``, or None."""
        if self._in_flight == 0 and self._waiting is None:
            # Nobody else is reading: this one goes out now, alone.
            self._in_flight += 1
            try:
                return await self._one(key)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = {}
            # In a context of its own: the caller's could hold its transaction.
            loop.call_soon(self._flush, context=contextvars.Context())
        future: asyncio.Future[R | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, None
        if not waiting:
            return
        keys = list(waiting)
        for start in range(0, len(keys), _MAX_BATCH):
            part = {k: waiting[k] for k in keys[start : start + _MAX_BATCH]}
            task = asyncio.get_running_loop().create_task(self._run(part))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    async def _run(self, waiting: dict[K, list[asyncio.Future[R | None]]]) -> None:
        self._in_flight += 1
        try:
            rows = await self._load(list(waiting))
        except BaseException as exc:
            for futures in waiting.values():
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
        for key, futures in waiting.items():
            row = rows.get(key)
            for future in futures:
                if not future.done():
                    future.set_result(row)

    async def aclose(self) -> None:
        """Cancel the gathered queries still running."""
        for task in list(self._loads):
            await cancel_and_wait(task)
