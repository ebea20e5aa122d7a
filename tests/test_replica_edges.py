"""Read replicas at their edges on a real primary and streaming standby: a hung standby,
a busy one, one lagging a migration, wrong configuration, and the commands that make,
promote and drop standbys refusing what would lose data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from agency_data import DataLayer, DataLayerConfig
from agency_data.backup.replicas import create_replica, drop_replica, promote_replica, slot_name
from agency_data.embedded import EmbeddedPostgres
from agency_data.embedded.postgres import holds_cluster
from agency_data.errors import AgencyDataError, BackupError, ValidationError
from agency_data.vectors.prewarm import warm_connections
from tests.conftest import FAST_POSTGRES, ServerSet, reachable_dir
from tests.test_cli import agency_data
from tests.test_replicas import Pair, started_pair, stop_servers

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, servers: ServerSet) -> Iterator[Pair]:
    yield from started_pair(reachable_dir(tmp_path_factory), servers.redis_url)


@pytest.fixture
async def layer(pair: Pair, redis_url: str) -> AsyncIterator[DataLayer]:
    async with DataLayer(pair.config(redis_url, max_replica_lag=60)) as dl:
        yield dl


async def test_update_metadata_returns_its_own_write(pair: Pair, layer: DataLayer) -> None:
    await layer.embeddings.create_collection("r14_meta", dimension=2)
    notes = layer.tenant("acme").embeddings.collection("r14_meta")
    note = await notes.store(
        {"entity_type": "note", "entity_id": "1", "vector": [1.0, 0.0], "metadata": {"v": 1}}
    )
    await asyncio.to_thread(pair.caught_up)
    pair.replay(paused=True)
    try:
        updated = await notes.update_metadata(note, {"v": 2})
    finally:
        pair.replay(paused=False)
    assert updated.metadata["v"] == 2


async def test_update_metadata_of_a_fresh_row_does_not_raise(pair: Pair, layer: DataLayer) -> None:
    await layer.embeddings.create_collection("r14_fresh", dimension=2)
    notes = layer.tenant("acme").embeddings.collection("r14_fresh")
    await asyncio.to_thread(pair.caught_up)
    pair.replay(paused=True)
    try:
        note = await notes.store(
            {"entity_type": "note", "entity_id": "1", "vector": [1.0, 0.0], "metadata": {}}
        )
        updated = await notes.update_metadata(note, {"v": 2})
    finally:
        pair.replay(paused=False)
    assert updated.metadata == {"v": 2}


async def test_consistent_read_inside_a_readonly_transaction_is_not_stale(
    pair: Pair, layer: DataLayer
) -> None:
    agents = layer.tenant("acme").agents
    await asyncio.to_thread(pair.caught_up)
    pair.replay(paused=True)
    try:
        made = await agents.create("r14-consistent", "search")
        # On the standby, the transaction cannot give what it was not opened for.
        with pytest.raises(ValidationError, match="consistent=True"):
            async with layer.transaction(readonly=True):
                await agents.get(made.id, consistent=True)
        # Opened consistent, it runs where the write is (the primary, the standby paused).
        async with layer.transaction(readonly=True, consistent=True) as tx:
            found = await agents.get(made.id, consistent=True)
            row = await (await tx.conn.execute("SELECT pg_is_in_recovery() AS r")).fetchone()
    finally:
        pair.replay(paused=False)
    assert found.id == made.id
    assert row is not None
    assert row["r"] is False


async def test_a_hung_standby_does_not_hang_routed_reads(pair: Pair, layer: DataLayer) -> None:
    agents = layer.tenant("acme").agents
    made = await agents.create("r14-hung", "search")
    await asyncio.to_thread(pair.caught_up)
    for _ in range(5):
        assert (await agents.get(made.id, cached=False)).id == made.id
    with pair.hung():
        # statement_timeout is 30 s by default; a fallback should come well within 8 s.
        found = await asyncio.wait_for(agents.get(made.id, cached=False), 8)
    assert found.id == made.id


async def test_a_busy_replica_pool_is_not_counted_as_a_failed_replica(
    pair: Pair, redis_url: str
) -> None:
    config = pair.config(redis_url, max_replica_lag=60, pool_min_size=1, pool_max_size=1)
    async with DataLayer(config) as layer:
        agents = layer.tenant("acme").agents
        made = await agents.create("r14-busy", "search")
        await asyncio.to_thread(pair.caught_up)
        assert layer._replicas is not None
        replica = layer._replicas.replicas[0]
        async with replica.pool.connection():
            assert (await agents.get(made.id, cached=False)).id == made.id
        assert layer._replicas.fallbacks["failed"] == 0
        assert replica.state.up


async def test_a_replica_that_is_no_standby_is_logged(
    pair: Pair, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agency_data.postgres.replicas")
    primary_dsn = EmbeddedPostgres(pair.primary_dir).dsn("agency_data", user="agency_app")
    config = pair.config(redis_url, standbys=False, replicas=[primary_dsn])
    async with DataLayer(config) as layer:
        await layer.fetch_value("SELECT 1", replica=True)
        assert layer._replicas is not None
        assert layer._replicas.fallbacks["down"] >= 1
    assert any(r.name == "agency_data.postgres.replicas" for r in caplog.records)


async def test_a_wrong_embedded_replica_folder_is_refused(
    pair: Pair, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    typo = reachable_dir(tmp_path_factory) / "replcia"
    base = pair.config(redis_url, standbys=False)
    config = DataLayerConfig(
        postgresql=base.postgresql.model_dump(),
        redis={"url": redis_url},
        embedded={**base.embedded.model_dump(), "replicas": [typo]},
        migration={"backup_before_migration": False},
    )
    try:
        with pytest.raises(AgencyDataError):
            async with DataLayer(config):
                pass
    finally:
        stop_servers(typo)
    assert not holds_cluster(typo), "a new cluster was made in the misnamed folder"


async def test_a_column_the_standby_lacks_falls_back_to_the_primary(
    pair: Pair, layer: DataLayer
) -> None:
    su = pair.superuser(pair.primary_dir)
    with psycopg.connect(su, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS r14_cols")
        conn.execute("CREATE TABLE r14_cols (a int)")
        conn.execute("GRANT SELECT ON r14_cols TO PUBLIC")
    await asyncio.to_thread(pair.caught_up)
    pair.replay(paused=True)
    try:
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute("ALTER TABLE r14_cols ADD COLUMN b int")
        rows = await layer.fetch("SELECT b FROM r14_cols", replica=True)
    finally:
        pair.replay(paused=False)
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS r14_cols")
    assert rows == []


async def test_warm_connections_warms_the_primary(pair: Pair, layer: DataLayer) -> None:
    await asyncio.to_thread(pair.caught_up)
    pair.replay(paused=True)
    try:
        await layer.embeddings.create_collection("r14_warm", dimension=2)
        await layer.embeddings.collection("r14_warm").create_index("hnsw")
        assert layer._catalog is not None
        assert layer._db is not None
        spec = await layer._catalog.load("r14_warm")
        warmed = await warm_connections(layer._db, layer._catalog, [spec], 1)
    finally:
        pair.replay(paused=False)
    assert warmed == 1


def test_a_failed_create_leaves_no_slot_behind(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = reachable_dir(tmp_path_factory) / "standby2"
    (target / "postgres").mkdir(parents=True)
    (target / "postgres" / "stray.txt").write_text("not a cluster")
    slot = slot_name(target)
    primary = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    primary.acquire()  # create_replica's own lease would otherwise stop it on the way out
    try:
        with pytest.raises(AgencyDataError):
            create_replica(pair.primary_dir, target, settings=FAST_POSTGRES)
        assert pair.slots(slot) == 0, f"slot {slot} left behind"
    finally:
        with psycopg.connect(pair.superuser(pair.primary_dir), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                [slot],
            )
        primary.release(stop_if_last=False)


async def test_a_terminated_standby_session_raises_our_error(pair: Pair, layer: DataLayer) -> None:
    async def read_through_a_terminated_session() -> None:
        async with layer.transaction(readonly=True):
            assert await layer.fetch_value("SELECT pg_is_in_recovery()") is True
            pid = await layer.fetch_value("SELECT pg_backend_pid()")
            with psycopg.connect(pair.superuser(pair.replica_dir), autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
            await asyncio.sleep(0.2)
            await layer.fetch_value("SELECT 1")

    with pytest.raises(AgencyDataError):
        await read_through_a_terminated_session()


def test_a_refused_create_keeps_the_existing_standbys_slot(pair: Pair) -> None:
    slot = slot_name(pair.replica_dir)
    primary = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    primary.acquire()
    standby = EmbeddedPostgres(pair.replica_dir, settings=FAST_POSTGRES)
    try:
        stop_servers(pair.replica_dir)
        with pytest.raises(AgencyDataError, match="cluster already"):
            create_replica(pair.primary_dir, pair.replica_dir, settings=FAST_POSTGRES)
        assert pair.slots(slot) == 1, f"the standby's slot {slot} is gone"
    finally:
        with psycopg.connect(pair.superuser(pair.primary_dir), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                [slot, slot],
            )
        standby.acquire()
        standby.release(stop_if_last=False)
        primary.release(stop_if_last=False)


def test_promote_refuses_while_the_primary_runs(pair: Pair) -> None:
    primary = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    standby = EmbeddedPostgres(pair.replica_dir, settings=FAST_POSTGRES)
    primary.acquire()
    standby.acquire()
    try:
        with pytest.raises(BackupError):
            promote_replica(pair.replica_dir, settings=FAST_POSTGRES)
    finally:
        standby.release(stop_if_last=False)
        primary.release(stop_if_last=False)


def test_drop_removes_a_stopped_standby_and_its_slot(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    extra = reachable_dir(tmp_path_factory) / "extra"
    create_replica(pair.primary_dir, extra, settings=FAST_POSTGRES)
    standby = EmbeddedPostgres(extra, settings=FAST_POSTGRES)
    standby.acquire()
    try:
        with pytest.raises(BackupError, match="running"):
            drop_replica(extra)
    finally:
        standby.release()
    primary = EmbeddedPostgres(pair.primary_dir, settings=FAST_POSTGRES)
    stop_servers(pair.primary_dir)  # left running by the layers of earlier tests
    with pytest.raises(BackupError, match="did not answer"):
        drop_replica(extra)  # its slot must go too: the primary has to answer
    assert standby.pgdata.exists()
    primary.acquire()
    try:
        drop_replica(extra)
        assert not standby.pgdata.exists()
        assert pair.slots(slot_name(extra)) == 0
    finally:
        primary.release()
    with pytest.raises(BackupError, match="no PostgreSQL cluster"):
        drop_replica(extra)
    # The primary is no standby: it is never dropped.
    with pytest.raises(BackupError, match="primary, not a standby"):
        drop_replica(pair.primary_dir)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "--data-dir", "{a}"], "holds no standby to promote"),
        (["drop", "--data-dir", "{a}"], "holds no PostgreSQL cluster"),
        (["rejoin", "--data-dir", "{a}", "--primary", "{b}"], "holds no embedded PostgreSQL"),
        (["create", "--data-dir", "{a}", "--from", "{b}"], "holds no embedded PostgreSQL"),
    ],
)
def test_the_commands_refuse_folders_without_the_cluster_they_need(
    args: list[str], message: str, tmp_path: Path
) -> None:
    folders = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    result = agency_data("replica", *(arg.format(**folders) for arg in args), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything was made: no folder appears where none was.
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()
