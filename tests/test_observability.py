"""Metrics, the slow-query log and ``top``, driven by real workloads against the real servers."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agency_data import DataLayer
from agency_data.errors import ConfigError, NotFound, ValidationError
from agency_data.observability.slowlog import redact_sql
from agency_data.observability.timings import Timings
from tests.conftest import DatabaseDsn, holding_connections, make_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and labels, parsed by prometheus_client."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError (with what there is) if the scrape lacks it."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        near = sorted(str(dict(k[1])) for k in samples if k[0] == name)
        raise KeyError(f"{name}{labels} not scraped; {name} has {near}")
    return samples[key]


async def scrape(dl: DataLayer) -> Samples:
    return parse(await dl.metrics_text())


@pytest.fixture
async def layer(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path, monitoring={"slow_query_ms": 100})
    async with DataLayer(config) as dl:
        yield dl


async def test_a_scrape_counts_exactly_the_workload(layer: DataLayer) -> None:
    agent = await layer.agents.create("scraped", "worker")
    for _ in range(7):
        await layer.agents.get(agent.id)
    with pytest.raises(NotFound):
        await layer.agents.get(uuid.uuid4())
    await layer.cache.set("here", 1)
    for _ in range(3):
        assert await layer.cache.get("here") == 1  # L1 hits
    for _ in range(2):
        assert await layer.cache.get("absent") is None  # L1 and L2 misses

    samples = await scrape(layer)
    histogram = "agency_data_query_duration_seconds"
    assert value(samples, f"{histogram}_count", operation="agents.get", outcome="ok") == 7
    assert value(samples, f"{histogram}_count", operation="agents.get", outcome="error") == 1
    assert value(samples, f"{histogram}_count", operation="agents.create", outcome="ok") == 1
    assert value(samples, f"{histogram}_count", operation="cache.set", outcome="ok") == 1
    # Only reads that reach Redis are timed; the counters count every read.
    assert value(samples, f"{histogram}_count", operation="cache.get", outcome="ok") == 2
    assert (
        "agency_data_query_duration_seconds_count",
        frozenset({("operation", "cache.set_many"), ("outcome", "ok")}),
    ) not in samples, "cache.set must not count as a set_many too"
    assert value(samples, "agency_data_cache_requests_total", level="l1", result="hit") == 3
    assert value(samples, "agency_data_cache_requests_total", level="l1", result="miss") == 2
    assert value(samples, "agency_data_cache_requests_total", level="l2", result="miss") == 2
    assert value(samples, "agency_data_cache_requests_total", level="l2", result="hit") == 0
    assert value(samples, "agency_data_cache_l1_entries") == 1
    # The buckets add up to the count, and +Inf holds them all.
    assert (
        value(samples, f"{histogram}_bucket", operation="agents.get", outcome="ok", le="+Inf") == 7
    )
    assert value(samples, f"{histogram}_sum", operation="agents.get", outcome="ok") > 0
    assert value(samples, "agency_data_backend_up", backend="postgresql") == 1
    assert value(samples, "agency_data_backend_up", backend="redis") == 1
    assert (
        1
        <= value(samples, "agency_data_server_connections")
        <= value(samples, "agency_data_server_max_connections")
    )


async def test_task_gauges_count_every_tenant_by_status_and_type(layer: DataLayer) -> None:
    for _ in range(3):
        await layer.tasks.create("resize", {})
    await layer.tenant("other").tasks.create("resize", {})
    await layer.tasks.create("email", {})
    worker = await layer.agents.create("worker-1", "worker")
    claimed = await layer.tasks.claim(worker.id, types=["email"])
    assert len(claimed) == 1
    await asyncio.sleep(0.05)

    samples = await scrape(layer)
    assert value(samples, "agency_data_tasks", status="pending", type="resize") == 4
    assert value(samples, "agency_data_tasks", status="running", type="email") == 1
    assert (
        0.05 <= value(samples, "agency_data_tasks_oldest_pending_age_seconds", type="resize") < 60
    )
    assert (
        value(
            samples,
            "agency_data_query_duration_seconds_count",
            operation="tasks.claim",
            outcome="ok",
        )
        == 1
    )


async def test_pool_gauges_show_connections_in_use(layer: DataLayer) -> None:
    async with holding_connections(layer, 3):
        samples = parse(layer.metrics.text().decode())
        assert value(samples, "agency_data_pool_connections", pool="app", state="used") == 3
        assert value(samples, "agency_data_pool_max_connections", pool="app") == 4
    # Connections come back through the pool's check, a moment after their holders finish.
    for _ in range(100):
        samples = parse(layer.metrics.text().decode())
        if value(samples, "agency_data_pool_connections", pool="app", state="used") == 0:
            break
        await asyncio.sleep(0.02)
    assert value(samples, "agency_data_pool_connections", pool="app", state="used") == 0


async def test_vector_searches_are_timed_by_collection_and_kind(layer: DataLayer) -> None:
    await layer.admin.create_collection("notes", dimension=3)
    notes = layer.embeddings.collection("notes")
    await notes.store_many(
        [
            {
                "entity_type": "note",
                "entity_id": str(i),
                "vector": [1.0, 0.0, float(i)],
                "metadata": {"n": i},
            }
            for i in range(20)
        ]
    )
    await notes.create_index("hnsw")
    await notes.find_similar([1.0, 0.0, 1.0], 3)
    await notes.find_similar([1.0, 0.0, 1.0], 3)
    await notes.find_similar([1.0, 0.0, 1.0], 3, filter={"n": {"$gt": 5}})
    await notes.find_similar([1.0, 0.0, 1.0], 3, exact=True)
    await notes.hybrid_search("anything", [1.0, 0.0, 1.0], 3)

    samples = await scrape(layer)
    name = "agency_data_vector_search_duration_seconds_count"
    assert value(samples, name, collection="notes", kind="ann") == 2
    assert value(samples, name, collection="notes", kind="filtered") == 1
    assert value(samples, name, collection="notes", kind="exact") == 1
    assert value(samples, name, collection="notes", kind="hybrid") == 1
    assert value(samples, "agency_data_vector_index_bytes", collection="notes") > 0
    assert value(samples, "agency_data_vector_index_valid", collection="notes") == 1


async def test_the_endpoint_serves_the_same_registry(layer: DataLayer) -> None:
    await layer.agents.create("served", "worker")
    endpoint = await layer.serve_metrics(0)
    assert endpoint.url.startswith("http://127.0.0.1:")

    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            return response.headers["Content-Type"], response.read().decode()

    content_type, body = await asyncio.to_thread(fetch)
    assert content_type.startswith("text/plain")
    samples = parse(body)
    assert (
        value(
            samples,
            "agency_data_query_duration_seconds_count",
            operation="agents.create",
            outcome="ok",
        )
        == 1
    )
    assert value(samples, "agency_data_backend_up", backend="postgresql") == 1
    await endpoint.aclose()
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(fetch)


async def test_serve_metrics_refuses_bad_ports_clearly(layer: DataLayer) -> None:
    endpoint = await layer.serve_metrics(0)
    with pytest.raises(ConfigError, match="choose another port"):
        await layer.serve_metrics(endpoint.port)
    for bad in (-1, 70000, "9464", 1.5):
        with pytest.raises(ValidationError, match="port"):
            await layer.serve_metrics(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="host"):
        await layer.serve_metrics(0, host=None)  # type: ignore[arg-type]


async def test_metrics_need_a_connected_layer(tmp_path: Path) -> None:
    dl = DataLayer(embedded={"data_dir": tmp_path})
    with pytest.raises(Exception, match="not connected"):
        await dl.metrics_text()
    # The registry exists (and is empty of samples) before connecting: nothing global.
    assert b"agency_data_query_duration_seconds" in dl.metrics.text()


async def test_metrics_off_records_nothing(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, monitoring={"metrics": False})
    async with DataLayer(config) as dl:
        agent = await dl.agents.create("quiet", "worker")
        await dl.agents.get(agent.id)
        samples = await scrape(dl)
    assert not [k for k in samples if k[0] == "agency_data_query_duration_seconds_count"]
    # What costs nothing to read is still there.
    assert value(samples, "agency_data_backend_up", backend="postgresql") == 1


async def test_tenant_labels_only_when_configured(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, monitoring={"tenant_labels": True})
    async with DataLayer(config) as dl:
        await dl.tenant("acme").agents.create("a", "worker")
        await dl.tenant("globex").agents.create("b", "worker")
        await dl.tenant("globex").agents.create("c", "worker")
        samples = await scrape(dl)
    name = "agency_data_query_duration_seconds_count"
    assert value(samples, name, operation="agents.create", outcome="ok", tenant="acme") == 1
    assert value(samples, name, operation="agents.create", outcome="ok", tenant="globex") == 2


async def test_a_cancelled_wait_counts_as_cancelled(layer: DataLayer) -> None:
    worker = await layer.agents.create("waiting", "worker")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.tasks.claim(worker.id, wait=30), 0.2)
    samples = await scrape(layer)
    assert (
        value(
            samples,
            "agency_data_query_duration_seconds_count",
            operation="tasks.claim",
            outcome="cancelled",
        )
        == 1
    )


async def test_the_registry_registers_in_another(layer: DataLayer) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    await layer.agents.create("elsewhere", "worker")
    theirs = CollectorRegistry()
    theirs.register(layer.metrics.collector)
    samples = parse(generate_latest(theirs).decode())
    assert (
        value(
            samples,
            "agency_data_query_duration_seconds_count",
            operation="agents.create",
            outcome="ok",
        )
        == 1
    )


# -- the slow-query log --------------------------------------------------------------------------


def slow_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "agency_data.slow_query"
    ]


async def test_a_slow_statement_is_logged_once_without_its_values(
    layer: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agency_data.slow_query")
    await layer.fetch("SELECT 1 AS fast, %s::text AS v", ["fast-secret"])
    rows = await layer.tenant("acme").fetch(
        "SELECT pg_sleep(0.2), %s::text AS v, 'literal-secret' AS w, 42 AS n", ["param-secret"]
    )
    assert len(rows) == 1
    lines = slow_lines(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["operation"] == "fetch"
    assert line["tenant"] == "acme"
    assert line["rows"] == 1
    assert line["duration_ms"] >= 200
    assert "pg_sleep(?)" in line["sql"]
    text = json.dumps(line)
    for secret in ("param-secret", "literal-secret", "fast-secret", "42", "acme'"):
        assert secret not in text
    assert value(await scrape(layer), "agency_data_slow_queries_total") == 1


async def test_a_slow_statement_in_a_pipeline_and_a_store_call_is_logged(
    layer: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agency_data.slow_query")
    # With a timeout the statement is pipelined behind its settings.
    await layer.tenant("acme").fetch("SELECT pg_sleep(0.15)", timeout=5)
    async with layer.transaction():
        await layer.execute("SELECT pg_sleep(0.15)")
    lines = slow_lines(caplog)
    assert [line["operation"] for line in lines] == ["fetch", "execute"]


def test_redaction_masks_every_kind_of_literal() -> None:
    redacted = redact_sql(
        "SELECT 'a''b', E'x', $$dollar$$, $tag$t$tag$, 3.5e3, -7, $1 /* c */ FROM t -- note"
    )
    assert redacted == "SELECT ?, ?, ?, ?, ?, -?, $1 FROM t"


# -- pg_stat_statements --------------------------------------------------------------------------


async def enable_statements(database: DatabaseDsn) -> None:
    async with await psycopg.AsyncConnection.connect(database.superuser, autocommit=True) as c:
        await c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await c.execute("GRANT pg_read_all_stats TO agency_owner")
        # The suite's server keeps every test database's statements, far more than
        # pg_stat_statements.max (5,000); a new entry with one call is among the first the view
        # evicts to make room. An empty view keeps the marker until the test reads it.
        await c.execute("SELECT pg_stat_statements_reset()")


async def test_top_lists_the_costliest_statements(layer: DataLayer, database: DatabaseDsn) -> None:
    await enable_statements(database)
    await layer.fetch("SELECT pg_sleep(0.1) AS top_marker")
    top = await layer.admin.top_statements(limit=50)
    marked = [s for s in top if "top_marker" in s.query]
    assert len(marked) == 1
    assert marked[0].calls == 1
    assert marked[0].mean_ms >= 100
    assert 0 < marked[0].share <= 1
    assert top == sorted(top, key=lambda s: -s.total_ms)
    again = await layer.admin.top_statements(limit=1000)
    assert not [s for s in again if "FROM pg_stat_statements" in s.query], "top lists itself"
    by_calls = await layer.admin.top_statements(limit=5, order="calls")
    assert len(by_calls) <= 5
    assert by_calls == sorted(by_calls, key=lambda s: -s.calls)


async def test_top_refuses_bad_input(layer: DataLayer) -> None:
    for limit in (0, -1, 10_000, "5"):
        with pytest.raises(ValidationError, match="limit"):
            await layer.admin.top_statements(limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="order"):
        await layer.admin.top_statements(order="fastest")


def test_timings_quantiles_follow_their_buckets() -> None:
    timings = Timings()
    for _ in range(90):
        timings.observe(0.0002)
    for _ in range(10):
        timings.observe(0.3)
    assert timings.count == 100
    p50 = timings.quantile(0.5)
    p99 = timings.quantile(0.99)
    assert p50 is not None
    assert 0.0001 < p50 <= 0.00025
    assert p99 is not None
    assert 0.25 < p99 <= 0.5
    assert Timings().quantile(0.5) is None
    window = timings.copy()
    timings.observe(2.0)
    assert timings.minus(window).count == 1


async def test_health_lists_the_firing_alerts_and_the_volumes(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        monitoring={
            "interval": 3600,
            "disk_paths": {"scratch": tmp_path},
            "alerts": {"pool_saturation_for": 0},
        },
    )
    async with DataLayer(config) as dl:
        healthy = await dl.health()
        assert healthy.alerts == []
        assert healthy.disk["scratch"].free_ratio > 0
        assert healthy.replication is not None
        assert not healthy.replication.standby
        async with holding_connections(dl, 4):
            busy = await dl.health()
        assert [a["name"] for a in busy.alerts] == ["AgencyDataPoolSaturated"]
        assert busy.alerts[0]["labels"] == {"pool": "app"}


async def test_agent_reads_served_by_l1_are_counted_not_timed(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, cache={"record_ttl": 60})
    async with DataLayer(config) as dl:
        agent = await dl.agents.create("cached", "worker")
        for _ in range(4):
            assert (await dl.agents.get(agent.id)).id == agent.id
        samples = await scrape(dl)
    name = "agency_data_query_duration_seconds_count"
    assert value(samples, name, operation="agents.get", outcome="ok") == 1  # the one miss
    assert value(samples, "agency_data_cache_requests_total", level="l1", result="hit") == 3
    assert value(samples, "agency_data_cache_requests_total", level="l1", result="miss") == 1
