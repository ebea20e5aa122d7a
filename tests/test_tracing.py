"""OpenTelemetry spans for the layer's operations, and the trace context carried in the SQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agency_data import DataLayer
from agency_data.errors import NotFound
from tests.conftest import DatabaseDsn, make_config
from tests.test_observability import enable_statements


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider for this test only, exporting to memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # OpenTelemetry sets its global provider once per process; its own tests reset the guard.
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(provider)
    try:
        yield memory
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER_SET_ONCE._done = False
        trace._TRACER_PROVIDER = None


@pytest.fixture
async def traced(
    exporter: InMemorySpanExporter, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        exporter.clear()
        yield dl


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name != "caller"]


async def test_one_claim_is_one_span_child_of_the_callers(
    traced: DataLayer, exporter: InMemorySpanExporter, database: DatabaseDsn
) -> None:
    worker = await traced.agents.create("w", "worker")
    await traced.tasks.create("resize", {"secret": "task-data-value"})
    exporter.clear()
    tracer = trace.get_tracer("the-caller")
    with tracer.start_as_current_span("caller") as parent:
        claimed = await traced.tasks.claim(worker.id, types=["resize"])
    assert len(claimed) == 1
    spans = ours(exporter)
    assert [s.name for s in spans] == ["claim tasks"]
    span = spans[0]
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    attributes = dict(span.attributes or {})
    host = psycopg.conninfo.conninfo_to_dict(database)["host"]
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.operation.name"] == "claim"
    assert attributes["db.collection.name"] == "tasks"
    assert attributes["db.namespace"] == psycopg.conninfo.conninfo_to_dict(database)["dbname"]
    assert attributes["server.address"] == host
    assert "server.port" in attributes
    assert "agency_data.tenant" not in attributes  # tenant names only with tenant_labels
    for text in map(str, attributes.values()):
        assert "task-data-value" not in text
        assert str(worker.id) not in text


async def test_errors_are_recorded_on_the_span(
    traced: DataLayer, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(NotFound):
        await traced.agents.get(uuid.uuid4())
    (span,) = ours(exporter)
    assert span.name == "get agents"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


async def test_spans_name_the_collection_and_redis(
    traced: DataLayer, exporter: InMemorySpanExporter
) -> None:
    await traced.admin.create_collection("notes", dimension=2)
    exporter.clear()
    await traced.embeddings.collection("notes").find_similar([1.0, 0.0], 3)
    await traced.cache.set("k", 1)
    names = [(s.name, dict(s.attributes or {})["db.system.name"]) for s in ours(exporter)]
    assert names == [("find_similar notes", "postgresql"), ("set cache", "redis")]


async def test_the_trace_id_rides_in_the_sql(
    traced: DataLayer, exporter: InMemorySpanExporter, database: DatabaseDsn
) -> None:
    await enable_statements(database)
    marker = f"traced_{uuid.uuid4().hex[:12]}"
    await traced.fetch(f"SELECT 1 AS {marker}")  # type: ignore[arg-type]
    (span,) = ours(exporter)
    trace_id = f"{span.context.trace_id:032x}"
    async with await psycopg.AsyncConnection.connect(database.superuser, autocommit=True) as c:
        rows = await (
            await c.execute(
                "SELECT query FROM pg_stat_statements WHERE query LIKE %s", [f"%{marker}%"]
            )
        ).fetchall()
    assert len(rows) == 1
    flags = int(span.context.trace_flags)
    assert f"traceparent='00-{trace_id}-{span.context.span_id:016x}-{flags:02x}'" in rows[0][0]


async def test_tracing_is_off_without_a_provider(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # No SDK provider set (only the API's proxy): nothing traced, no comment added.
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        assert dl._telemetry.tracing is None
        cursor = await dl.pool.getconn()
        try:
            assert type(cursor.cursor()).__name__ == "ObservedCursor"  # the slow-query log's
            assert not type(cursor.cursor()).comments  # type: ignore[attr-defined]
        finally:
            await dl.pool.putconn(cursor)


async def test_tracing_can_be_turned_off(
    exporter: InMemorySpanExporter, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, monitoring={"tracing": False})
    async with DataLayer(config) as dl:
        await dl.agents.create("untraced", "worker")
    assert ours(exporter) == []
