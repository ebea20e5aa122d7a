"""Edges of observability that a review found broken, each fixed: literals PostgreSQL reads
differently from generic SQL lexers, pipelines whose results arrive together, an operation
counted twice, and a failed sample that resolved firing alerts."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agency_data import DataLayer
from agency_data.observability.slowlog import redact_sql
from tests.conftest import DatabaseDsn, make_config
from tests.test_alerts import Heard


def slow_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "agency_data.slow_query"
    ]


def histogram_count(text: str, name: str, **labels: str) -> float:
    """The ``_count`` sample of one histogram series (0 when the series is absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_count" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    return 0.0


@pytest.fixture
async def layer(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path, monitoring={"slow_query_ms": 100})
    async with DataLayer(config) as dl:
        yield dl


# -- slowlog.redact_sql --------------------------------------------------------------------------


async def test_a_literal_after_one_ending_in_a_backslash_is_not_logged(
    layer: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agency_data.slow_query")
    rows = await layer.fetch("SELECT pg_sleep(0.2), 'C:\\' AS dir, 'hunter2-secret' AS pw")
    # PostgreSQL read two literals: the statement is valid and means what it says.
    assert rows[0]["dir"] == "C:\\"
    assert rows[0]["pw"] == "hunter2-secret"
    lines = slow_lines(caplog)
    assert len(lines) == 1, lines
    assert "hunter2" not in lines[0]["sql"], lines[0]["sql"]


async def test_numeric_literals_of_postgresql_16_are_masked(layer: DataLayer) -> None:
    # All three are numbers to PostgreSQL 18 (the server the layer targets).
    row = await layer.fetch_one("SELECT 4111_1111_1111_1111 AS card, 0o755 AS o, 0b1011 AS b")
    assert row is not None
    assert row["card"] == 4111111111111111
    redacted = redact_sql("SELECT 4111_1111_1111_1111 AS card, 0o755 AS o, 0b1011 AS b")
    for digits in ("4111", "755", "1011"):
        assert digits not in redacted, redacted


# -- cursor.ObservedCursor in a pipeline --------------------------------------------------------


async def test_a_slow_pipeline_is_logged_once_as_a_batch(
    layer: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agency_data.slow_query")
    # Database.fetch_many is what batch_search and hybrid_search send their statements with.
    db = layer._db
    assert db is not None
    results = await db.fetch_many(
        [("SELECT 1 AS fast", None), ("SELECT pg_sleep(0.3) AS slow", None)]
    )
    assert results[0] == [{"fast": 1}]
    # Their results arrive together at the pipeline's end: no statement can be timed alone, so
    # the batch is one line (not one per statement, each with the whole batch's time).
    lines = slow_lines(caplog)
    assert [line["sql"] for line in lines] == ["SELECT ? AS fast; SELECT pg_sleep(?) AS slow"]
    assert lines[0]["duration_ms"] >= 300
    assert (await layer.metrics_text()).count("agency_data_slow_queries_total 1.0") == 1


# -- instrument.observed: nested operations ------------------------------------------------------


async def test_get_or_set_is_not_also_counted_as_cache_get(layer: DataLayer) -> None:
    async def load() -> str:
        return "value"

    for i in range(5):
        assert await layer.cache.get_or_set(f"review13-{i}", load) == "value"
    text = await layer.metrics_text()
    name = "agency_data_query_duration_seconds"
    assert histogram_count(text, name, operation="cache.get_or_set", outcome="ok") == 5
    # The caller never called cache.get.
    assert histogram_count(text, name, operation="cache.get", outcome="ok") == 0


# -- alerts: series that vanish because a sample failed -----------------------------------------


async def test_a_failed_index_sample_does_not_resolve_a_firing_alert(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    monitoring = {"interval": 3600, "alerts": {"dead_rows_for": 0}}
    config = make_config(database, redis_url, tmp_path, monitoring=monitoring)
    async with DataLayer(config) as dl:
        heard = Heard()
        dl.alerts.on(heard)
        await dl.admin.create_collection("churn", dimension=3)
        table = await dl.admin.fetch_value(
            "SELECT table_name FROM embedding_collections WHERE name = %s", ["churn"]
        )
        await dl.admin.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')  # type: ignore[arg-type]
        churn = dl.embeddings.collection("churn")
        await churn.store_many(
            [
                {"entity_type": "doc", "entity_id": str(i), "vector": [1.0, float(i), 0.0]}
                for i in range(200)
            ]
        )
        await churn.delete(filter={"entity_id": {"$in": [str(i) for i in range(150)]}})
        deadline = time.monotonic() + 30
        while not heard.of("AgencyDataVectorIndexBloated") and time.monotonic() < deadline:
            await dl.check_alerts()
            await asyncio.sleep(0.25)
        assert heard.of("AgencyDataVectorIndexBloated") == [("firing", {"collection": "churn"})]
        # Hold a lock the sampler's index query waits on: it times out after 5 s, as a slow or
        # unreachable PostgreSQL would make it. Nothing about the collection changed.
        async with await psycopg.AsyncConnection.connect(database.superuser) as blocker:
            await blocker.execute("LOCK TABLE embedding_collections IN ACCESS EXCLUSIVE MODE")
            await dl.check_alerts()
            await blocker.rollback()
        await dl.check_alerts()
        assert heard.of("AgencyDataVectorIndexBloated") == [("firing", {"collection": "churn"})]
