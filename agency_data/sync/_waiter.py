"""One synchronous call in flight through a :class:`~agency_data.sync.portal.Portal`: the task
on the loop, the lock its caller sleeps on, and the callbacks the caller serves meanwhile."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agency_data._tasks import cancel_and_wait
from agency_data.errors import UsageError

if TYPE_CHECKING:
    from agency_data.sync.portal import Portal

__all__ = ["CALLER", "Waiter"]

# The call a task (and the tasks it starts) was made for: where callbacks are sent to run.
CALLER: contextvars.ContextVar[Waiter | None] = contextvars.ContextVar(
    "agency_data_portal_caller", default=None
)


class Waiter:
    """One call in flight: the task on the loop, and the lock its caller sleeps on.

    A bare lock is the cheapest way to wake a thread in CPython (concurrent.futures' Future
    takes a Condition and a list of callbacks). The loop's thread releases it when the task
    is done, and also when a callback is queued for the caller to run.
    """

    __slots__ = (
        "_callbacks",
        "_cancelled",
        "_done",
        "_error",
        "_lock",
        "_portal",
        "_result",
        "_serving",
        "_task",
    )

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._lock = threading.Lock()
        self._lock.acquire()
        self._task: asyncio.Task[Any] | None = None
        self._done = False
        self._cancelled = False
        self._serving = True
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: deque[
            tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context, asyncio.Future[Any]]
        ] = deque()

    # On the loop's thread.

    def start(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None) -> None:
        try:
            self._start(coro, context)
        except BaseException as exc:  # noqa: BLE001 - the caller gets it; the loop goes on
            coro.close()
            self._finish(None, exc)

    def _start(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None) -> None:
        if self._cancelled:
            coro.close()
            self._finish(None, asyncio.CancelledError())
            return
        if context is None:
            # This callback runs in a copy of the caller's context (call_soon_threadsafe
            # made it); the task copies it again, with the caller noted.
            CALLER.set(self)
            task = self._portal.loop.create_task(coro)
        else:
            context.run(CALLER.set, self)
            task = self._portal.loop.create_task(coro, context=context)
        self._task = task
        task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._finish(None, asyncio.CancelledError())
            return
        error = task.exception()
        self._finish(None if error is not None else task.result(), error)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._done = True
        self._portal._waiting.discard(self)
        self._wake()

    def _wake(self) -> None:
        # Only the loop's thread wakes the caller, so this test and the release cannot race
        # another waker; an unlocked lock is a wake-up the caller has not taken yet.
        if self._lock.locked():
            self._lock.release()

    def serves_callbacks(self) -> bool:
        return self._serving and not self._done

    def run_callback(
        self, fn: Callable[..., Any], args: tuple[Any, ...], context: contextvars.Context
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._portal.loop.create_future()
        self._callbacks.append((fn, args, context, future))
        self._wake()
        return future

    def cancel(self) -> None:
        if self._done:
            return
        task = self._task
        if task is None:
            self._cancelled = True
        else:
            self._portal.loop.create_task(cancel_and_wait(task))

    def abandon(self) -> None:
        """The loop stopped before answering (any thread): fail the call."""
        if not self._done:
            self._error = asyncio.CancelledError()
            self._done = True
            if self._lock.locked():
                self._lock.release()

    # On the caller's thread.

    def wait(self) -> Any:
        lock = self._lock
        try:
            while True:
                lock.acquire()
                if self._done:
                    break  # callbacks still queued were for a call now over: not run
                if self._callbacks:
                    self._serve()
        except BaseException:
            self._interrupted()
            raise
        error = self._error
        if error is None:
            return self._result
        if isinstance(error, asyncio.CancelledError) and self._portal._closed:
            raise UsageError(
                "this synchronous front end was closed while the call waited"
            ) from error
        raise error

    def _serve(self) -> None:
        loop = self._portal.loop
        while self._callbacks:
            fn, args, context, future = self._callbacks.popleft()
            if future.done():
                continue  # cancelled meanwhile (the call that needed it was)
            self._portal._push(context)
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - handed to the layer, which raises it
                loop.call_soon_threadsafe(_resolve, future, None, exc)
            except BaseException:
                # An interrupt inside the callback stops the whole call (see wait()).
                loop.call_soon_threadsafe(future.cancel)
                raise
            else:
                loop.call_soon_threadsafe(_resolve, future, result, None)
            finally:
                self._portal._pop()

    def _interrupted(self) -> None:
        """The caller stopped waiting (Ctrl-C, SystemExit): cancel the call, and wait until it
        has finished cancelling, so that what it was doing is undone when the interrupt goes
        on up. A second interrupt stops this wait."""
        self._serving = False
        loop = self._portal.loop
        if self._done or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.cancel)
        while not self._done:
            self._lock.acquire()
            while self._callbacks:
                future = self._callbacks.popleft()[3]
                loop.call_soon_threadsafe(future.cancel)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
