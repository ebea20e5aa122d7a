"""Warm starts: pg_prewarm and autoprewarm on the embedded server, dl.admin.prewarm(), and the
planning of searches on new pooled connections.

The restart tests run an embedded server of their own (stopped and started between phases);
the others use the session's server, where pg_prewarm exists only once a test creates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded import EmbeddedPostgres
from agency_data.embedded.postgres import DATABASE
from agency_data.errors import NotFound, ValidationError
from agency_data.postgres.database import Database
from agency_data.vectors.catalog import Catalog
from agency_data.vectors.prewarm import PrewarmStep, autoprewarm_done, plan, warm_connections
from tests.conftest import FAST_POSTGRES, DatabaseDsn, make_config

DIM = 32
ROWS = 3000


def items(count: int, seed: int = 7) -> list[dict[str, Any]]:
    vectors = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return [{"entity_type": "doc", "entity_id": str(i), "vector": v} for i, v in enumerate(vectors)]


def embedded(
    data_dir: Path, redis_url: str, *, autoprewarm: bool, prewarm_on_start: bool = False
) -> DataLayerConfig:
    settings = {**FAST_POSTGRES, "pg_prewarm.autoprewarm": "on" if autoprewarm else "off"}
    return DataLayerConfig(
        embedded={"data_dir": data_dir, "postgres_settings": settings},
        redis={"url": redis_url},
        migration={"backup_before_migration": False},
        vector={"prewarm_on_start": prewarm_on_start},
    )


def superuser_dsn(data_dir: Path) -> str:
    return EmbeddedPostgres(data_dir).dsn(DATABASE)


def cached_blocks(dsn: str, relation: str) -> int:
    """Blocks of ``relation`` in shared buffers (pg_buffercache, as the superuser)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        row = conn.execute(
            "SELECT count(*) FROM pg_buffercache "
            "WHERE reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND relfilenode = pg_relation_filenode(%s::regclass) AND relforknumber = 0",
            [relation],
        ).fetchone()
    assert row is not None
    return int(row[0])


def relation_blocks(dsn: str, relation: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_relation_size(%s::regclass) / 8192", [relation]).fetchone()
    assert row is not None
    return int(row[0])


def cached_relations(dsn: str) -> set[tuple[str, int]]:
    """(relation, block) of every block of the current database in shared buffers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(pg_filenode_relation(0, relfilenode)::text, relfilenode::text), "
            "relblocknumber FROM pg_buffercache WHERE reldatabase = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return {(str(name), int(block)) for name, block in rows}


def show(dsn: str, setting: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", [setting]).fetchone()
    assert row is not None
    return str(row[0])


def extensions(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}


async def wait_until_cached(dsn: str, relation: str, blocks: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while (found := cached_blocks(dsn, relation)) < blocks:
        assert time.monotonic() < deadline, f"{found} of {blocks} blocks of {relation} cached"
        await asyncio.sleep(0.2)


# -- the plan ------------------------------------------------------------------------------------


def test_plan_puts_indexes_first_and_prefetches_past_the_budget() -> None:
    steps = plan([("a_ann", 30), ("b_ann", 50)], [("a", 40), ("b", 10)], budget=100, chunk=25)
    assert steps == [
        PrewarmStep("a_ann", "buffer", 0, 24),
        PrewarmStep("a_ann", "buffer", 25, 29),
        PrewarmStep("b_ann", "buffer", 0, 24),
        PrewarmStep("b_ann", "buffer", 25, 49),
        PrewarmStep("a", "buffer", 0, 19),
        PrewarmStep("a", "prefetch", 20, 39),
        PrewarmStep("b", "prefetch", 0, 9),
    ]
    assert sum(s.blocks for s in steps if s.mode == "buffer") == 100


def test_plan_without_budget_or_blocks() -> None:
    assert plan([("x_ann", 8)], [("x", 0)], budget=0) == [PrewarmStep("x_ann", "prefetch", 0, 7)]
    assert plan([], [("x", 0)], budget=10) == []
    assert plan([("x_ann", 3)], [], budget=-5) == [PrewarmStep("x_ann", "prefetch", 0, 2)]


# -- the embedded server: restarts ------------------------------------------------------------


async def test_restart_prewarm_autoprewarm_and_start(data_dir: Path, redis_url: str) -> None:
    superuser = superuser_dsn(data_dir)
    async with DataLayer(embedded(data_dir, redis_url, autoprewarm=False)) as dl:
        assert "pg_prewarm" in show(superuser, "shared_preload_libraries")
        col = await dl.embeddings.create_collection("docs", dimension=DIM)
        await col.store_many(items(ROWS))
        await col.create_index("hnsw")
    index, table = "emb_docs_ann", "emb_docs"
    index_blocks, table_blocks = 0, 0

    # Restarted with autoprewarm off: nothing of the collection is in shared buffers.
    async with DataLayer(embedded(data_dir, redis_url, autoprewarm=False)) as dl:
        index_blocks = relation_blocks(superuser, index)
        table_blocks = relation_blocks(superuser, table)
        assert index_blocks > 1
        assert table_blocks > 1
        assert cached_blocks(superuser, index) == 0
        assert cached_blocks(superuser, table) == 0

        report = await dl.admin.prewarm()
        assert report.skipped is None
        assert report.buffered == {index: index_blocks, table: table_blocks}
        assert report.prefetched == {}
        assert cached_blocks(superuser, index) == index_blocks
        assert cached_blocks(superuser, table) == table_blocks
        # The extension lived for one transaction: nothing of it is left in the database.
        assert "pg_prewarm" not in extensions(superuser)

        # The first search finds every block of the collection it needs in shared buffers:
        # what it reads from disk is the catalogs' (statistics, operators) and nothing else.
        before = cached_relations(superuser)
        query = "[" + ",".join(["0.5"] * DIM) + "]"
        explained = await dl.admin.fetch_value(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
            "SELECT id FROM emb_docs ORDER BY vector <=> %s::vector LIMIT 10",
            [query],
        )
        scan = explained[0]["Plan"]["Plans"][0]
        assert scan["Index Name"] == index
        assert scan["Shared Hit Blocks"] > 10 * max(1, scan["Shared Read Blocks"])
        read_now = cached_relations(superuser) - before
        assert not {name for name, _ in read_now} & {index, table}

        # Cancelled at any point, a prewarm leaves no transaction, extension or broken pool.
        for timeout in (0, 0.001, 0.003, 0.01, 0.03, 0.1):
            with suppress(TimeoutError):
                await asyncio.wait_for(dl.admin.prewarm(), timeout)
        again = await dl.admin.prewarm()
        assert again.buffered == {index: index_blocks, table: table_blocks}
        assert "pg_prewarm" not in extensions(superuser)
        hits = await col_search(dl)
        assert len(hits) == 10
        deadline = time.monotonic() + 30
        while open_superuser_transactions(superuser):
            assert time.monotonic() < deadline, "a cancelled prewarm's transaction stayed open"
            await asyncio.sleep(0.1)

    # autoprewarm: a server that shuts down with the index cached reads it back after a start.
    async with DataLayer(embedded(data_dir, redis_url, autoprewarm=True)) as dl:
        assert show(superuser, "pg_prewarm.autoprewarm") == "on"
        await dl.admin.prewarm()
    async with DataLayer(embedded(data_dir, redis_url, autoprewarm=True)):
        assert await autoprewarm_done(superuser)
        await wait_until_cached(superuser, index, index_blocks)

    # The DataLayer's own start prewarms in the background, without autoprewarm.
    async with DataLayer(
        embedded(data_dir, redis_url, autoprewarm=False, prewarm_on_start=True)
    ) as dl:
        # A cancelled wait leaves the warm-up running; a wait to the end finds it done.
        waiter = asyncio.create_task(dl.prewarmed())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await dl.prewarmed()
        assert dl._prewarm is not None
        assert dl._prewarm.done()
        assert not dl._prewarm.cancelled()
        await wait_until_cached(superuser, index, index_blocks)
        await wait_until_cached(superuser, table, table_blocks)
        assert "pg_prewarm" not in extensions(superuser)
    await dl.prewarmed()  # closed: nothing to wait for


async def col_search(dl: DataLayer) -> list[Any]:
    return await dl.embeddings.collection("docs").find_similar([0.5] * DIM, limit=10)


def open_superuser_transactions(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'postgres' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- configured servers ----------------------------------------------------------------------


async def make_docs(dl: DataLayer, name: str = "docs") -> None:
    col = await dl.embeddings.create_collection(name, dimension=DIM)
    await col.store_many(items(500))
    await col.create_index("hnsw")


async def test_without_pg_prewarm_nothing_is_done_and_a_line_is_logged(
    dl: DataLayer, caplog: pytest.LogCaptureFixture
) -> None:
    await make_docs(dl)
    with caplog.at_level(logging.INFO, logger="agency_data"):
        report = await dl.admin.prewarm()
    assert report.buffered == {}
    assert report.prefetched == {}
    assert report.skipped is not None
    assert "CREATE EXTENSION pg_prewarm" in report.skipped
    assert any("not prewarmed" in r.getMessage() for r in caplog.records)
    # Searches are untouched.
    assert len(await col_search(dl)) == 10


@pytest.fixture
def pg_prewarm(database: DatabaseDsn) -> str:
    """pg_prewarm installed in the test database by the superuser, as a DBA would."""
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'"
        ).fetchone()
        if available is None:
            missing = "the test server has no pg_prewarm (PostgreSQL's contrib)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{missing}; CI must run these tests")
            pytest.skip(missing)
        conn.execute("CREATE EXTENSION pg_prewarm")
    return database.superuser


async def test_an_installed_pg_prewarm_is_used_by_the_owner(
    pg_prewarm: str, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(
        make_config(database, redis_url, tmp_path, vector={"prewarm_on_start": False})
    ) as dl:
        await make_docs(dl)
        await make_docs(dl, "notes")
        report = await dl.admin.prewarm(["docs"])
        assert report.skipped is None
        assert report.buffered == {
            "emb_docs_ann": relation_blocks(pg_prewarm, "emb_docs_ann"),
            "emb_docs": relation_blocks(pg_prewarm, "emb_docs"),
        }
        everything = await dl.admin.prewarm()
        assert set(everything.buffered) == {
            "emb_docs_ann",
            "emb_docs",
            "emb_notes_ann",
            "emb_notes",
        }

        # Without EXECUTE on pg_prewarm the owner skips, saying why.
        with psycopg.connect(pg_prewarm, autocommit=True) as conn:
            conn.execute(
                "REVOKE EXECUTE ON FUNCTION pg_prewarm(regclass, text, text, bigint, bigint) "
                "FROM PUBLIC"
            )
        refused = await dl.admin.prewarm()
        assert refused.buffered == {}
        assert refused.skipped is not None
        assert "may not execute" in refused.skipped


async def test_names_are_checked(dl: DataLayer) -> None:
    await make_docs(dl)
    with pytest.raises(NotFound):
        await dl.admin.prewarm(["docs", "nowhere"])
    with pytest.raises(ValidationError) as bad:
        await dl.admin.prewarm("docs")  # type: ignore[arg-type]
    assert bad.value.field == "names"
    with pytest.raises(ValidationError):
        await dl.admin.prewarm(["Not A Name"])
    with pytest.raises(ValidationError):
        await dl.admin.prewarm([3])  # type: ignore[list-item]
    empty = await dl.admin.prewarm([])
    assert empty.buffered == {}
    assert empty.skipped is None


async def test_no_collections_means_nothing_to_do(dl: DataLayer) -> None:
    report = await dl.admin.prewarm()
    assert report.buffered == {}
    assert report.prefetched == {}
    assert report.skipped is None


async def test_new_connections_run_each_kind_of_search(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        postgresql={"pool_min_size": 3, "pool_max_size": 6},
        vector={"prewarm_on_start": False},
    )
    async with DataLayer(config) as dl:
        await make_docs(dl)
        half = await dl.embeddings.create_collection("half", dimension=DIM, storage="halfvec")
        await half.store_many(items(200))
        await half.create_index("hnsw")
        bits = await dl.embeddings.create_collection("bits", dimension=DIM)
        await bits.store_many(items(200))
        await bits.create_index("hnsw", quantization="binary")
        lists = await dl.embeddings.create_collection("lists", dimension=DIM, metric="euclidean")
        await lists.store_many(items(200))
        await lists.create_index("ivfflat")
        await dl.embeddings.create_collection("bare", dimension=DIM)  # no index: not planned

        db = Database(dl.pool, dl.config.postgresql)
        catalog = Catalog(db, db, dl.config.vector)
        specs = [await catalog.load(n) for n in ("docs", "half", "bits", "lists", "bare")]
        assert await warm_connections(db, catalog, specs, 3) == 3
        # Each pooled connection ran every indexed collection's search until psycopg prepared
        # it: the application's first search there starts planned and prepared. (A binary
        # index's search sets ef_search in a savepoint, whose rollback makes psycopg forget
        # what it prepared: it is searched first, and not kept prepared.)
        async with (
            dl.pool.connection() as one,
            dl.pool.connection() as two,
            dl.pool.connection() as three,
        ):
            for conn in (one, two, three):
                cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
                prepared = " ".join(row["statement"] for row in await cursor.fetchall())
                for table in ("emb_docs", "emb_half", "emb_lists"):
                    assert table in prepared
                assert "emb_bare" not in prepared
        assert await warm_connections(db, catalog, specs[-1:], 3) == 0
        assert len(await col_search(dl)) == 10


async def test_a_start_without_migrating_warms_nothing_quietly(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agency_data.vectors")
    config = make_config(empty_database, redis_url, tmp_path, migration={"auto_migrate": False})
    async with DataLayer(config) as dl:
        await dl.prewarmed()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "the schema is not migrated" in caplog.text
