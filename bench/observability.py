"""What observability costs the hot paths: metrics on, and metrics with tracing, against off.

Three DataLayers on the bench's own servers and database, the same data for all, the L1 cache
off in each (so a cache ``get`` is an L2 read, and the three layers' hot paths differ only in
their ``monitoring`` section):

- off: ``monitoring={"metrics": False, "slow_query_ms": 0}``, no tracer provider: every
  ``@observed`` call goes straight through and the pools use psycopg's own cursor;
- metrics on: ``MonitoringConfig()`` as shipped (metrics on, the slow-query log at 1,000 ms,
  so the pools' statements go through the timing cursor);
- metrics + tracing: the same, connected while an OpenTelemetry SDK ``TracerProvider`` was the
  global one (the layer picks tracing up at connect): a span per call, SQL comments on (the
  default), so statements carry their ``traceparent`` and are no longer prepared. Spans go
  through a ``BatchSpanProcessor``, as in production, to an exporter that only counts them
  (no I/O): its cost is the SDK's, not a collector's. The global provider is set for that
  connect only and put back at once, so no other layer in the run is traced.

Hot paths: ``agents.get`` (no cache) with 64 concurrent callers and with one, ``tasks.create``
with 64 callers, and a cache ``get`` that reaches Redis with 256 callers. Each round runs the
three layers one after the other, in an order that rotates from round to round, so drift on
a shared machine hits all three. Each layer's runs last about the same time (their length is
set from a calibration run of that layer), so a slow variant does not stretch the scenario.
Each row's ratio is the median over the rounds of that round's on/off ratio, and its two
figures are the ones of that round (the medians of each over all rounds are in its extra).

Target (issue 13): metrics on cost at most 5%, so each metrics row needs >= 0.95x off. The
tracing rows have no target; their extra holds spans exported against calls traced, equal
when the batch processor dropped none.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from agency_data import DataLayer, DataLayerConfig
from agency_data.config import MonitoringConfig
from bench.context import Bench
from bench.databases import equalize
from bench.harness import Result, percentiles

__all__ = ["observability"]

SCENARIO = "observability"
TARGET = ">= 0.95x off"
OFF = MonitoringConfig(metrics=False, slow_query_ms=0)
ON = MonitoringConfig()
CACHE_KEY = "bench-observability-hot"
CACHE_VALUE = {"capabilities": ["search", "plan"], "score": 0.93, "owner": "agent-42"}

Op = Callable[[], Awaitable[Any]]


@dataclass
class Variant:
    """One layer under test and what was measured on it."""

    name: str
    dl: DataLayer
    rates: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HotPath:
    """A hot path: the operation's name in the metrics, its callers, and how to call it."""

    key: str
    label: str
    operation: str
    callers: int
    make: Callable[[DataLayer], Op]


class SpanCounter:
    """An OpenTelemetry tracer provider whose spans are batched and then only counted."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        counter = self

        class Counting(SpanExporter):
            # Runs on the processor's worker thread; the event loop never touches the count.
            def export(self, spans: Any) -> SpanExportResult:
                counter.exported += len(spans)
                return SpanExportResult.SUCCESS

        self.exported = 0
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(Counting()))

    def flush(self) -> int:
        """Spans exported so far, after the queued ones have gone."""
        self.provider.force_flush()
        return self.exported

    def shutdown(self) -> None:
        """Stop the processor's worker thread."""
        self.provider.shutdown()


def span_counter() -> SpanCounter | str:
    """A :class:`SpanCounter`, or why there can be none (the SDK is not installed)."""
    try:
        return SpanCounter()
    except ImportError as exc:
        return (
            f"not measured: the OpenTelemetry SDK is not importable ({exc.name}); "
            "pip install opentelemetry-sdk"
        )


@asynccontextmanager
async def globally_traced(spans: SpanCounter) -> AsyncIterator[None]:
    """``spans``' provider as OpenTelemetry's global one, then whatever was there before.

    OpenTelemetry lets the global provider be set once per process; like its own tests, this
    resets that guard to set it, and again to put the previous one back.
    """
    from opentelemetry import trace

    guard = trace._TRACER_PROVIDER_SET_ONCE
    before, was_done = trace._TRACER_PROVIDER, guard._done
    guard._done = False
    trace.set_tracer_provider(spans.provider)
    try:
        yield
    finally:
        trace._TRACER_PROVIDER = before
        guard._done = was_done


def layer_config(base: DataLayerConfig, monitoring: MonitoringConfig) -> DataLayerConfig:
    """``base`` (the bench's servers and database) with ``monitoring`` and no L1 cache."""
    cache = base.cache.model_copy(update={"l1": False})
    return base.model_copy(update={"monitoring": monitoring, "cache": cache})


async def observability(b: Bench) -> list[Result]:
    """ops/s of four hot paths with metrics off, on, and on with tracing, interleaved."""
    spans = span_counter()
    # Many short runs: the shorter the time between a pair's two runs, the less of a shared
    # machine's drift comes between them.
    rounds = max(b.runs, b.size(15, 31))
    seconds = 0.15 if b.quick else 0.3  # per timed run
    async with AsyncExitStack() as stack:
        b.step("observability: connecting the layers (off, metrics on, metrics + tracing)")
        off = await stack.enter_async_context(DataLayer(layer_config(b.dl.config, OFF)))
        on = await stack.enter_async_context(DataLayer(layer_config(b.dl.config, ON)))
        variants = [Variant("off", off), Variant("metrics on", on)]
        if isinstance(spans, SpanCounter):
            stack.callback(spans.shutdown)
            async with globally_traced(spans):
                traced = await stack.enter_async_context(DataLayer(layer_config(b.dl.config, ON)))
            variants.append(Variant("metrics + tracing", traced))
        _check_wiring(variants)

        paths = await _paths(off)
        await equalize(*(v.dl.pool for v in variants))
        for path in paths:
            b.step(f"observability: {path.label}, {rounds} rounds")
            await _measure(path, variants, rounds, seconds)
        exported = spans.flush() if isinstance(spans, SpanCounter) else None
        _check_counts(paths, variants)
        return _results(paths, variants, spans if isinstance(spans, str) else None, exported)


def _check_wiring(variants: list[Variant]) -> None:
    # The three must differ in what they record, or the comparison measures nothing.
    off, on = variants[0].dl._telemetry, variants[1].dl._telemetry
    assert off.quiet, "the off layer records nothing"
    assert on.metrics, "the metrics layer times calls"
    assert on.tracing is None, "the metrics layer is not traced"
    if len(variants) > 2:
        traced = variants[2].dl._telemetry
        assert traced.metrics, "the traced layer times calls"
        assert traced.tracing is not None, "the traced layer has a tracer"


async def _paths(off: DataLayer) -> list[HotPath]:
    """The hot paths, with their data made (through the off layer; the three share it)."""
    agents = [
        await off.agents.create(name=f"obs-{i}", type="worker", capabilities={"i": i})
        for i in range(200)
    ]
    ids = itertools.cycle([a.id for a in agents])
    await off.cache.set(CACHE_KEY, CACHE_VALUE, ttl=3600)
    counter = itertools.count()

    def agents_get(dl: DataLayer) -> Op:
        async def op() -> None:
            await dl.agents.get(next(ids), cached=False)

        return op

    def tasks_create(dl: DataLayer) -> Op:
        async def op() -> None:
            await dl.tasks.create(type="bench-observability", data={"n": next(counter)})

        return op

    def cache_get(dl: DataLayer) -> Op:
        async def op() -> None:
            value = await dl.cache.get(CACHE_KEY)
            assert value is not None, "the cache reads the key from Redis"

        return op

    return [
        HotPath("agents-64", "dl.agents.get (no cache), 64 callers", "agents.get", 64, agents_get),
        HotPath("tasks-64", "dl.tasks.create, 64 callers", "tasks.create", 64, tasks_create),
        HotPath(
            "cache-256", "cache get, L2 hit (L1 off), 256 callers", "cache.get", 256, cache_get
        ),
        HotPath("agents-1", "dl.agents.get (no cache), 1 caller", "agents.get", 1, agents_get),
    ]


async def _run(op: Op, callers: int, total: int) -> tuple[float, list[float]]:
    """ops/s of ``callers`` loops sharing ``total`` calls; per-call ms when there is one caller."""
    each = total // callers
    samples: list[float] = []

    async def loop() -> None:
        for _ in range(each):
            await op()

    async def timed_loop() -> None:
        clock = time.perf_counter
        for _ in range(each):
            started = clock()
            await op()
            samples.append((clock() - started) * 1000)

    started = time.perf_counter()
    if callers == 1:
        await timed_loop()
    else:
        await asyncio.gather(*(loop() for _ in range(callers)))
    return each * callers / (time.perf_counter() - started), samples


async def _measure(path: HotPath, variants: list[Variant], rounds: int, seconds: float) -> None:
    ops = [path.make(v.dl) for v in variants]
    # Multiples of the callers, so that every call counted here is made.
    warm = path.callers * max(20, 200 // path.callers)
    probe = path.callers * max(50, 1_000 // path.callers)
    totals = []
    for variant, op in zip(variants, ops, strict=True):
        # Warm-up (connections, prepared statements, batchers), then a run that sizes this
        # layer's timed runs to about ``seconds``: sized on the off layer, a traced run would
        # last several times longer than the others.
        await _run(op, path.callers, warm)
        rate, _ = await _run(op, path.callers, probe)
        variant.calls[path.key] = warm + probe
        totals.append(max(path.callers * 10, int(rate * seconds) // path.callers * path.callers))
    for r in range(rounds):
        order = list(range(len(variants)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            variant = variants[i]
            rate, samples = await _run(ops[i], path.callers, totals[i])
            variant.rates.setdefault(path.key, []).append(rate)
            variant.latencies.setdefault(path.key, []).extend(samples)
            variant.calls[path.key] += totals[i]


def _check_counts(paths: list[HotPath], variants: list[Variant]) -> None:
    # The metered layers counted every call into their histograms: the figures are of
    # metrics that work, not of a switch that did nothing.
    for variant in variants[1:]:
        operations = variant.dl._telemetry.operations
        for operation in {p.operation for p in paths}:
            made = sum(variant.calls[p.key] for p in paths if p.operation == operation)
            timings = operations.get(operation)
            counted = timings.ok.count if timings is not None else 0
            assert counted == made, f"{variant.name}: {counted} {operation} timed, not {made}"
    assert not variants[0].dl._telemetry.operations, "the off layer timed nothing"


def _results(
    paths: list[HotPath], variants: list[Variant], no_tracing: str | None, exported: int | None
) -> list[Result]:
    off, on = variants[0], variants[1]
    results = []
    for path in paths:
        offs = off.rates[path.key]
        for variant in variants[1:]:
            mine = variant.rates[path.key]
            ratios = [a / b for a, b in zip(mine, offs, strict=True)]
            # The round whose ratio is the median (the lower one of an even count): both of
            # its figures were measured side by side, where medians taken over all rounds
            # separately would compare different moments of a shared machine.
            at = ratios.index(statistics.median_low(ratios))
            ours, base = mine[at], offs[at]
            extra: dict[str, Any] = {
                "median_ops": statistics.median(mine),
                "median_off_ops": statistics.median(offs),
                "rounds_ops": mine,
                "rounds_off_ops": offs,
                "rounds_ratio": ratios,
            }
            if path.callers == 1:
                extra["latency_ms"] = percentiles(variant.latencies[path.key])
                extra["off_latency_ms"] = percentiles(off.latencies[path.key])
            metered = variant is on
            if not metered and exported is not None:
                made = sum(variant.calls.values())
                extra["spans_exported_of_calls"] = [exported, made]
            results.append(
                Result(
                    SCENARIO,
                    f"{path.label}, {variant.name}" + ("" if metered else " (SQL comments on)"),
                    "ops/s",
                    ours,
                    base,
                    "monitoring off",
                    target=TARGET if metered else "",
                    met=ours / base >= 0.95 if metered else None,
                    extra=extra,
                )
            )
    if no_tracing is not None:
        results.append(Result(SCENARIO, f"metrics + tracing: {no_tracing}", "ops/s", float("nan")))
    return results
