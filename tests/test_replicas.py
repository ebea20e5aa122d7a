"""Read replicas on real streaming standbys: routing, lag bounds, read-your-writes, fallback."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, LiteralString

import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agency_data import DataLayer, DataLayerConfig
from agency_data.backup.replicas import create_replica
from agency_data.embedded import EmbeddedPostgres
from agency_data.errors import ConfigError, NotFound, ValidationError
from tests.conftest import FAST_POSTGRES, ServerSet, reachable_dir
from tests.test_isolation import postmaster_pid
from tests.test_prewarm import superuser_dsn

pytestmark = pytest.mark.timeout(240)


class Pair:
    """An embedded primary and a streaming standby of it, shared by this module's tests."""

    def __init__(self, root: Path) -> None:
        self.primary_dir = root / "primary"
        self.replica_dir = root / "replica"

    def superuser(self, folder: Path) -> str:
        return superuser_dsn(folder)

    @contextmanager
    def hung(self) -> Iterator[None]:
        """The standby stopped dead (SIGSTOP: its sockets stay open, nothing answers)."""
        postmaster = psutil.Process(postmaster_pid(self.replica_dir))
        processes = [postmaster, *postmaster.children()]
        for process in processes:
            process.suspend()
        try:
            yield
        finally:
            for process in processes:
                process.resume()

    def config(
        self, redis_url: str, *, standbys: bool = True, **postgresql: Any
    ) -> DataLayerConfig:
        return DataLayerConfig(
            postgresql={"pool_min_size": 1, "pool_max_size": 4, **postgresql},
            redis={"url": redis_url},
            embedded={
                "data_dir": self.primary_dir,
                "replicas": [self.replica_dir] if standbys else [],
                "postgres_settings": FAST_POSTGRES,
                "stop_on_close": False,
            },
            migration={"backup_before_migration": False},
        )

    def caught_up(self) -> None:
        with psycopg.connect(self.superuser(self.primary_dir), autocommit=True) as conn:
            # The inserted end: FAST_POSTGRES commits without waiting for the flush.
            row = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        with psycopg.connect(self.superuser(self.replica_dir), autocommit=True) as conn:
            for _ in range(500):
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", [row[0]]).fetchone()
                if done is not None and done[0]:
                    return
                time.sleep(0.01)
        raise AssertionError("the standby did not catch up within 5 s")

    def slots(self, slot: str) -> int:
        """How many replication slots named ``slot`` the primary has."""
        with psycopg.connect(self.superuser(self.primary_dir), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", [slot]
            ).fetchone()
        assert row is not None
        return int(row[0])

    def replay(self, paused: bool) -> None:
        with psycopg.connect(self.superuser(self.replica_dir), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
            )


def started_pair(root: Path, redis_url: str) -> Iterator[Pair]:
    """A primary with its schema and a standby of it, stopped at the end."""
    made = Pair(root)

    async def first_start() -> None:
        # Roles and schema on the primary first: the standby copies them.
        async with DataLayer(made.config(redis_url, standbys=False)):
            pass

    asyncio.run(first_start())
    create_replica(made.primary_dir, made.replica_dir, settings=FAST_POSTGRES)
    yield made
    stop_servers(made.replica_dir, made.primary_dir)


def scalar(dsn: str, query: LiteralString) -> object:
    """The one value ``query`` returns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def stop_servers(*folders: Path) -> None:
    """Stop the embedded servers of ``folders`` that run, whoever started them."""
    for folder in folders:
        server = EmbeddedPostgres(folder)
        if server.is_running():
            server.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, servers: ServerSet) -> Iterator[Pair]:
    yield from started_pair(reachable_dir(tmp_path_factory), servers.redis_url)


@pytest.fixture
async def layer(pair: Pair, redis_url: str) -> AsyncIterator[DataLayer]:
    async with DataLayer(pair.config(redis_url, max_replica_lag=60)) as dl:
        yield dl


def replica_reads(dl: DataLayer) -> int:
    assert dl._replicas is not None
    return sum(reads for _, _, reads in dl._replicas.stats())


async def test_routed_reads_run_on_the_standby(pair: Pair, layer: DataLayer) -> None:
    assert layer.replica_conninfos == [
        EmbeddedPostgres(pair.replica_dir).dsn("agency_data", user="agency_app")
    ]
    assert await layer.fetch_value("SELECT pg_is_in_recovery()", replica=True) is True
    assert await layer.fetch_value("SELECT pg_is_in_recovery()") is False
    async with layer.transaction(readonly=True) as tx:
        row = await (await tx.conn.execute("SELECT pg_is_in_recovery() AS standby")).fetchone()
        assert row is not None
        assert row["standby"] is True
    async with layer.transaction() as tx:
        row = await (await tx.conn.execute("SELECT pg_is_in_recovery() AS standby")).fetchone()
        assert row is not None
        assert row["standby"] is False


async def test_rows_written_on_the_primary_are_read_on_the_replica_within_the_bound(
    layer: DataLayer,
) -> None:
    agents = layer.tenant("acme").agents
    before = replica_reads(layer)
    made = await agents.create("scout", "search")
    started = time.monotonic()
    while True:
        try:
            found = await agents.get(made.id, cached=False)
            break
        except NotFound:
            assert time.monotonic() - started < 5.0, "the standby never showed the row"
            await asyncio.sleep(0.005)
    assert found.id == made.id
    print(f"visible on the standby after {1000 * (time.monotonic() - started):.1f} ms")
    assert replica_reads(layer) > before
    assert (await agents.count()) >= 1
    assert [a.id for a in (await agents.list()).items][-1] == made.id


async def test_every_routed_read_goes_to_the_standby(pair: Pair, layer: DataLayer) -> None:
    # Replay paused: what the standby serves lacks the new rows, which tells where each read ran.
    acme = layer.tenant("acme")
    await layer.embeddings.create_collection("notes", dimension=2)
    pair.caught_up()
    pair.replay(paused=True)
    try:
        agent = await acme.agents.create("late", "search")
        task = await acme.tasks.create("late-task", data={"words": "zebra crossing"})
        notes = acme.embeddings.collection("notes")
        note = await notes.store(
            {"entity_type": "note", "entity_id": "1", "vector": [1.0, 0.0], "content": "zebra"}
        )
        with pytest.raises(NotFound):
            await acme.agents.get(agent.id, cached=False)
        assert await acme.agents.get_many([agent.id]) == []
        assert agent.id not in {a.id for a in (await acme.agents.list(limit=500)).items}
        with pytest.raises(NotFound):
            await acme.tasks.get(task.id)
        assert await acme.tasks.get_many([task.id]) == []
        assert await acme.tasks.search("zebra") == []
        assert task.id not in {t.id for t in (await acme.tasks.list(limit=500)).items}
        with pytest.raises(NotFound):
            await notes.get(note)
        assert await notes.get_many([note]) == []
        assert await notes.count() == 0
        assert await notes.find_similar([1.0, 0.0], 5) == []
        assert await notes.batch_search([{"vector": [1.0, 0.0]}]) == [[]]
        assert await notes.hybrid_search("zebra", [1.0, 0.0]) == []
        # ...and a consistent read waits replica_wait, then reads the primary.
        assert (await acme.agents.get(agent.id, consistent=True)).id == agent.id
        assert [t.id for t in await acme.tasks.search("zebra", consistent=True)] == [task.id]
        assert (await notes.get(note, consistent=True)).id == note
        assert await notes.count(consistent=True) == 1
        assert [r.id for r in await notes.find_similar([1.0, 0.0], 5, consistent=True)] == [note]
        # Reads in a transaction and the cache's fills are the primary's.
        async with layer.transaction():
            assert (await acme.agents.get(agent.id)).id == agent.id
    finally:
        pair.replay(paused=False)
    assert layer._replicas is not None
    assert layer._replicas.fallbacks["behind"] >= 5


async def test_consistent_reads_never_see_stale_data(pair: Pair, redis_url: str) -> None:
    async with DataLayer(pair.config(redis_url, replica_wait=1.0)) as layer:
        agents = layer.tenant("acme").agents
        agent = await agents.create("counter", "loop")
        before = replica_reads(layer)
        for round_ in range(150):
            await agents.update(agent.id, name=f"counter-{round_}")
            assert (await agents.get(agent.id, consistent=True)).name == f"counter-{round_}"
        served = replica_reads(layer) - before
        print(f"the standby served {served} of 150 consistent reads")
        assert served > 0, "every consistent read went to the primary: the check proves nothing"


async def test_a_replica_further_behind_than_the_bound_is_skipped(
    pair: Pair, redis_url: str
) -> None:
    config = pair.config(redis_url, max_replica_lag=0.5, replica_check_interval=0.1)
    async with DataLayer(config) as layer:
        agents = layer.tenant("acme").agents
        pair.replay(paused=True)
        try:
            made = await agents.create("fresh", "search")
            # The standby's lag grows from the last commit it replayed; past 0.5 s it is skipped.
            await asyncio.sleep(1.0)
            assert (await agents.get(made.id, cached=False)).id == made.id
            assert layer._replicas is not None
            assert layer._replicas.fallbacks["lag"] >= 1
            text = await layer.metrics_text()
        finally:
            pair.replay(paused=False)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lag = families["agency_data_replica_lag_seconds"].samples
    assert lag
    assert lag[0].value > 0.5
    fallbacks = {
        s.labels["reason"]: s.value
        for s in families["agency_data_replica_fallbacks"].samples
        if s.name.endswith("_total")
    }
    assert fallbacks["lag"] >= 1


async def test_a_killed_replica_falls_back_to_the_primary_with_no_failed_call(
    pair: Pair, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agency_data.postgres.replicas")
    async with DataLayer(pair.config(redis_url)) as layer:
        agents = layer.tenant("acme").agents
        made = await agents.create("survivor", "search")
        await asyncio.to_thread(pair.caught_up)
        standby = EmbeddedPostgres(pair.replica_dir)

        async def reads(n: int) -> None:
            for _ in range(n):
                assert (await agents.get(made.id, cached=False)).id == made.id
                assert await agents.count() >= 1

        await reads(20)
        os.kill(postmaster_pid(pair.replica_dir), signal.SIGKILL)
        started = time.monotonic()
        await asyncio.gather(*(reads(50) for _ in range(4)))
        elapsed = time.monotonic() - started
        assert layer._replicas is not None
        fallbacks = layer._replicas.fallbacks
        assert fallbacks["failed"] + fallbacks["down"] >= 1
        assert any("out of use" in r.message or "failed" in r.message for r in caplog.records)
        print(f"400 reads across the kill took {elapsed:.2f} s")
    # Back for the next tests: started again, it catches up from its slot.
    await asyncio.to_thread(standby.acquire)
    standby.release(stop_if_last=False)


async def test_a_standby_that_is_down_at_start_does_not_stop_the_layer(
    pair: Pair, redis_url: str, tmp_path: Path
) -> None:
    # A socket folder where no server listens.
    nowhere = psycopg.conninfo.make_conninfo(host=str(tmp_path), dbname="agency_data")
    config = pair.config(redis_url, standbys=False, replicas=[nowhere])
    async with DataLayer(config) as layer:
        assert await layer.fetch_value("SELECT pg_is_in_recovery()", replica=True) is False
        assert layer._replicas is not None
        assert layer._replicas.fallbacks["down"] == 1


async def test_a_consistent_read_waiting_for_the_standby_can_be_cancelled(
    pair: Pair, redis_url: str
) -> None:
    async with DataLayer(pair.config(redis_url, max_replica_lag=60, replica_wait=30)) as layer:
        agents = layer.tenant("acme").agents
        pair.replay(paused=True)
        try:
            made = await agents.create("waited", "search")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(agents.get(made.id, consistent=True), 0.3)
            assert time.monotonic() - started < 2.0
        finally:
            pair.replay(paused=False)
        # Nothing was left holding a connection: the layer serves on.
        assert (await agents.get(made.id, consistent=True)).id == made.id


async def test_bad_routing_input_is_refused(layer: DataLayer) -> None:
    with pytest.raises(ValidationError, match="consistent"):
        await layer.fetch("SELECT 1", consistent=True)
    with pytest.raises(ValidationError, match="replica"):
        await layer.fetch("SELECT 1", replica="yes")  # type: ignore[call-overload]
    agents = layer.tenant("acme").agents
    for call in (
        agents.get("00000000-0000-0000-0000-000000000000", consistent=1),  # type: ignore[arg-type]
        agents.list(consistent="no"),  # type: ignore[arg-type]
        layer.tenant("acme").tasks.count(consistent=None),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValidationError, match="consistent"):
            await call
    with pytest.raises(ValidationError, match="consistent"):
        async with layer.transaction(readonly=True, consistent="x"):  # type: ignore[arg-type]
            pass


def test_a_bad_replica_dsn_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as caught:
        DataLayerConfig(
            postgresql={"dsn": "postgresql://a@h/db", "replicas": ["host=x password='s3cret"]}
        )
    assert "replicas[0]" in str(caught.value)
    assert "s3cret" not in str(caught.value)
