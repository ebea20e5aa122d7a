"""A portal into an event loop: synchronous code runs the layer's coroutines through it.

The layer is written once, async. Synchronous callers (scripts, notebooks, sync web apps, the
sync methods of the LangChain and LangGraph integrations) reach it through a :class:`Portal`:
either one that owns a private event loop in a daemon thread (``Portal.start()``), or one that
enters the loop an async application already runs (``Portal.of(loop)``), as LangGraph's own
async savers do. Connections, background work (cache invalidation, heartbeats, the audit
sealer) and batching all live on that one loop, so the async and sync faces share state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

from agency_data.errors import UsageError

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """Runs coroutines on one event loop, from any thread.

    Usage::

        portal = Portal.start()                   # a private loop in a daemon thread
        value = portal.call(some_coroutine())     # from any other thread
        portal.close()

        portal = Portal.of(asyncio.get_running_loop())   # an application's own loop
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        self.loop = loop
        # Set when the portal owns the loop's thread (and so stops it at close).
        self._thread = thread
        self._closed = False

    @classmethod
    def start(cls, name: str = "agency-data") -> Portal:
        """A portal with a loop of its own, run by a daemon thread named ``name``."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        ready.wait()
        return cls(loop, thread)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Portal:
        """A portal into ``loop``, which the application runs (and closes) itself."""
        return cls(loop, None)

    @property
    def on_loop(self) -> bool:
        """Whether the calling thread is the one running the loop."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or its exception).

        An interrupt of the waiting thread (Ctrl-C) cancels the coroutine too.
        """
        if self._closed or self.on_loop:
            coro.close()
            self._refuse()
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise
        except BaseException:
            # The caller stopped waiting (KeyboardInterrupt, SystemExit): so does the work.
            future.cancel()
            raise

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the portal's loop from any loop (directly, when it is this one)."""
        if self.on_loop:
            return await coro
        if self._closed:
            coro.close()
            self._refuse()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Iterate ``items`` from the calling thread, one step on the loop per item; leaving the
        loop early closes the async iterator (as ``async for`` would)."""
        try:
            while True:
                try:
                    yield self.call(_next(items))
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(items, "aclose", None)
            if close is not None and not self._closed:
                self.call(close())

    @contextmanager
    def enter(self, manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
        """Use an async context manager as a sync one: entered and exited on the loop."""
        value = self.call(manager.__aenter__())
        try:
            yield value
        except BaseException as exc:
            if not self.call(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.call(manager.__aexit__(None, None, None))

    def close(self) -> None:
        """Stop and close the loop, if the portal owns it; later calls raise UsageError."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join()
        self.loop.close()

    def _refuse(self) -> None:
        if self._closed:
            raise UsageError("this synchronous front end is closed; open a new one")
        raise UsageError(
            "a synchronous method was called on the thread of the event loop it must wait on, "
            "which would wait forever; inside async code, await the async method instead "
            "(for example `await store.aget(...)`, or the async DataLayer)"
        )


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)
