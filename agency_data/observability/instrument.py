"""Timing and tracing of every public operation: the :func:`observed` decorator.

A store method marked ``@observed("agents.get")`` is timed into the layer's
``agency_data_query_duration_seconds`` histogram and, while OpenTelemetry tracing is on, runs
in a span of its own that is a child of the caller's. The object it is called on carries the
:class:`Telemetry` as ``_telemetry`` (stores take it from their Database).
"""

from __future__ import annotations

import asyncio
import functools
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from agency_data.config import MonitoringConfig
from agency_data.observability.timings import BUCKETS, Timings

if TYPE_CHECKING:
    from agency_data.observability.tracing import Tracing

__all__ = ["Operation", "ProbeQuery", "Telemetry", "current_operation", "observed"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

OUTCOMES = ("ok", "error", "cancelled")
# (collection, tenant) pairs whose searches the recall probe keeps at most.
_MAX_PROBED = 64


@dataclass(frozen=True)
class ProbeQuery:
    """A search the recall probe replays: its vector, size, filter and index settings."""

    vector: Any
    limit: int
    filter: Mapping[str, Any] | None
    ef_search: int | None
    probes: int | None


class Operation:
    """The histograms of one operation (and tenant, when tenants are labels), one per outcome."""

    __slots__ = ("cancelled", "error", "name", "ok", "tenant")

    def __init__(self, name: str, tenant: str | None) -> None:
        self.name = name
        self.tenant = tenant
        self.ok = Timings()
        self.error = Timings()
        self.cancelled = Timings()

    def outcomes(self) -> tuple[tuple[str, Timings], ...]:
        """``(outcome, timings)`` pairs, in :data:`OUTCOMES` order."""
        return (("ok", self.ok), ("error", self.error), ("cancelled", self.cancelled))


# The operation running in this task and the object it runs on (whose tenant the slow-query
# log names), for the slow-query log.
current_operation: ContextVar[tuple[Operation, Any] | None] = ContextVar(
    "agency_data_operation", default=None
)


class Telemetry:
    """The instruments of one DataLayer: operation timings, counters, and tracing if on.

    Made with the DataLayer (no I/O, nothing global) and shared by its stores; the metrics
    registry (:class:`~agency_data.observability.metrics.Metrics`) reads it when scraped.
    """

    def __init__(self, config: MonitoringConfig | None = None) -> None:
        self.config = config if config is not None else MonitoringConfig()
        self.metrics = self.config.metrics
        self.by_tenant = self.config.tenant_labels
        self._tracing: Tracing | None = None
        self.timing_only = self.metrics and not self.by_tenant
        self.operations: dict[Any, Operation] = {}
        # (collection, kind) -> Timings of vector searches.
        self.searches: dict[tuple[str, str], Timings] = {}
        self.slow_queries = 0
        self.denials: dict[str, int] = {"authentication": 0, "permission": 0}
        # Outbox messages Redis refused and this process's relay set aside (see outbox.relay).
        self.outbox_refused = 0
        # The recall probe's queries (kept by the searches) and its latest estimates.
        self.probe_rate = self.config.recall_sample_rate if self.config.recall_probe else 0.0
        self.probe_queries: dict[tuple[str, str], deque[ProbeQuery]] = {}
        self.recall: dict[str, float] = {}

    @property
    def tracing(self) -> Tracing | None:
        """Spans for the operations, when OpenTelemetry is set up (see :mod:`.tracing`)."""
        return self._tracing

    @tracing.setter
    def tracing(self, tracing: Tracing | None) -> None:
        self._tracing = tracing
        self.timing_only = self.metrics and not self.by_tenant and tracing is None

    @classmethod
    def off(cls) -> Telemetry:
        """Instruments that record nothing (for parts used without a DataLayer)."""
        return cls(MonitoringConfig(metrics=False, tracing=False, slow_query_ms=0))

    @property
    def quiet(self) -> bool:
        """True when neither metrics nor traces are taken: calls go straight through."""
        return not self.metrics and self.tracing is None

    def operation(self, name: str, tenant: str | None = None) -> Operation:
        """The histograms of ``name`` (made on first use)."""
        key: Any = (name, tenant) if self.by_tenant else name
        found = self.operations.get(key)
        if found is None:
            found = self.operations[key] = Operation(name, tenant if self.by_tenant else None)
        return found

    def search(self, collection: str, kind: str) -> Timings:
        """The histogram of vector searches of ``kind`` in ``collection``."""
        key = (collection, kind)
        found = self.searches.get(key)
        if found is None:
            found = self.searches[key] = Timings()
        return found

    def keep_probe_query(self, collection: str, tenant: str, query: ProbeQuery) -> None:
        """Keep a search for the recall probe (the most recent ``recall_samples`` are kept)."""
        key = (collection, tenant)
        kept = self.probe_queries.get(key)
        if kept is None:
            if len(self.probe_queries) >= _MAX_PROBED:
                # Many tenants: the oldest kept pair makes room (each costs exact scans).
                del self.probe_queries[next(iter(self.probe_queries))]
            kept = self.probe_queries[key] = deque(maxlen=self.config.recall_samples)
        kept.append(query)

    def record(self, name: str, seconds: float) -> None:
        """Count one successful call of ``name`` (for code that times itself)."""
        op = self.operations.get(name) or self.operation(name)
        timings = op.ok
        timings.counts[bisect_left(BUCKETS, seconds)] += 1
        timings.sum += seconds

    def failed(self, name: str, exc: BaseException, seconds: float) -> None:
        """Count one call of ``name`` that raised ``exc`` (cancelled, or an error)."""
        _failed(self, self.operations.get(name) or self.operation(name), exc, seconds)

    def count_denial(self, kind: str) -> None:
        """Count a refused login (``authentication``) or a refused row or table (``permission``)."""
        self.denials[kind] = self.denials.get(kind, 0) + 1


def observed(
    name: str, *, system: str = "postgresql"
) -> Callable[
    [Callable[Concatenate[S, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
]:
    """Time (and trace) a public async method as operation ``name``, such as ``agents.get``.

    ``system`` is the backend it talks to (``postgresql`` or ``redis``), for its span.
    """
    family, _, verb = name.rpartition(".")

    def decorate(
        fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
        # Only SQL reaches the slow-query log, which reads the running operation.
        tells_sql = system == "postgresql"

        @functools.wraps(fn)
        async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            telemetry: Telemetry = self._telemetry  # type: ignore[attr-defined]
            if telemetry.timing_only:
                # The common case, kept to a few hundred nanoseconds: a coalesced call costs a
                # few microseconds in all.
                op = telemetry.operations.get(name) or telemetry.operation(name)
                token = current_operation.set((op, self)) if tells_sql else None
                start = perf_counter()
                try:
                    result = await fn(self, *args, **kwargs)
                except BaseException as exc:
                    _failed(telemetry, op, exc, perf_counter() - start)
                    raise
                finally:
                    if token is not None:
                        current_operation.reset(token)
                seconds = perf_counter() - start
                timings = op.ok
                timings.counts[bisect_left(BUCKETS, seconds)] += 1
                timings.sum += seconds
                return result
            if telemetry.quiet:
                return await fn(self, *args, **kwargs)
            return await _observe(telemetry, name, system, family, verb, fn, self, args, kwargs)

        return run

    return decorate


async def _observe(
    telemetry: Telemetry,
    name: str,
    system: str,
    family: str,
    verb: str,
    fn: Callable[..., Coroutine[Any, Any, R]],
    target: Any,
    args: Any,
    kwargs: Any,
) -> R:
    # Traced, or timed per tenant: each costs far more than this function's own overhead.
    tenant = tenant_of(target)
    op = telemetry.operation(name, tenant)
    token = current_operation.set((op, target))
    start = perf_counter()
    try:
        if telemetry.tracing is not None:
            collection = getattr(target, "span_collection", family)
            named = tenant if telemetry.by_tenant else None
            async with telemetry.tracing.span(system, verb, collection, named):
                result = await fn(target, *args, **kwargs)
        else:
            result = await fn(target, *args, **kwargs)
    except BaseException as exc:
        if telemetry.metrics:
            _failed(telemetry, op, exc, perf_counter() - start)
        raise
    finally:
        current_operation.reset(token)
    if telemetry.metrics:
        op.ok.observe(perf_counter() - start)
    return result


def _failed(telemetry: Telemetry, op: Operation, exc: BaseException, seconds: float) -> None:
    if isinstance(exc, asyncio.CancelledError):
        op.cancelled.observe(seconds)
    else:
        op.error.observe(seconds)
        _count_denial(telemetry, exc)


def tenant_of(target: Any) -> str | None:
    """The tenant an observed object serves, if it names one."""
    # Stores name their tenant ``tenant``, scopes ``tenant_id``; dl.tenant is a method.
    for attribute in ("tenant", "tenant_id"):
        value = getattr(target, attribute, None)
        if isinstance(value, str):
            return value
    return None


_AUTHENTICATION = frozenset({"28000", "28P01"})
_PERMISSION = frozenset({"42501"})


def _count_denial(telemetry: Telemetry, exc: BaseException) -> None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _AUTHENTICATION:
        telemetry.count_denial("authentication")
    elif sqlstate in _PERMISSION:
        telemetry.count_denial("permission")
