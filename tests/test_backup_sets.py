"""Backup sets: full and incremental base backups with a manifest, verified by checksum."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from agency_data import DataLayer, DataLayerConfig
from agency_data.dsn import database_of
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.embedded.postgres import DATABASE
from agency_data.errors import BackupError, ConfigError, NotFound, ValidationError
from tests.conftest import FAST_POSTGRES, DatabaseDsn, make_config, reachable_dir
from tests.test_cli import agency_data


def sets_config(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, folder: str = "sets", **backup: Any
) -> DataLayerConfig:
    """A config on the test servers whose sets go to ``tmp_path / folder``."""
    return make_config(
        database,
        redis_url,
        tmp_path,
        backup={"directory": tmp_path / folder, "source_dsn": database.superuser, **backup},
    )


@pytest.fixture
async def layer(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    async with DataLayer(sets_config(database, redis_url, tmp_path)) as dl:
        yield dl


async def test_a_full_set_records_what_the_database_held(layer: DataLayer, tmp_path: Path) -> None:
    for i in range(3):
        await layer.agents.create(f"a{i}", "worker")
    await layer.tenant("other").tasks.create("resize", {})
    full = await layer.backups.create()
    manifest = full.manifest
    assert full.path.parent == tmp_path / "sets"
    assert manifest.kind == "full"
    assert manifest.parent is None
    assert manifest.table_rows["agents"] == 3
    assert manifest.table_rows["tasks"] == 1  # every tenant's rows
    assert manifest.schema_version is not None
    assert manifest.schema_version.startswith("agency_data:")
    assert "/" in manifest.start_lsn
    assert "/" in manifest.stop_lsn
    assert manifest.size_bytes > 1 << 20
    assert (full.path / "pgdata" / "backup_manifest").is_file()
    assert manifest.valkey_bytes is not None
    assert manifest.valkey_bytes == (full.path / "valkey.rdb").stat().st_size > 0
    assert [s.name for s in layer.backups.list()] == [full.name]
    # Private: 0700 folders, 0600 files, all through the set.
    for root, dirs, files in os.walk(full.path):
        for name in dirs:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE((Path(root) / name).lstat().st_mode) & 0o077 == 0, name
    assert stat.S_IMODE((tmp_path / "sets").stat().st_mode) == 0o700


async def test_an_incremental_set_builds_on_the_latest(layer: DataLayer) -> None:
    with pytest.raises(BackupError, match="create a full one first"):
        await layer.backups.create(incremental=True)
    full = await layer.backups.create()
    await layer.agents.create("later", "worker")
    incremental = await layer.backups.create(incremental=True)
    assert incremental.manifest.kind == "incremental"
    assert incremental.manifest.parent == full.name
    assert incremental.manifest.table_rows["agents"] == 1
    assert incremental.manifest.size_bytes < full.manifest.size_bytes
    assert [s.name for s in layer.backups.list()] == [full.name, incremental.name]
    window = layer.backups.window()
    assert window is not None
    assert not window.continuous  # no archived WAL: only the sets' own ends
    assert (window.earliest, window.latest) == (
        full.manifest.finished_at,
        incremental.manifest.finished_at,
    )
    report = await layer.backups.verify(incremental.name, drill=False)
    assert report.ok
    assert report.problems == []


async def test_verify_names_the_file_with_one_byte_changed(layer: DataLayer) -> None:
    backup = await layer.backups.create()
    assert (await layer.backups.verify("latest", drill=False)).ok
    damaged = next(
        path
        for path in sorted((backup.path / "pgdata" / "base").rglob("*"))
        if path.is_file() and path.stat().st_size > 8192
    )
    data = bytearray(damaged.read_bytes())
    data[4096] ^= 0xFF
    damaged.write_bytes(bytes(data))
    report = await layer.backups.verify(backup.name)
    assert not report.ok
    assert report.checks == [], "a damaged set is not restored"
    problems = report.problems
    relative = str(damaged.relative_to(backup.path / "pgdata"))
    assert problems, "a changed byte went unnoticed"
    assert any(relative in problem for problem in problems), problems


async def test_bad_input_and_missing_sets_are_clear(layer: DataLayer) -> None:
    with pytest.raises(NotFound, match="backup list"):
        await layer.backups.verify("20200101T000000000000Z-full")
    with pytest.raises(NotFound):
        await layer.backups.verify("latest")  # none yet
    assert layer.backups.window() is None
    for bad in (None, 3, "x" * 500):
        with pytest.raises(ValidationError):
            await layer.backups.verify(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="incremental"):
        await layer.backups.create(incremental="yes")  # type: ignore[arg-type]


async def test_a_configured_server_needs_a_source(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, backup={"directory": tmp_path / "s"})
    async with DataLayer(config) as dl:
        with pytest.raises(ConfigError, match=r"backup\.source_dsn"):
            await dl.backups.create()
    with pytest.raises(ConfigError, match="source_dsn"):
        make_config(database, redis_url, tmp_path, backup={"source_dsn": "host=x port=notaport"})


def test_the_command_line_creates_lists_and_verifies(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "AGENCY_DATA_BACKUP__DIRECTORY": str(tmp_path / "cli-sets"),
        "AGENCY_DATA_BACKUP__SOURCE_DSN": database.superuser,
    }
    made = agency_data(
        "backup", "create", "--json", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["name"]
    listed = agency_data(
        "backup", "list", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    assert "recoverable: the end of a set, between" in listed.stdout
    good = agency_data(
        "backup",
        "verify",
        name,
        "--no-drill",
        dsn=database,
        redis_url=redis_url,
        tmp_path=tmp_path,
        **env,
    )
    assert good.returncode == 0, good.stderr
    assert f"{name}: verified" in good.stdout
    (tmp_path / "cli-sets" / name / "pgdata" / "PG_VERSION").write_text("99\n")
    bad = agency_data(
        "backup", "verify", "--json", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert any("PG_VERSION" in problem for problem in report["problems"])
    assert database.superuser not in bad.stdout + bad.stderr


async def test_the_restore_drill_checks_a_real_copy(layer: DataLayer) -> None:
    await layer.admin.create_collection("drilled", dimension=8)
    drilled = layer.embeddings.collection("drilled")
    await drilled.store_many(
        [
            {
                "entity_type": "doc",
                "entity_id": str(i),
                "vector": [float((i * j) % 5) for j in range(8)],
            }
            for i in range(1, 200)
        ]
    )
    await drilled.create_index("hnsw")
    await layer.agents.create("drilled", "worker")
    await layer.backups.create()
    report = await layer.backups.verify("latest")
    checks = {check.name: check for check in report.checks}
    assert report.ok, report
    assert list(checks) == [
        "restore",
        "amcheck",
        "row counts",
        "collections catalog",
        "vector indexes",
        "searches",
    ]
    assert "B-tree indexes consistent" in checks["amcheck"].detail
    assert checks["vector indexes"].detail == "1 valid"
    assert checks["searches"].detail == "5 searches return the source's ids"
    # The source moved on since the set: its row counts are no longer the manifest's, but
    # the copy's are (the drill checks the copy against the manifest, not the source).
    await layer.agents.create("after the set", "worker")
    again = await layer.backups.verify("latest")
    assert {c.name: c.ok for c in again.checks}["row counts"]
    # A manifest that no longer matches what the files restore to is caught by the drill.
    latest = layer.backups.list()[-1]
    recorded = json.loads((latest.path / "agency-backup.json").read_text())
    recorded["table_rows"]["agents"] += 1
    (latest.path / "agency-backup.json").write_text(json.dumps(recorded))
    wrong = await layer.backups.verify("latest")
    assert not wrong.ok
    failed = [c for c in wrong.checks if not c.ok]
    assert [c.name for c in failed] == ["row counts"]
    assert "agents: 1 rows, the manifest says 2" in failed[0].detail


# -- restore --------------------------------------------------------------------------------------


async def test_a_restore_holds_exactly_what_the_set_covered(
    layer: DataLayer, database: DatabaseDsn, data_dir: Path
) -> None:
    await layer.admin.create_collection("kept", dimension=4)
    kept = layer.embeddings.collection("kept")
    vectors = [[0.1 * i, 1.0 / (i + 1), -0.25 * i, 3.0e-7 * i] for i in range(50)]
    await kept.store_many(
        [{"entity_type": "doc", "entity_id": str(i), "vector": v} for i, v in enumerate(vectors)]
    )
    await kept.create_index("hnsw")
    for i in range(3):
        await layer.agents.create(f"before-full-{i}", "worker")
    await layer.backups.create()
    await layer.agents.create("before-incremental", "worker")
    await layer.cache.set("kept-in-the-snapshot", {"n": 1})
    await layer.backups.create(incremental=True)
    await layer.agents.create("after-every-backup", "worker")
    await layer.cache.set("made-after-the-snapshot", 2)

    restored = data_dir  # a folder the server's user can reach under root
    pgdata = await layer.backups.restore("latest", restored)
    assert pgdata == restored / "postgres"
    with pytest.raises(BackupError, match="never writes over"):
        await layer.backups.restore("latest", restored)

    server = EmbeddedPostgres(restored, settings=FAST_POSTGRES)
    server.acquire()
    try:
        async with await psycopg.AsyncConnection.connect(
            server.dsn(database_of(database)), autocommit=True
        ) as conn:
            agents = await (await conn.execute("SELECT name FROM agents ORDER BY name")).fetchall()
            assert [a[0] for a in agents] == [
                "before-full-0",
                "before-full-1",
                "before-full-2",
                "before-incremental",
            ]
            table = (
                await (
                    await conn.execute(
                        "SELECT table_name FROM embedding_collections WHERE name = 'kept'"
                    )
                ).fetchone()
            )[0]
            rows = await (
                await conn.execute(
                    psycopg.sql.SQL("SELECT entity_id, vector::text FROM {}").format(
                        psycopg.sql.Identifier(table)
                    )
                )
            ).fetchall()
            assert len(rows) == 50
            # Bit-identical: the text form of each float4 round-trips exactly.
            restored_text = {entity: text for entity, text in rows}
            source = await layer.admin.fetch(
                psycopg.sql.SQL("SELECT entity_id, vector::text AS v FROM {}").format(
                    psycopg.sql.Identifier(table)
                )
            )
            assert restored_text == {row["entity_id"]: row["v"] for row in source}
            assert set(restored_text) == {str(i) for i in range(len(vectors))}
            invalid = await (
                await conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            ).fetchone()
            assert invalid == (0,)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            checked = await (
                await conn.execute(
                    "SELECT count(bt_index_check(c.oid)) FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                    "WHERE a.amname = 'btree' AND c.relpersistence = 'p'"
                )
            ).fetchone()
            assert checked is not None
            assert checked[0] > 10
    finally:
        server.release()
    # Valkey loads the set's snapshot at its first start: what Redis held at the backup.
    valkey = EmbeddedValkey(restored)
    client = redis.Redis.from_url(valkey.acquire(), decode_responses=True)
    try:
        keys = [str(key) for key in client.keys("*")]
        assert any(key.endswith("kept-in-the-snapshot") for key in keys), keys
        assert not any(key.endswith("made-after-the-snapshot") for key in keys), keys
    finally:
        client.close()
        valkey.release()


async def test_the_command_line_restores_without_a_server(
    layer: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    made = await layer.backups.create()
    args = ["backup", "restore", "latest", "--data-dir", str(data_dir)]
    args += ["--repository", str(tmp_path / "sets")]
    first = agency_data(*args, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"start it with: agency-data up --data-dir {data_dir}" in first.stdout
    assert (data_dir / "postgres" / "PG_VERSION").is_file()
    assert (data_dir / "postgres" / "backup_label").is_file()
    again = agency_data(*args, tmp_path=tmp_path)
    assert again.returncode == 2
    assert "never writes over" in again.stderr
    missing = agency_data(
        "backup",
        "restore",
        "nope",
        "--data-dir",
        str(tmp_path / "other"),
        "--repository",
        str(tmp_path / "sets"),
        tmp_path=tmp_path,
    )
    assert missing.returncode == 2
    assert "no backup set 'nope'" in missing.stderr
    assert (
        made.name
        in agency_data(
            "backup",
            "list",
            dsn=database,
            redis_url=redis_url,
            tmp_path=tmp_path,
            AGENCY_DATA_BACKUP__DIRECTORY=str(tmp_path / "sets"),
        ).stdout
    )


async def test_a_restore_to_a_point_in_time_keeps_exactly_what_was_committed_before_it(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    source_dir = reachable_dir(tmp_path_factory) / "source"
    config = archiving(source_dir, redis_url)

    def doc(name: str, i: int) -> dict[str, object]:
        # Floats that a text round trip through float4 would change if anything but the
        # stored bits came back.
        vector = [0.1 * (i + 1), 1.0 / 3.0 + i, -2.5e-7 * (i + 1)]
        return {"entity_type": "doc", "entity_id": name, "vector": vector}

    async with DataLayer(config) as dl:
        await dl.admin.create_collection("mem", dimension=3)
        mem = dl.embeddings.collection("mem")
        await mem.store_many([doc("before-the-set", 0)])
        await mem.create_index("hnsw")
        await dl.agents.create("before-the-set", "worker")
        await dl.backups.create()
        await dl.agents.create("before-t", "worker")
        await dl.tasks.create("before-t-task", {"n": 1})
        await mem.store_many([doc("before-t", 1)])
        await asyncio.sleep(1.2)
        target = datetime.now(UTC)
        await asyncio.sleep(1.2)
        await dl.agents.create("after-t", "worker")
        await dl.tasks.create("after-t-task", {"n": 2})
        await mem.store_many([doc("after-t", 2)])
        kept_vectors = {
            row["entity_id"]: row["v"]
            for row in await dl.admin.fetch(
                "SELECT entity_id, vector::text AS v FROM emb_mem WHERE entity_id <> 'after-t'"
            )
        }
        assert set(kept_vectors) == {"before-the-set", "before-t"}
        assert await dl.execute("DELETE FROM agents") == 3  # the mistake
        superuser = EmbeddedPostgres(source_dir).dsn("postgres")
        segment = await asyncio.to_thread(switch_and_archive, superuser)
        with pytest.raises(BackupError, match="restore an older set"):
            await dl.backups.restore(
                "latest",
                reachable_dir(tmp_path_factory),
                target_time=datetime(2020, 1, 1, tzinfo=UTC),
            )
        with pytest.raises(ValidationError, match="time zone"):
            await dl.backups.restore(
                "latest", reachable_dir(tmp_path_factory), target_time=datetime(2030, 1, 1)
            )
        restored = reachable_dir(tmp_path_factory) / "restored"
        await dl.backups.restore("latest", restored, target_time=target)
        # The snapshot is older than the target: Valkey starts empty rather than stale.
        assert not (restored / "valkey").exists()
        window = dl.backups.window()
        assert window is not None
        assert window.continuous
        assert window.earliest < target < window.latest

    server = EmbeddedPostgres(restored, settings=FAST_POSTGRES)
    server.acquire()
    try:
        async with await psycopg.AsyncConnection.connect(
            server.dsn(DATABASE), autocommit=True
        ) as conn:
            for _ in range(300):
                if not (await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone())[0]:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the restored server did not finish its recovery")
            names = await (await conn.execute("SELECT name FROM agents ORDER BY name")).fetchall()
            assert [n[0] for n in names] == ["before-t", "before-the-set"]
            types = await (await conn.execute("SELECT type FROM tasks")).fetchall()
            assert [t[0] for t in types] == ["before-t-task"]
            vectors = await (
                await conn.execute("SELECT entity_id, vector::text FROM emb_mem")
            ).fetchall()
            assert dict(vectors) == kept_vectors  # bit-identical, and nothing after T
            invalid = await (
                await conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            ).fetchone()
            assert invalid == (0,)
    finally:
        server.release()

    # A new full set with keep_full = 1: the first goes, and the WAL only it needed.
    async with DataLayer(config) as dl:
        wal = source_dir / "backup-sets" / "wal"
        assert min(p.name for p in wal.iterdir()) < segment
        dl.backups.keep_full = 1  # as backup.keep_full = 1 would
        newest = await dl.backups.create()
        assert [s.name for s in dl.backups.list()] == [newest.name]
        start = (newest.path / "pgdata" / "backup_label").read_text().split("(file ")[1][:24]
        assert all(p.name[:24] >= start for p in wal.iterdir()), sorted(wal.iterdir())


async def test_retention_drops_whole_chains_oldest_first(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(sets_config(database, redis_url, tmp_path, keep_full=2)) as dl:
        first = await dl.backups.create()
        first_incremental = await dl.backups.create(incremental=True)
        second = await dl.backups.create()
        assert [s.name for s in dl.backups.list()] == [
            first.name,
            first_incremental.name,
            second.name,
        ]
        third = await dl.backups.create()
        # The oldest chain goes whole: a kept incremental always has its parent.
        assert [s.name for s in dl.backups.list()] == [second.name, third.name]
        assert not first.path.exists()
        assert not first_incremental.path.exists()
    with pytest.raises(ConfigError, match="keep_full"):
        make_config(database, redis_url, tmp_path, backup={"keep_full": 0})


async def test_retention_by_age_keeps_the_newest_chain(layer: DataLayer) -> None:
    backups = layer.backups
    backups.keep_full, backups.keep_days = 10, 1.0
    old = await backups.create()
    recent = await backups.create()
    # Long past, and far ahead, as far as the repository knows.
    for aged, finished in ((old, "2020-01-01"), (recent, "2099-01-01")):
        recorded = json.loads((aged.path / "agency-backup.json").read_text())
        recorded["finished_at"] = f"{finished}T00:00:00+00:00"
        (aged.path / "agency-backup.json").write_text(json.dumps(recorded))
    newest = await backups.create()
    assert [s.name for s in backups.list()] == [recent.name, newest.name]
    # A tenth of a second: every chain but the newest is past it (the one dated 2099 is not).
    backups.keep_days = 0.1 / 86_400
    last = await backups.create()
    assert [s.name for s in backups.list()] == [recent.name, last.name]


async def test_compressed_sets_are_smaller_and_restore_the_same(
    layer: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path, data_dir: Path
) -> None:
    for i in range(3):
        await layer.agents.create(f"before-{i}", "worker")
    plain = await layer.backups.create()
    async with DataLayer(sets_config(database, redis_url, tmp_path, "gz", compress=1)) as dl:
        full = await dl.backups.create()
        await dl.agents.create("between", "worker")
        incremental = await dl.backups.create(incremental=True)
        assert full.manifest.compression == incremental.manifest.compression == "gzip"
        assert (full.path / "pgdata" / "base.tar.gz").is_file()
        assert full.manifest.size_bytes < plain.manifest.size_bytes / 2
        report = await dl.backups.verify(incremental.name, drill=True)
        assert report.ok, (report.problems, report.checks)
        await dl.backups.restore("latest", data_dir)
    assert not (data_dir / ".unpacked").exists()
    server = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    server.acquire()
    try:
        async with await psycopg.AsyncConnection.connect(
            server.dsn(database_of(database)), autocommit=True
        ) as conn:
            names = await (await conn.execute("SELECT name FROM agents ORDER BY name")).fetchall()
        assert [n[0] for n in names] == ["before-0", "before-1", "before-2", "between"]
    finally:
        server.release()


async def test_retention_expires_the_archived_wal_only_dropped_sets_needed(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Compressed sets: their backup_label is inside an archive, so the first segment a kept
    # set needs comes from its manifest.
    source_dir = reachable_dir(tmp_path_factory) / "source"
    config = archiving(source_dir, redis_url, compress=1, keep_full=1)
    superuser = EmbeddedPostgres(source_dir).dsn("postgres")

    async with DataLayer(config) as dl:
        first = await dl.backups.create()
        for i in range(3):
            await dl.agents.create(f"a{i}", "worker")
            switch_and_archive(superuser)
        second = await dl.backups.create()
        await dl.agents.create("after", "worker")  # pg_switch_wal switches only after writes
        last = switch_and_archive(superuser)
        assert [s.name for s in dl.backups.list()] == [second.name]
        wal = dl.backups.repository / "wal"
        segments = sorted(p.name for p in wal.iterdir() if len(p.name) == 24)
        # What the kept set needs stays (its start onwards); what only the first needed is gone.
        assert segments[0] == start_segment(second.manifest.start_lsn, second.manifest.timeline)
        assert start_segment(first.manifest.start_lsn, first.manifest.timeline) < segments[0]
        assert segments[-1] >= last


def archiving(source_dir: Path, redis_url: str, **backup: object) -> DataLayerConfig:
    """An embedded server in ``source_dir`` that archives its WAL into its repository."""
    return DataLayerConfig(
        embedded={"data_dir": source_dir, "postgres_settings": FAST_POSTGRES},
        redis={"url": redis_url},
        backup={"archive_wal": True, **backup},
        migration={"backup_before_migration": False},
    )


def switch_and_archive(superuser: str) -> str:
    """Close the current WAL segment and wait until it is archived; its name."""
    with psycopg.connect(superuser, autocommit=True) as su:
        row = su.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        for _ in range(200):
            done = su.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if done is not None and done[0] is not None and done[0] >= row[0]:
                return str(row[0])
            time.sleep(0.05)
    raise AssertionError(f"segment {row[0]} was not archived")


def start_segment(lsn: str, timeline: int) -> str:
    """The 16 MB WAL segment holding ``lsn`` (the embedded server's segment size)."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    number = ((high << 32) + low) // (16 << 20)
    return f"{timeline:08X}{number // 256:08X}{number % 256:08X}"


async def test_a_restore_over_existing_valkey_data_writes_nothing(
    layer: DataLayer, data_dir: Path
) -> None:
    await layer.cache.set("r14", 1)
    made = await layer.backups.create()
    assert made.manifest.valkey_bytes
    # Valkey data of an earlier run in the target folder (started and stopped for real).
    valkey = EmbeddedValkey(data_dir)
    valkey.acquire()
    valkey.release()
    assert (data_dir / "valkey" / "appendonlydir").exists()
    with pytest.raises(BackupError, match="Valkey data already"):
        await layer.backups.restore("latest", data_dir)
    assert not (data_dir / "postgres").exists(), "the refused restore wrote a cluster"
