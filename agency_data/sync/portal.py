"""A portal into an event loop: synchronous code runs the layer's coroutines through it.

The layer is written once, async. Synchronous callers (scripts, notebooks, sync web apps, the
sync methods of the LangChain and LangGraph integrations) reach it through a :class:`Portal`:
either one that owns a private event loop in a daemon thread (``Portal.start()``), or one that
enters the loop an async application already runs (``Portal.of(loop)``), as LangGraph's own
async savers do. Connections, background work (cache invalidation, heartbeats, the audit
sealer) and batching all live on that one loop, so the async and sync faces share state.

Context. The async layer keeps per-task state in context variables: the ambient transaction,
the acting identity, the current span. Each call runs as a task of its own, in a copy of the
calling thread's context; but inside a synchronous ``with`` block entered through the portal
(``with dl.transaction():``, ``with dl.lock(...)``), every call the thread makes runs in the
one context the block was entered in, as the statements of an ``async with`` block run in one
task. The open blocks are themselves kept in a context variable: each thread has its own (two
threads' transactions never mix), and a thread a framework starts in a copy of the caller's
context (LangGraph's and LangChain's executors) makes its calls inside the caller's blocks.

Iterables. What the layer iterates on its loop must not run the caller's code there: a
generator handed in is read in the caller's thread (:meth:`Portal.feed`, whole; or, for a
stream, a chunk at a time, :meth:`Portal.feed_stream`).

Callbacks. A function a synchronous caller hands to the layer (a transaction's body, a cache
loader, an on-commit hook, a worker's handler) runs in the caller's own thread, which serves
it while it waits for the call that needs it, so the function may call the synchronous API
itself, inside the transaction it was given.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import os
import threading
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
)
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar, overload

from agency_data.errors import UsageError, ValidationError
from agency_data.inputs import brief, check_callable
from agency_data.sync._waiter import CALLER, Waiter

__all__ = ["Portal"]

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")

# How long a closing portal lets the loop's remaining tasks wind down.
_CLOSE_GRACE = 10.0
# Iterables the layer may read on the loop's thread: reading them runs no caller's code.
_HANDED_ON = (list, tuple, set, frozenset, dict, str, bytes, bytearray, range)
# Items read from a caller's stream per hop to its thread.
_FEED_CHUNK = 1024


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
        # The stack of the contexts the open blocks run their calls in: a context variable, so
        # that threads a framework starts in a copy of the caller's context (LangGraph's and
        # LangChain's executors) make their calls inside the caller's blocks too.
        self._blocks: contextvars.ContextVar[tuple[contextvars.Context, ...]] = (
            contextvars.ContextVar(f"agency_data_portal_blocks_{id(self)}", default=())
        )
        # Calls not yet answered, failed with UsageError if the loop stops under them.
        self._waiting: set[Waiter] = set()
        # Set in a child process after os.fork(): the loop's thread did not come along.
        self._forked = False
        if thread is not None:
            _OWNED.add(self)

    @classmethod
    def start(
        cls,
        name: str = "agency-data",
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> Portal:
        """A portal with a loop of its own (``loop_factory()``'s, else asyncio's), run by a
        daemon thread named ``name``."""
        if not isinstance(name, str) or not name:
            raise ValidationError(f"name must be a thread's name, not {brief(name)}", field="name")
        if loop_factory is not None and not callable(loop_factory):
            # (A class is a factory here: uvloop.Loop.)
            raise ValidationError(
                f"loop_factory must make an event loop, not be {brief(loop_factory)}",
                field="loop_factory",
            )
        loop = (loop_factory or asyncio.new_event_loop)()
        if not isinstance(loop, asyncio.AbstractEventLoop):
            raise ValidationError(
                f"loop_factory must make an event loop; it made {brief(loop)}",
                field="loop_factory",
            )
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
        if not isinstance(loop, asyncio.AbstractEventLoop):
            raise ValidationError(f"loop must be an event loop, not {brief(loop)}", field="loop")
        return cls(loop, None)

    @property
    def on_loop(self) -> bool:
        """Whether the calling thread is the one running the loop."""
        return asyncio._get_running_loop() is self.loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every later call raises UsageError)."""
        return self._closed

    # -- calls -------------------------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], context: contextvars.Context | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (or its exception).

        It runs in ``context`` if given, else in the context of the innermost block the
        calling thread has open (see the module's text), else in a copy of the thread's
        own. An interrupt of the waiting thread (Ctrl-C) cancels the coroutine, and the
        interrupt goes on up once the coroutine has finished cancelling.
        """
        if not asyncio.iscoroutine(coro):
            raise ValidationError(
                f"call takes a coroutine (what calling an async function gives), not {brief(coro)}",
                field="coro",
            )
        if self._closed or asyncio._get_running_loop() is self.loop:
            coro.close()
            self.refuse()
        if not self.loop.is_running():
            coro.close()
            self._refuse_stopped()
        if context is not None and not isinstance(context, contextvars.Context):
            coro.close()
            raise ValidationError(
                f"context must be a contextvars.Context, not {brief(context)}", field="context"
            )
        if context is None:
            context = self._block()
        waiter = Waiter(self)
        self._waiting.add(waiter)
        try:
            self.loop.call_soon_threadsafe(waiter.start, coro, context)
        except RuntimeError:
            # The loop was closed by the application (a portal made with Portal.of).
            self._waiting.discard(waiter)
            coro.close()
            raise UsageError(
                "the event loop behind this synchronous front end is closed; open a new one"
            ) from None
        result: T = waiter.wait()
        return result

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the portal's loop from any loop (directly, when it is this one)."""
        if self.on_loop:
            return await coro
        if self._closed:
            coro.close()
            self.refuse()
        if not self.loop.is_running():
            coro.close()
            self._refuse_stopped()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # closed between the check and the call
            coro.close()
            self._refuse_stopped()
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                # Not our caller's cancellation: the portal closed under the call.
                raise UsageError(
                    "this synchronous front end was closed while the call waited"
                ) from None
            raise

    def feed(self, items: Any) -> Any:
        """``items`` for the layer to iterate on the loop, read in the calling thread.

        Collections (lists, tuples, sets, dicts...) and async iterables are handed on as they
        are. Other iterables run the caller's code as they go (a generator that reads with
        the sync API, say), which must not run on the loop's thread: they are read here,
        whole (:meth:`feed_stream` reads a stream a chunk at a time instead).
        """
        if isinstance(items, _HANDED_ON) or not isinstance(items, Iterable):
            return items
        if isinstance(items, AsyncIterable):
            return items
        return list(items)

    def feed_stream(self, items: Any) -> Any:
        """As :meth:`feed`, for an unbounded stream: an async iterator reading ``items`` in the
        thread waiting on the call, ``_FEED_CHUNK`` items at a time."""
        if isinstance(items, (*_HANDED_ON, AsyncIterable)) or not isinstance(items, Iterable):
            return items
        iterator = iter(items)
        return _pulled(self.callback(lambda: list(itertools.islice(iterator, _FEED_CHUNK))))

    def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the plain function ``fn`` on the loop's thread (where the async layer's state
        may be touched safely) and return what it returns."""
        check_callable(fn, "fn")
        return self.call(_plain(fn, args, kwargs))

    def iterate(self, items: AsyncIterator[T]) -> Generator[T, None, None]:
        """Iterate ``items`` from the calling thread, one step on the loop per item; leaving the
        loop early closes the async iterator (as ``async for`` would).

        Every step runs in one context (the open block's, else one of its own), as the steps
        of ``async for`` run in one task.
        """
        if not hasattr(items, "__anext__"):
            raise ValidationError(
                f"iterate takes an async iterator, not {brief(items)}", field="items"
            )
        context = self._block() or contextvars.copy_context()
        try:
            while True:
                try:
                    yield self.call(_next(items), context)
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(items, "aclose", None)
            if close is not None and not self._closed:
                self.call(close(), context)

    # -- blocks ------------------------------------------------------------------------------

    @overload
    def enter(self, manager: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]: ...
    @overload
    def enter(
        self, manager: AbstractAsyncContextManager[T], wrap: Callable[[T, Portal], S]
    ) -> AbstractContextManager[S]: ...
    def enter(
        self,
        manager: AbstractAsyncContextManager[Any],
        wrap: Callable[[Any, Portal], Any] | None = None,
    ) -> AbstractContextManager[Any]:
        """Use an async context manager as a sync one: entered and exited on the loop, with
        the calls made inside the block running in the block's context. ``wrap`` turns the
        value entered into what the ``with`` statement gives (a synchronous twin)."""
        _check_async_manager(manager)
        if wrap is not None:
            check_callable(wrap, "wrap")
        return _Block(self, manager, wrap)

    def aenter(self, manager: AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` on the loop and open a block on the calling thread: its calls run
        in the block's context until :meth:`aexit`. (``enter`` is the ``with`` form.)"""
        _check_async_manager(manager)
        context = self._block() or contextvars.copy_context()
        self._push(context)
        try:
            return self.call(manager.__aenter__(), context)
        except BaseException:
            self._pop()
            raise

    def aexit(
        self,
        manager: AbstractAsyncContextManager[Any],
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Exit ``manager`` (entered by :meth:`aenter`) on the loop and close the block; True
        when the manager swallowed the exception."""
        context = self._block()
        try:
            if exc is not None and not isinstance(exc, Exception):
                # An interrupt (KeyboardInterrupt, SystemExit) must not be raised inside the
                # loop, which would stop: the block sees what async code sees, a cancellation.
                inner = asyncio.CancelledError()
                self.call(manager.__aexit__(type(inner), inner, tb), context)
                return False
            return bool(self.call(manager.__aexit__(exc_type, exc, tb), context))
        except asyncio.CancelledError:
            if exc is not None and not isinstance(exc, Exception):
                return False  # the interrupt goes on up
            raise
        finally:
            self._pop()

    def using(self, manager: AbstractContextManager[T]) -> AbstractContextManager[T]:
        """A sync context manager that sets context variables (``dl.as_actor(...)``), entered
        in the context the calling thread's calls run in, so that they see what it sets."""
        if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
            raise ValidationError(
                f"using takes a context manager, not {brief(manager)}", field="manager"
            )
        return _Using(self, manager)

    # -- callbacks ---------------------------------------------------------------------------

    @overload
    def callback(self, fn: None, *wrap: Callable[[Any, Portal], Any] | None) -> None: ...
    @overload
    def callback(
        self, fn: Callable[..., T], *wrap: Callable[[Any, Portal], Any] | None
    ) -> Callable[..., Awaitable[T]]: ...
    def callback(self, fn: Any, *wrap: Callable[[Any, Portal], Any] | None) -> Any:
        """``fn`` as an async function the layer can await, run in the thread waiting on the
        call that needs it (or, when none waits, in a worker thread).

        ``wrap[i]`` turns the layer's ``i``-th argument into what ``fn`` takes (the sync twin
        of a transaction, say). What is not a function is given back unchanged, for the
        layer to refuse in its own words.
        """
        if fn is None or not callable(fn) or isinstance(fn, type):
            return fn
        portal = self

        async def run_in_caller(*args: Any) -> Any:
            given = tuple(
                _wrapped(arg, wrap[i] if i < len(wrap) else None, portal)
                for i, arg in enumerate(args)
            )
            waiter = CALLER.get()
            if waiter is not None and waiter.serves_callbacks():
                result = await waiter.run_callback(fn, given, contextvars.copy_context())
            else:
                result = await asyncio.to_thread(fn, *given)
            if inspect.isawaitable(result):
                result = await result
            return result

        return run_in_caller

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop and close the loop, if the portal owns it; later calls raise UsageError.

        Calls still waiting (in other threads) are cancelled and raise UsageError.
        """
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        if self.on_loop:
            self.loop.stop()
        else:
            done = threading.Event()
            self.loop.call_soon_threadsafe(
                lambda: self.loop.create_task(_wind_down(self.loop, done))
            )
            done.wait(_CLOSE_GRACE + 5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join()
            self.loop.close()
        for waiter in list(self._waiting):
            waiter.abandon()

    # -- internals ---------------------------------------------------------------------------

    def _push(self, context: contextvars.Context) -> None:
        self._blocks.set((*self._blocks.get(), context))

    def _pop(self) -> None:
        stack = self._blocks.get()
        if stack:
            self._blocks.set(stack[:-1])

    def _block(self) -> contextvars.Context | None:
        stack = self._blocks.get()
        return stack[-1] if stack else None

    def _refuse_stopped(self) -> NoReturn:
        raise UsageError(
            "the event loop behind this synchronous front end is not running (closed, or run "
            "only while run_until_complete lasted): the call would wait forever; make the "
            "integration or front end where its loop runs"
        )

    def refuse(self) -> NoReturn:
        """Raise the UsageError that says why no call can be made here now (closed, forked,
        or on the loop's own thread)."""
        if self._forked:
            raise UsageError(
                "this synchronous front end was made in the parent of this process (before a "
                "fork), and its event loop's thread stayed there; make the DataLayer in each "
                "process (for gunicorn, in a post_fork hook or at the first request)"
            )
        if self._closed:
            raise UsageError("this synchronous front end is closed; open a new one")
        raise UsageError(
            "a synchronous method was called on the thread of the event loop it must wait on, "
            "which would wait forever; inside async code, await the async method instead "
            "(for example `await store.aget(...)`, or the async DataLayer)"
        )


class _Block(Generic[S]):
    """``with`` over an async context manager (see :meth:`Portal.enter`)."""

    __slots__ = ("_manager", "_portal", "_wrap")

    def __init__(
        self,
        portal: Portal,
        manager: AbstractAsyncContextManager[Any],
        wrap: Callable[[Any, Portal], S] | None,
    ) -> None:
        self._portal = portal
        self._manager = manager
        self._wrap = wrap

    def __enter__(self) -> S:
        value = self._portal.aenter(self._manager)
        return value if self._wrap is None else self._wrap(value, self._portal)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._portal.aexit(self._manager, exc_type, exc, tb)


class _Using(Generic[T]):
    """A sync context manager entered in the calling thread's call context (see
    :meth:`Portal.using`)."""

    __slots__ = ("_context", "_manager", "_portal")

    def __init__(self, portal: Portal, manager: AbstractContextManager[T]) -> None:
        self._portal = portal
        self._manager = manager
        self._context: contextvars.Context | None = None

    def __enter__(self) -> T:
        context = self._context = self._portal._block()
        if context is None:
            return self._manager.__enter__()
        return context.run(self._manager.__enter__)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        context = self._context
        if context is None:
            return self._manager.__exit__(exc_type, exc, tb)
        return context.run(self._manager.__exit__, exc_type, exc, tb)


# The portals that own a loop's thread, which a forked child process does not inherit.
_OWNED: weakref.WeakSet[Portal] = weakref.WeakSet()


def _forked() -> None:
    for portal in list(_OWNED):
        portal._forked = True
        portal._closed = True


os.register_at_fork(after_in_child=_forked)


def _check_async_manager(manager: Any) -> None:
    if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
        raise ValidationError(
            f"takes an async context manager, not {brief(manager)}", field="manager"
        )


def _wrapped(value: Any, wrap: Callable[[Any, Portal], Any] | None, portal: Portal) -> Any:
    return value if wrap is None else wrap(value, portal)


async def _pulled(pull: Callable[[], Awaitable[list[Any]]]) -> AsyncIterator[Any]:
    while True:
        chunk = await pull()
        if not chunk:
            return
        for item in chunk:
            yield item


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def _plain(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(*args, **kwargs)


async def _wind_down(loop: asyncio.AbstractEventLoop, done: threading.Event) -> None:
    """Cancel what still runs on a closing portal's loop, and give it time to finish."""
    try:
        others = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=_CLOSE_GRACE)
    finally:
        done.set()
