"""The service benchmark (bench/service.py) at a tiny size, against the real servers: it starts
the service in its own process, measures each operation both ways, and reports sane figures;
an operation the service does not have yet is left out rather than measured as errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.progress import Progress

from agency_data import DataLayer
from agency_data.service import openapi_document
from bench.context import Bench
from bench.service import CONNECTIONS, TENANT, service
from tests.conftest import DatabaseDsn, make_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def bench_dl(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path, postgresql={"pool_max_size": 8})
    async with DataLayer(config) as dl:
        yield dl


async def test_the_service_scenario_measures_each_operation_both_ways(bench_dl: DataLayer) -> None:
    with Progress(disable=True) as progress:
        b = Bench(dl=bench_dl, raw=None, quick=True, vectors=0, runs=1, progress=progress)  # type: ignore[arg-type]
        results = await service(b, count=4 * CONNECTIONS, rows=300)

    paths = openapi_document()["paths"]
    expected = ["GET agent"]
    if "post" in paths.get("/v1/collections/{name}/search", {}):
        expected.append("search top 10")
    if "post" in paths.get("/v1/tasks/claim", {}):
        expected.append("claim + complete")
    labels = sorted({r.name.split(":")[0] for r in results})
    assert labels == sorted(expected)
    assert len(results) == 3 * len(expected)
    for label in expected:
        rate, p50, p99 = (r for r in results if r.name.startswith(label + ":"))
        assert rate.unit in ("req/s", "pairs/s")
        assert rate.ours > 0
        assert rate.baseline is not None
        assert rate.baseline > 0
        assert rate.ratio is not None
        for latency in (p50, p99):
            assert latency.unit == "ms"
            assert not latency.higher_is_better
            assert latency.ours > 0
            assert latency.baseline is not None
            assert latency.baseline > 0
        assert p99.ours >= p50.ours
    # It cleans up after itself: the key it made is revoked, its records gone.
    assert await bench_dl.admin.api_keys.list(TENANT) == []
    assert len(await bench_dl.admin.api_keys.list(TENANT, revoked=True)) == 1
    assert await bench_dl.tenant(TENANT).agents.count() == 0
