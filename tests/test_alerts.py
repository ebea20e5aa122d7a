"""Each alert rule fires once and resolves once, caused for real against the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.errors import AgencyDataError, ConfigError, PermissionDenied, ValidationError
from agency_data.observability.alerts import RULE_NAMES, Alert
from tests.conftest import FAST_POSTGRES, DatabaseDsn, holding_connections, make_config

# Every duration 0 and the loop idle: the tests evaluate with dl.check_alerts() themselves.
PROMPT = {
    "pool_saturation_for": 0,
    "operation_slow_for": 0,
    "cache_low_for": 0,
    "backend_down_for": 0,
    "disk_low_for": 0,
    "dead_rows_for": 0,
    "recall_low_for": 0,
}


def monitoring(**alerts: Any) -> dict[str, Any]:
    return {"interval": 3600, "alerts": {**PROMPT, **alerts}}


class Heard:
    """What the callbacks received."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def of(self, name: str) -> list[tuple[str, dict[str, str]]]:
        return [(a.status, a.labels) for a in self.alerts if a.name == name]


async def layer_with(
    database: str, redis_url: str, tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[DataLayer, Heard]]:
    async with DataLayer(make_config(database, redis_url, tmp_path, **sections)) as dl:
        heard = Heard()
        dl.alerts.on(heard)
        yield dl, heard


@pytest.fixture
async def watched(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[DataLayer, Heard]]:
    async for pair in layer_with(
        database,
        redis_url,
        tmp_path,
        monitoring=monitoring(
            operation_budgets={"fetch": 0.05},
            operation_min_calls=3,
            cache_min_reads=10,
            denials=3,
            denials_window=1.0,
        ),
    ):
        yield pair


async def check_until(dl: DataLayer, heard: Heard, name: str, status: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await dl.check_alerts()
        if any(s == status for s, _ in heard.of(name)):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} did not become {status} in {seconds} s: {heard.alerts}")


def test_the_rule_names_are_the_shipped_ones() -> None:
    assert len(set(RULE_NAMES)) == 13


async def test_pool_saturation_fires_and_resolves(watched: tuple[DataLayer, Heard]) -> None:
    dl, heard = watched
    async with holding_connections(dl, 4):
        await dl.check_alerts()
        await dl.check_alerts()  # fires once, however long it lasts
        assert heard.of("AgencyDataPoolSaturated") == [("firing", {"pool": "app"})]
        (alert,) = [a for a in dl.alerts.firing() if a.name == "AgencyDataPoolSaturated"]
        assert alert.value == 1.0
        assert alert.severity == "warning"
    await check_until(dl, heard, "AgencyDataPoolSaturated", "resolved", 10)
    assert heard.of("AgencyDataPoolSaturated") == [
        ("firing", {"pool": "app"}),
        ("resolved", {"pool": "app"}),
    ]


async def test_a_slow_operation_fires_and_resolves(watched: tuple[DataLayer, Heard]) -> None:
    dl, heard = watched
    for _ in range(3):
        await dl.fetch("SELECT pg_sleep(0.08)")
    await dl.check_alerts()
    assert heard.of("AgencyDataOperationSlow") == [("firing", {"operation": "fetch"})]
    for _ in range(3):
        await dl.fetch("SELECT 1")
    await dl.check_alerts()
    assert heard.of("AgencyDataOperationSlow")[-1] == ("resolved", {"operation": "fetch"})


async def test_waiting_and_bulk_operations_have_no_budget_unless_given_one(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in layer_with(
        database,
        redis_url,
        tmp_path,
        monitoring=monitoring(operation_p95=0.05, operation_min_calls=3),
    ):
        worker = await dl.agents.create("idle", "worker")
        for _ in range(3):
            assert await dl.tasks.claim(worker.id, wait=0.1) == []  # waits, by design
        await dl.tasks.create_many([{"type": "t", "data": {}}] * 3)
        await dl.check_alerts()
        assert heard.of("AgencyDataOperationSlow") == []


async def test_a_low_cache_hit_rate_fires_and_resolves(watched: tuple[DataLayer, Heard]) -> None:
    dl, heard = watched
    for i in range(20):
        assert await dl.cache.get(f"absent-{i}") is None
    await dl.check_alerts()
    assert heard.of("AgencyDataCacheHitRateLow") == [("firing", {})]
    await dl.cache.set("present", 1)
    for _ in range(100):
        await dl.cache.get("present")
    await dl.check_alerts()
    assert heard.of("AgencyDataCacheHitRateLow") == [("firing", {}), ("resolved", {})]


async def test_repeated_cross_tenant_denials_fire_and_resolve(
    watched: tuple[DataLayer, Heard],
) -> None:
    dl, heard = watched
    acme = dl.tenant("acme")
    for _ in range(4):
        with pytest.raises(PermissionDenied):
            await acme.execute(
                "INSERT INTO agents (tenant_id, name, type) VALUES ('globex', 'x', 'y')"
            )
    await dl.check_alerts()
    assert heard.of("AgencyDataDenialsRepeated") == [("firing", {"kind": "permission"})]
    await asyncio.sleep(1.2)  # the window (1 s) passes with no more
    await dl.check_alerts()
    assert heard.of("AgencyDataDenialsRepeated")[-1] == ("resolved", {"kind": "permission"})


async def test_refused_logins_are_counted_as_authentication_denials(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in layer_with(
        database, redis_url, tmp_path, monitoring=monitoring(denials=0)
    ):
        async with await psycopg.AsyncConnection.connect(database.superuser, autocommit=True) as su:
            await su.execute("ALTER ROLE agency_app NOLOGIN")
            try:
                await dl.pool.drain()
                await check_until(dl, heard, "AgencyDataDenialsRepeated", "firing", 20)
            finally:
                await su.execute("ALTER ROLE agency_app LOGIN")
        assert ("firing", {"kind": "authentication"}) in heard.of("AgencyDataDenialsRepeated")


async def test_redis_down_fires_and_resolves(database: DatabaseDsn, tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path / "own-valkey")
    url = valkey.acquire()
    try:
        async for dl, heard in layer_with(
            database, url, tmp_path, monitoring=monitoring(), cache={"retry_after": 0.05}
        ):
            await dl.check_alerts()
            assert heard.of("AgencyDataBackendDown") == []
            await asyncio.to_thread(valkey.stop)
            await dl.check_alerts()
            assert heard.of("AgencyDataBackendDown") == [("firing", {"backend": "redis"})]
            (alert,) = dl.alerts.firing()
            assert alert.severity == "critical"
            await asyncio.to_thread(valkey.start)
            await check_until(dl, heard, "AgencyDataBackendDown", "resolved", 15)
    finally:
        if not valkey.is_running():
            valkey.start()
        valkey.release()


async def test_postgres_down_fires_and_resolves(
    redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    dsn = pg.acquire()
    try:
        async for dl, heard in layer_with(
            dsn, redis_url, tmp_path, monitoring=monitoring(), postgresql={"pool_timeout": 1.0}
        ):
            await asyncio.to_thread(pg.stop)
            await dl.check_alerts()
            assert heard.of("AgencyDataBackendDown") == [("firing", {"backend": "postgresql"})]
            # Scrapes keep working while it is down.
            text = await dl.metrics_text()
            assert 'agency_data_backend_up{backend="postgresql"} 0.0' in text
            assert 'agency_data_alerts_firing{alert="AgencyDataBackendDown"' in text
            await asyncio.to_thread(pg.start)
            await check_until(dl, heard, "AgencyDataBackendDown", "resolved", 20)
    finally:
        if not pg.is_running():
            pg.start()
        pg.release()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root, or passwordless sudo); fails in CI without either."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None or subprocess.run([sudo, "-n", "true"], capture_output=True).returncode:
            if os.environ.get("CI") == "true":
                pytest.fail("mounting a small disk needs root or passwordless sudo in CI")
            pytest.skip("mounting a small disk needs root or passwordless sudo")
        prefix = [sudo, "-n"]
    subprocess.run(
        [
            *prefix,
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=16m,uid={os.getuid()},mode=0700",
            "tmpfs",
            str(mount),
        ],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run([*prefix, "umount", str(mount)], check=True)


async def test_low_disk_space_fires_and_resolves(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, small_disk: Path
) -> None:
    async for dl, heard in layer_with(
        database,
        redis_url,
        tmp_path,
        monitoring={**monitoring(disk_free=0.5), "disk_paths": {"scratch": small_disk}},
    ):
        await dl.check_alerts()
        assert heard.of("AgencyDataDiskSpaceLow") == []
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (12 << 20))
        await dl.check_alerts()
        assert heard.of("AgencyDataDiskSpaceLow") == [("firing", {"volume": "scratch"})]
        assert "agency_data_disk_free_bytes" in await dl.metrics_text()
        filler.unlink()
        await dl.check_alerts()
        assert heard.of("AgencyDataDiskSpaceLow")[-1] == ("resolved", {"volume": "scratch"})


async def collection_table(dl: DataLayer, name: str) -> str:
    table = await dl.admin.fetch_value(
        "SELECT table_name FROM embedding_collections WHERE name = %s", [name]
    )
    assert isinstance(table, str)
    return table


async def test_an_invalid_vector_index_fires_and_resolves(
    watched: tuple[DataLayer, Heard], database: DatabaseDsn
) -> None:
    dl, heard = watched
    await dl.admin.create_collection("broken", dimension=64)
    rows = [
        {
            "entity_type": "doc",
            "entity_id": str(i),
            "vector": [float((i * j) % 7) for j in range(64)],
        }
        for i in range(20_000)
    ]
    await dl.embeddings.collection("broken").store_many(rows)
    table = await collection_table(dl, "broken")
    # A concurrent build cancelled part-way leaves an invalid index behind, as in production.
    async with await psycopg.AsyncConnection.connect(database.owner, autocommit=True) as owner:
        for ms in (20, 50, 100, 200, 400, 800):
            await owner.execute(f"SET statement_timeout = {ms}")
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                await owner.execute(
                    f'CREATE INDEX CONCURRENTLY "{table}_ann" ON "{table}" '
                    "USING hnsw (vector vector_cosine_ops)"
                )
            row = await (
                await owner.execute(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                    [f'"{table}_ann"'],
                )
            ).fetchone()
            if row is not None and not row[0]:
                break
            if row is not None:
                await owner.execute(f'DROP INDEX "{table}_ann"')
        else:
            pytest.fail("no cancelled build left an invalid index")
    await dl.check_alerts()
    assert heard.of("AgencyDataVectorIndexInvalid") == [("firing", {"collection": "broken"})]
    await dl.admin.drop_index("broken")
    await dl.check_alerts()
    assert heard.of("AgencyDataVectorIndexInvalid")[-1] == ("resolved", {"collection": "broken"})


async def test_a_bloated_collection_fires_and_resolves(
    watched: tuple[DataLayer, Heard],
) -> None:
    dl, heard = watched
    await dl.admin.create_collection("churn", dimension=3)
    table = await collection_table(dl, "churn")
    await dl.admin.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')  # type: ignore[arg-type]
    churn = dl.embeddings.collection("churn")
    await churn.store_many(
        [
            {"entity_type": "doc", "entity_id": str(i), "vector": [1.0, float(i), 0.0]}
            for i in range(200)
        ]
    )
    await churn.delete(filter={"entity_id": {"$in": [str(i) for i in range(150)]}})
    # The statistics reach the sampler when the writing backend flushes them (within seconds).
    await check_until(dl, heard, "AgencyDataVectorIndexBloated", "firing", 30)
    await dl.admin.execute(f'VACUUM "{table}"')  # type: ignore[arg-type]
    await check_until(dl, heard, "AgencyDataVectorIndexBloated", "resolved", 30)
    assert heard.of("AgencyDataVectorIndexBloated") == [
        ("firing", {"collection": "churn"}),
        ("resolved", {"collection": "churn"}),
    ]


# -- delivery ------------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alerts?token=hook-secret", received
    finally:
        server.shutdown()
        server.server_close()


async def test_changes_go_to_the_log_callbacks_and_webhook_once(
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, received = webhook
    caplog.set_level("INFO", logger="agency_data.alerts")
    awaited: list[str] = []

    async def async_listener(alert: Alert) -> None:
        awaited.append(alert.status)

    async for dl, heard in layer_with(
        database, redis_url, tmp_path, monitoring=monitoring(webhook_url=url)
    ):

        def broken(alert: Alert) -> None:
            raise RuntimeError("a listener's bug")

        dl.alerts.on(broken)
        remove = dl.alerts.on(async_listener)
        async with holding_connections(dl, 4):
            await dl.check_alerts()
            await dl.check_alerts()
        await check_until(dl, heard, "AgencyDataPoolSaturated", "resolved", 10)
        remove()
        async with holding_connections(dl, 4):
            await dl.check_alerts()
        assert awaited == ["firing", "resolved"]
        assert len(heard.of("AgencyDataPoolSaturated")) == 3
    # Closing the layer waits for the webhook's deliveries.
    statuses = [(r["status"], r["alerts"][0]["labels"]["alertname"]) for r in received]
    assert statuses == [
        ("firing", "AgencyDataPoolSaturated"),
        ("resolved", "AgencyDataPoolSaturated"),
        ("firing", "AgencyDataPoolSaturated"),
    ]
    assert received[0]["alerts"][0]["labels"]["pool"] == "app"
    lines = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "agency_data.alerts" and r.getMessage().startswith("{")
    ]
    assert [line["status"] for line in lines] == ["firing", "resolved", "firing"]
    assert "hook-secret" not in caplog.text
    assert "a listener's bug" in caplog.text  # logged, not raised


async def test_the_background_loop_evaluates_by_itself(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = {"interval": 0.2, "alerts": PROMPT}
    fired = asyncio.Event()
    async for dl, heard in layer_with(database, redis_url, tmp_path, monitoring=config):
        dl.alerts.on(lambda alert: fired.set())
        async with holding_connections(dl, 4):
            await asyncio.wait_for(fired.wait(), 10)
        assert heard.of("AgencyDataPoolSaturated")[:1] == [("firing", {"pool": "app"})]


async def test_alert_input_is_checked(watched: tuple[DataLayer, Heard], tmp_path: Path) -> None:
    dl, _ = watched
    with pytest.raises(ValidationError, match="callback"):
        dl.alerts.on("not callable")  # type: ignore[arg-type]
    for bad in (
        {"alerts": {"pool_saturation": 1.5}},
        {"alerts": {"webhook_url": "file:///etc/passwd"}},
        {"alerts": {"operation_budgets": {"fetch": 0}}},
        {"interval": 0},
    ):
        with pytest.raises(ConfigError):
            DataLayer(monitoring=bad, embedded={"data_dir": tmp_path})
    not_connected = DataLayer(embedded={"data_dir": tmp_path})
    with pytest.raises(AgencyDataError, match="not connected"):
        await not_connected.check_alerts()
