"""Residency at its edges: a region refusing a non-resident's subject work, raw SQL at home
unable to write a pinned tenant, a region that cannot connect failing connect cleanly."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, ValidationError
from tests.conftest import DatabaseDsn, make_config
from tests.test_residency import eu_database, eu_redis  # noqa: F401  (fixture)


def residency_config(
    database: DatabaseDsn, eu: DatabaseDsn, redis_url: str, tmp_path: Path, **more: Any
) -> Any:
    return make_config(
        database,
        redis_url,
        tmp_path,
        residency={
            "regions": {
                "eu": {
                    "postgresql": {"dsn": str(eu), "admin_dsn": eu.owner},
                    "redis": {"url": eu_redis(redis_url)},
                }
            },
            "tenants": {"acme": "eu"},
        },
        subjects={"tasks": ["user"]},
        **more,
    )


async def test_a_region_refuses_subject_work_for_a_non_resident(
    database: DatabaseDsn,
    eu_database: DatabaseDsn,  # noqa: F811
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Checked: a region refuses a non-resident's erase_tenant before its data keys go (late:
    at the cache step, through tenant(); the region's own rows of it are none)."""
    config = residency_config(
        database,
        eu_database,
        redis_url,
        tmp_path,
        encryption={
            "fields": ["tasks.data"],
            "kek": base64.b64encode(os.urandom(32)).decode(),
            "key_store": tmp_path / "keys",
        },
    )
    async with DataLayer(config) as dl:
        task = await dl.tenant("globex").tasks.create("mail", {"user": "ann"})
        try:
            await dl.region("eu").subjects.erase_tenant("globex")
            refused = False
        except ValidationError:
            refused = True
        try:
            readable = (await dl.tenant("globex").tasks.get(task.id)).data == {"user": "ann"}
        except AgencyDataError:
            readable = False
        assert (refused, readable) == (True, True)


async def test_raw_sql_at_home_cannot_write_a_pinned_tenant(
    database: DatabaseDsn,
    eu_database: DatabaseDsn,  # noqa: F811
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Checked: row-level security keeps raw SQL on the default tenant from writing acme."""
    config = residency_config(database, eu_database, redis_url, tmp_path)
    async with DataLayer(config) as dl:
        with pytest.raises(AgencyDataError):
            await dl.execute("INSERT INTO agents (tenant_id, name, type) VALUES ('acme', 'x', 'y')")
        with pytest.raises(ValidationError):
            await dl.subjects.erase_tenant("acme")


async def test_a_region_that_cannot_connect_fails_connect_and_leaves_nothing_running(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    """Checked: an unreachable region fails connect() with our error, and nothing keeps running."""
    import asyncio

    config = make_config(
        database,
        redis_url,
        tmp_path,
        residency={
            "regions": {
                "eu": {
                    "postgresql": {
                        "dsn": "postgresql://nobody@127.0.0.1:1/none",
                        "pool_timeout": 1,
                    },
                    "redis": {"url": redis_url},
                }
            },
            "tenants": {"acme": "eu"},
        },
        retention={"interval": 1, "policies": [{"target": "tasks", "older_than": 3600}]},
    )
    before = set(asyncio.all_tasks())
    dl = DataLayer(config)
    with pytest.raises(AgencyDataError):
        await dl.connect()
    await asyncio.sleep(0.1)
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []
    assert dl._regions == {}
    assert dl._pool is None
