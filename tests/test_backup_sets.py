"""Backup sets: full and incremental base backups with a manifest, verified by checksum."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agency_data import DataLayer
from agency_data.errors import BackupError, ConfigError, NotFound, ValidationError
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data


@pytest.fixture
async def layer(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        backup={"directory": tmp_path / "sets", "source_dsn": database.superuser},
    )
    async with DataLayer(config) as dl:
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
    assert await layer.backups.verify(incremental.name) == []


async def test_verify_names_the_file_with_one_byte_changed(layer: DataLayer) -> None:
    backup = await layer.backups.create()
    assert await layer.backups.verify("latest") == []
    damaged = next(
        path
        for path in sorted((backup.path / "pgdata" / "base").rglob("*"))
        if path.is_file() and path.stat().st_size > 8192
    )
    data = bytearray(damaged.read_bytes())
    data[4096] ^= 0xFF
    damaged.write_bytes(bytes(data))
    problems = await layer.backups.verify(backup.name)
    relative = str(damaged.relative_to(backup.path / "pgdata"))
    assert problems, "a changed byte went unnoticed"
    assert any(relative in problem for problem in problems), problems


async def test_bad_input_and_missing_sets_are_clear(layer: DataLayer, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="backup list"):
        await layer.backups.verify("20200101T000000Z-full")
    with pytest.raises(NotFound):
        await layer.backups.verify("latest")  # none yet
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
    good = agency_data(
        "backup", "verify", name, dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert good.returncode == 0, good.stderr
    assert "every file matches its checksum" in good.stdout
    (tmp_path / "cli-sets" / name / "pgdata" / "PG_VERSION").write_text("99\n")
    bad = agency_data(
        "backup", "verify", "--json", dsn=database, redis_url=redis_url, tmp_path=tmp_path, **env
    )
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert any("PG_VERSION" in problem for problem in report["problems"])
    assert database.superuser not in bad.stdout + bad.stderr
