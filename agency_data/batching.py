"""Concurrent calls gathered into one round trip, as DataLoader and ioredis' auto-pipelining do.

Many agents in one process often make the same kind of call at the same moment: read a record
by id, get a cache key, run a lock script. Each on its own costs a round trip; together they
can share one (an ``= ANY(...)`` query, an MGET, a pipeline). A call made while nothing else is
in flight goes out at once, on its own, so a lone caller pays nothing extra; calls made while
others are in flight gather for the rest of the event loop's turn and go out together. Each
caller gets its own result, or its own error.

Writes gather the same way (:class:`GroupCommit`): concurrent single-row inserts become one
multi-row statement, one transaction and one WAL flush, and each caller is answered after
that commit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from agency_data.actor import current_actor

__all__ = ["Coalescer", "GroupCommit", "PointReads"]

I = TypeVar("I")  # noqa: E741 - the item a caller submits
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

# The most items one gathered call carries; more go out in further calls, side by side.
MAX_BATCH = 500


class Coalescer(Generic[I, R]):
    """Calls on items: alone through ``one``, gathered through ``many``.

    ``many`` gets the gathered items in the order they were submitted and returns one entry per
    item, in the same order; an entry that is an :class:`Exception` is raised to that caller
    alone. An exception raised by ``many`` itself reaches every caller of the batch.
    """

    def __init__(
        self,
        one: Callable[[I], Awaitable[R]],
        many: Callable[[list[I]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._one = one
        self._many = many
        self._max_batch = max_batch
        self._waiting: list[tuple[I, asyncio.Future[R], str | None]] | None = None
        self._in_flight = 0
        # True for the loop turn after a batch answered: its callers, woken together, are
        # likely to call again together, so the first of them does not go alone.
        self._answered = False
        self._batches: set[asyncio.Task[None]] = set()

    async def submit(self, item: I) -> R:
        """``item``'s result: at once when nothing else is in flight, else with the turn's batch."""
        if self._in_flight == 0 and self._waiting is None and not self._answered:
            self._in_flight += 1
            try:
                return await self._one(item)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = []
            # In a context of its own: the caller's could hold its transaction.
            loop.call_soon(self._flush, context=contextvars.Context())
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future, current_actor.get()))
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, None
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        # Calls made by different actors never share a batch: its statements name one.
        by_actor: dict[str | None, list[tuple[I, asyncio.Future[R]]]] = {}
        for item, future, actor in waiting:
            by_actor.setdefault(actor, []).append((item, future))
        for actor, calls in by_actor.items():
            context = contextvars.Context()
            if actor is not None:
                context.run(current_actor.set, actor)
            for start in range(0, len(calls), self._max_batch):
                self._start(loop, calls[start : start + self._max_batch], context)

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[I, asyncio.Future[R]]],
        context: contextvars.Context,
    ) -> None:
        task = loop.create_task(self._run(batch), context=context)
        # In flight from now, not from its first step a turn later: a call made in between
        # must join the next batch, not go alone.
        self._in_flight += 1
        self._batches.add(task)
        task.add_done_callback(functools.partial(self._landed, batch))

    def _landed(self, batch: list[tuple[I, asyncio.Future[R]]], task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._in_flight -= 1
        for _, future in batch:  # a task cancelled before its first step answered no one
            if not future.done():
                future.cancel()

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._many([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        if len(results) != len(batch):
            # A broken ``many``: no caller can be matched to a result, so none is answered
            # with one (each gets this error rather than someone else's value).
            results = [
                RuntimeError(f"a gathered call returned {len(results)} results for {len(batch)}")
            ] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller gave up waiting
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if not self._answered:
            self._answered = True
            # Runs after the callers just woken (callbacks run in the order they were queued).
            asyncio.get_running_loop().call_soon(self._cool_down)

    def _cool_down(self) -> None:
        self._answered = False

    async def aclose(self) -> None:
        """Wait for the gathered calls still running (their callers get their answers)."""
        while self._waiting is not None or self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
            await asyncio.sleep(0)  # a batch gathered this turn starts at its end


class PointReads(Generic[K, R]):
    """Reads by key: alone through ``one``, gathered through ``many`` (keys -> rows found).

    A key asked for by several callers of one batch is read once.
    """

    def __init__(
        self,
        one: Callable[[K], Awaitable[R | None]],
        many: Callable[[Sequence[K]], Awaitable[Mapping[K, R]]],
    ) -> None:
        async def gathered(keys: list[K]) -> list[R | None]:
            rows = await many(list(dict.fromkeys(keys)))
            return [rows.get(key) for key in keys]

        self._calls: Coalescer[K, R | None] = Coalescer(one, gathered)

    def get(self, key: K) -> Awaitable[R | None]:
        """The row with ``key``, or None."""
        return self._calls.submit(key)

    async def aclose(self) -> None:
        """Wait for the gathered queries still running."""
        await self._calls.aclose()


class GroupCommit(Generic[I, R]):
    """Single-row writes of concurrent callers, committed together.

    A write made while nothing else is in flight is committed alone, at once, by ``one``;
    writes made while others are in flight are written by ``many`` in one statement (so in one
    transaction), and each caller is answered only after it committed. When the group fails
    for a reason of one row's making (``retry_alone(error)`` says which: a constraint, a bad
    value; the server then wrote nothing), each write is retried on its own, so that only the
    bad row's caller gets an error. Any other failure (the connection lost mid-commit, a
    timeout) reaches every caller of the group, as it would have reached each alone: retrying
    then could write a row twice.
    """

    def __init__(
        self,
        one: Callable[[I], Awaitable[R]],
        many: Callable[[list[I]], Awaitable[Sequence[R]]],
        *,
        retry_alone: Callable[[Exception], bool],
    ) -> None:
        async def grouped(items: list[I]) -> Sequence[R | Exception]:
            try:
                return await many(items)
            except Exception as exc:
                if not retry_alone(exc):
                    raise
            answers: list[R | Exception] = []
            for result in await asyncio.gather(*(one(i) for i in items), return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result  # a cancellation is not an answer
                answers.append(result)
            return answers

        self._calls: Coalescer[I, R] = Coalescer(one, grouped)

    def write(self, item: I) -> Awaitable[R]:
        """Write ``item``; returns once it is committed, with what ``one``/``many`` made of it."""
        return self._calls.submit(item)

    async def aclose(self) -> None:
        """Wait for the group writes still running."""
        await self._calls.aclose()
