"""Health reporting and the lifecycle's behaviour when a server is missing, stopped or restarted."""

from __future__ import annotations

from pathlib import Path

import pytest

from agency_data import BackendUnavailable, DataLayer
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.conftest import FAST_POSTGRES, make_config


async def test_health_reports_each_component(dl: DataLayer) -> None:
    report = await dl.health()
    assert report.status == "ok"
    assert report.ok
    pg, cache = report.components["postgresql"], report.components["redis"]
    assert pg.up
    assert cache.up
    assert pg.versions["postgresql"].split(".")[0].isdigit()
    assert pg.versions["pgvector"].startswith("0.")
    assert cache.versions["redis"]
    assert pg.latency_ms is not None
    assert pg.latency_ms > 0
    assert cache.latency_ms is not None
    assert pg.details["pool_max"] == 4
    assert pg.details["pool_size"] >= 1


async def test_degraded_when_redis_stops_and_ok_when_it_returns(
    database: str, tmp_path: Path
) -> None:
    valkey = EmbeddedValkey(tmp_path / "own-valkey")
    url = valkey.acquire()
    try:
        async with DataLayer(make_config(database, url, tmp_path)) as dl:
            assert (await dl.health()).status == "ok"
            valkey.stop()
            report = await dl.health()
            assert report.status == "degraded"
            assert not report.components["redis"].up
            assert report.components["redis"].error
            assert report.components["postgresql"].up
            valkey.start()
            assert (await dl.health()).status == "ok"
    finally:
        valkey.release()


async def test_restarted_postgres_is_reconnected(
    redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    dsn = pg.acquire()
    try:
        async with DataLayer(make_config(dsn, redis_url, tmp_path)) as dl:
            assert (await dl.health()).status == "ok"
            pg.stop()
            assert (await dl.health(timeout=1)).status == "down"
            pg.start()
            # Pooled connections died with the server; the checkout check replaces them.
            assert (await dl.health()).status == "ok"
            async with dl.pool.connection() as conn:
                await conn.execute("SELECT 1")
    finally:
        pg.release()
    # Probing readiness around each stop and start logs in as a role that exists.
    assert "does not exist" not in pg.log_file.read_text()


async def test_unreachable_postgres_fails_fast_and_clearly(redis_url: str, tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@/postgres?host={tmp_path}/nowhere"
    config = make_config(dsn, redis_url, tmp_path, postgresql={"pool_timeout": 0.5})
    with pytest.raises(BackendUnavailable) as info:
        async with DataLayer(config):
            pass
    assert info.value.backend == "postgresql"


async def test_wrong_password_is_not_echoed(redis_url: str, tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:hunter2@/postgres?host={tmp_path}/nowhere"
    config = make_config(dsn, redis_url, tmp_path, postgresql={"pool_timeout": 0.5})
    with pytest.raises(BackendUnavailable) as info:
        await DataLayer(config).connect()
    assert "hunter2" not in str(info.value)


async def test_unreachable_redis_does_not_block_connect(database: str, tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-such.sock"
    async with DataLayer(make_config(database, url, tmp_path)) as dl:
        report = await dl.health()
        assert report.status == "degraded"
        await dl.execute("INSERT INTO agents (name, type) VALUES ('still', 'writes')")


async def test_using_a_closed_layer_says_how_to_fix(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    layer = DataLayer(make_config(database, redis_url, tmp_path))
    with pytest.raises(BackendUnavailable, match="not connected"):
        await layer.health()
    await layer.connect()
    await layer.aclose()
    await layer.aclose()  # closing twice is harmless
    with pytest.raises(BackendUnavailable, match="not connected"):
        _ = layer.pool
    for surface in ("admin", "embeddings", "agents", "tasks", "cache"):
        with pytest.raises(BackendUnavailable, match="not connected"):
            getattr(layer, surface)
    with pytest.raises(BackendUnavailable, match="not connected"):
        await layer.fetch("SELECT 1")
