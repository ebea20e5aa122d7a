"""The `agency-data audit` command at its edges: a role that cannot see every chain, times in
UTC, a chain cut at its end."""

from __future__ import annotations

import subprocess
from datetime import UTC
from pathlib import Path

import psycopg

from agency_data import DataLayer
from tests.conftest import DatabaseDsn, make_config
from tests.test_cli import agency_data


async def three_records(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> DataLayer:
    config = make_config(database, redis_url, tmp_path, audit={"tables": ["agents"]})
    async with DataLayer(config) as dl:
        for i in range(3):
            await dl.tenant("acme").agents.create(f"a{i}", "w")
    return dl


async def test_verify_every_chain_does_not_pass_when_it_sees_none(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    await three_records(database, redis_url, tmp_path)
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE tenant_id = 'acme' AND seq = 2")
    app_only = str(database)  # a plain str: no AGENCY_DATA_POSTGRESQL__ADMIN_DSN
    done = agency_data("audit", "verify", dsn=app_only, redis_url=redis_url, tmp_path=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode != 0, done.stdout


async def test_show_prints_times_in_utc(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    dl = await three_records(database, redis_url, tmp_path)
    async with DataLayer(dl.config) as again:
        newest = (await again.tenant("acme").audit.show(limit=1))[0]
    done: subprocess.CompletedProcess[str] = agency_data(
        "audit", "show", "--tenant", "acme", "--limit", "1",
        dsn=database, redis_url=redis_url, tmp_path=tmp_path, PGTZ="Asia/Tokyo",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "at (UTC)" in done.stdout
    assert newest.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") in done.stdout, done.stdout


async def test_verify_every_chain_fails_on_a_chain_cut_at_its_end(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    await three_records(database, redis_url, tmp_path)
    with psycopg.connect(database.superuser, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_log WHERE tenant_id = 'acme' AND seq = 3")
    done = agency_data("audit", "verify", dsn=database, redis_url=redis_url, tmp_path=tmp_path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stdout
