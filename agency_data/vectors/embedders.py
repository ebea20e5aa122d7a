"""Text embedders: texts in, vectors inside.

A collection may be given an embedder, so that callers store and search text
(``store_texts``, ``search_text``, ``hybrid_search`` with only the text). Any of these will do,
told apart by what they offer, so that none of their packages is needed here:

- a callable mapping a list of texts to vectors (a list of lists, or a numpy matrix), plain or
  ``async``; a plain one runs in a worker thread, so a slow model or HTTP call does not stall
  the event loop;
- a LangChain ``Embeddings`` (``embed_documents``/``embed_query`` and their async twins);
- a sentence-transformers model (``encode``, or ``encode_document``/``encode_query``).

:class:`Embedder` wraps any of them: texts go in batches of ``batch_size``, at most
``concurrency`` batches at once, and a batch that fails with a transient error (a timeout, a
refused connection, an HTTP 429 or 5xx) is tried again after a backoff, up to ``retries``
times; a batch that takes longer than ``timeout`` seconds counts as timed out. The
embedder's error is quoted in the :class:`EmbedderError`, without the query string of any
URL in it (where API keys travel). What it returns is checked: one finite vector per text,
all of the collection's dimension.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from agency_data.errors import EmbedderError, ValidationError
from agency_data.inputs import brief, check_int, check_seconds
from agency_data.retry import Backoff

__all__ = ["Embedder"]

_Batch = Callable[[list[str]], Awaitable[Any]]
_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_URL_QUERY = re.compile(r"(\w+://[^\s?#'\"]+)\?[^\s'\"]*")
# HTTP clients' own timeouts and connection failures (httpx, requests, aiohttp, openai and
# the clients built on them), known by name so that none of them is imported here.
_TRANSIENT_NAMES = {
    "TimeoutException",
    "ConnectError",
    "ReadError",
    "RemoteProtocolError",
    "Timeout",
    "ConnectionError",
    "ClientConnectionError",
    "ServerTimeoutError",
    "APITimeoutError",
    "APIConnectionError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
}


class Embedder:
    """Any text embedder, batched, bounded and retried (see the module's docstring).

    Usage::

        embedder = Embedder(model, batch_size=32, concurrency=2)
        await dl.embeddings.create_collection("docs", dimension=384, embedder=embedder)
        await dl.embeddings.create_collection("notes", dimension=384, embedder=model)  # same
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int = 64,
        concurrency: int = 4,
        retries: int = 3,
        retry_on: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError),
        timeout: float | None = 120.0,
    ) -> None:
        self.batch_size = check_int(batch_size, "batch_size", 1, 100_000)
        self.concurrency = check_int(concurrency, "concurrency", 1, 1000)
        self.retries = check_int(retries, "retries", 0, 100)
        self.timeout = None if timeout is None else check_seconds(timeout, "timeout", low=0.001)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise ValidationError(
                f"retry_on must be a tuple of exception classes, not {brief(retry_on)}",
                field="retry_on",
            )
        self.retry_on = retry_on
        self.source = source
        self._documents, self._query = _methods(source)
        self._bounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.name = _name(source)

    @classmethod
    def of(cls, source: Any) -> Embedder:
        """``source`` as an :class:`Embedder` (itself, if it is one already)."""
        return source if isinstance(source, Embedder) else cls(source)

    async def documents(self, texts: Sequence[str], dimension: int) -> npt.NDArray[np.float32]:
        """One vector per text, as an ``(n, dimension)`` matrix, in the texts' order."""
        if not texts:
            return np.empty((0, dimension), dtype=np.float32)
        size = self.batch_size
        slots = self._slots()

        async def batch(start: int) -> npt.NDArray[np.float32]:
            async with slots:
                chunk = list(texts[start : start + size])
                raw = await self._attempt(self._documents, chunk, start)
                return _checked(raw, len(chunk), dimension, start, self.name)

        tasks = [asyncio.ensure_future(batch(start)) for start in range(0, len(texts), size)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            # The first batch that fails for good (or the caller's cancellation) stops the rest.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        matrix: npt.NDArray[np.float32] = np.concatenate(parts)
        return matrix

    def _slots(self) -> asyncio.Semaphore:
        # One bound for all of this embedder's calls on a loop, not one per call: concurrent
        # store_texts share the ``concurrency`` batches in flight.
        loop = asyncio.get_running_loop()
        slots = self._bounds.get(loop)
        if slots is None:
            slots = self._bounds[loop] = asyncio.Semaphore(self.concurrency)
        return slots

    async def query(self, text: str, dimension: int) -> npt.NDArray[np.float32]:
        """The vector of a search query (some models embed queries differently)."""
        raw = await self._attempt(self._query, [text], 0)
        row: npt.NDArray[np.float32] = _checked(raw, 1, dimension, 0, self.name)[0]
        return row

    async def _attempt(self, call: _Batch, texts: list[str], start: int) -> Any:
        backoff = Backoff(first=0.2, most=5.0)
        while True:
            try:
                # A hung model or connection is a timeout (transient: tried again), not a hang.
                async with asyncio.timeout(self.timeout):
                    return await call(texts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is the embedder's, reported below
                if backoff.attempts < self.retries and self._transient(exc):
                    await backoff.sleep()
                    continue
                tried = backoff.attempts + 1
                raise EmbedderError(
                    f"the embedder {self.name} failed on texts[{start}:{start + len(texts)}]"
                    f" ({'after ' + str(tried) + ' attempts' if tried > 1 else 'not retried'}"
                    f": {'transient' if self._transient(exc) else 'not a transient error'}):"
                    f" {type(exc).__name__}: {_without_queries(str(exc))}"
                ) from exc

    def _transient(self, exc: BaseException) -> bool:
        # The error, or what caused it (a wrapper's __cause__), a few levels down.
        seen: BaseException | None = exc
        for _ in range(4):
            if seen is None:
                return False
            if isinstance(seen, self.retry_on) or any(
                kind.__name__ in _TRANSIENT_NAMES for kind in type(seen).__mro__
            ):
                return True
            # HTTP clients' errors (httpx, requests, openai) carry the response's status.
            status = getattr(seen, "status_code", None) or getattr(
                getattr(seen, "response", None), "status_code", None
            )
            if status in _TRANSIENT_STATUS:
                return True
            seen = seen.__cause__ or seen.__context__
        return False


def _without_queries(message: str) -> str:
    # HTTP clients quote the URL they called, whose query may carry an API key (?key=...).
    return _URL_QUERY.sub(r"\1?...", message)


def _methods(source: Any) -> tuple[_Batch, _Batch]:
    # Told apart by what they offer; nothing of LangChain or sentence-transformers is imported.
    if isinstance(source, str | bytes):  # a model's name has an ``encode`` too
        _refuse(source)
    if callable(getattr(source, "embed_documents", None)) and callable(
        getattr(source, "embed_query", None)
    ):
        documents = getattr(source, "aembed_documents", None)
        query = getattr(source, "aembed_query", None)

        async def lc_documents(texts: list[str]) -> Any:
            if documents is not None:
                return await documents(texts)
            return await asyncio.to_thread(source.embed_documents, texts)

        async def lc_query(texts: list[str]) -> Any:
            if query is not None:
                return [await query(texts[0])]
            return [await asyncio.to_thread(source.embed_query, texts[0])]

        return lc_documents, lc_query
    if callable(getattr(source, "encode", None)):
        encode_documents = getattr(source, "encode_document", None) or source.encode
        encode_query = getattr(source, "encode_query", None) or source.encode

        async def st_documents(texts: list[str]) -> Any:
            return await asyncio.to_thread(encode_documents, texts)

        async def st_query(texts: list[str]) -> Any:
            return await asyncio.to_thread(encode_query, texts)

        return st_documents, st_query
    if callable(source):
        if _is_async(source):

            async def call_async(texts: list[str]) -> Any:
                return await source(texts)

            return call_async, call_async

        async def call_in_thread(texts: list[str]) -> Any:
            result = await asyncio.to_thread(source, texts)
            return await result if inspect.isawaitable(result) else result

        return call_in_thread, call_in_thread
    _refuse(source)


def _refuse(source: Any) -> NoReturn:
    raise ValidationError(
        f"embedder {brief(source)} is not one: give a callable mapping a list of texts to "
        "vectors, a LangChain Embeddings, a sentence-transformers model, or an Embedder",
        field="embedder",
    )


def _is_async(source: Any) -> bool:
    return inspect.iscoroutinefunction(source) or inspect.iscoroutinefunction(
        getattr(source, "__call__", None)  # noqa: B004 - an object's async __call__
    )


def _name(source: Any) -> str:
    name = getattr(source, "__qualname__", None) or type(source).__qualname__
    return f"{name!r}"


def _checked(
    raw: Any, count: int, dimension: int, start: int, name: str
) -> npt.NDArray[np.float32]:
    where = f"the embedder {name}"
    try:
        matrix = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbedderError(
            f"{where} returned something that is not a list of vectors for texts"
            f"[{start}:{start + count}]: {brief(raw)} ({exc})"
        ) from exc
    if matrix.ndim != 2 or matrix.shape[0] != count:
        shape = "x".join(str(n) for n in matrix.shape) or "a scalar"
        raise EmbedderError(
            f"{where} returned {shape} values for {count} texts (texts[{start}:{start + count}]);"
            " it must return one vector per text"
        )
    if matrix.shape[1] != dimension:
        raise EmbedderError(
            f"{where} makes vectors of {matrix.shape[1]} dimensions; the collection's have "
            f"{dimension}: give the collection an embedder of its dimension"
        )
    if not np.isfinite(matrix).all():
        row = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise EmbedderError(
            f"{where} returned NaN or infinite values for texts[{start + row}]; nothing was stored"
        )
    return matrix
