"""Review of issue 14 (Valkey snapshots in backup sets): bugs shown on real servers.

Marked xfail(strict=True): each passes while the bug is there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agency_data import DataLayer
from agency_data.embedded import EmbeddedValkey
from agency_data.errors import BackupError
from tests.conftest import DatabaseDsn, make_config

pytestmark = pytest.mark.timeout(300)


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


@pytest.mark.xfail(
    strict=True,
    reason="restore_set checks only <data_dir>/postgres up front; Valkey data already in "
    "<data_dir>/valkey is found by install_snapshot after pg_combinebackup has written the "
    "cluster, so the refused restore leaves a half-made data directory behind",
)
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
    with pytest.raises(BackupError):
        await layer.backups.restore("latest", data_dir)
    assert not (data_dir / "postgres").exists(), "the refused restore wrote a cluster"
