"""Passwords never shown: every DSN form, through the CLI's output, logs at DEBUG, and errors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agency_data import AgencyDataError, DataLayer
from tests.conftest import DatabaseDsn, make_config

CLI = [sys.executable, "-m", "agency_data"]
SECRET = "Sup3r-s3cret-Pw"


def dsn_forms(database: DatabaseDsn) -> dict[str, tuple[str, dict[str, str]]]:
    """The application role's DSN of ``database`` written every way, each with the password.

    The embedded test server authenticates over its socket by peer, so the password is sent
    nowhere and the connection works: what is tested is only whether it gets shown.
    """
    params = conninfo_to_dict(database)
    user, dbname, host = params["user"], params["dbname"], quote(str(params["host"]), safe="")
    return {
        "url": (f"postgresql://{user}:{SECRET}@/{dbname}?host={host}", {}),
        "query": (f"postgres://{user}@/{dbname}?host={host}&password={SECRET}", {}),
        "keywords": (make_conninfo(database, password=SECRET), {}),
        "quoted": (make_conninfo(database) + f" password='{SECRET} x'", {}),
        "PGPASSWORD": (str(database), {"PGPASSWORD": SECRET}),
    }


def run(
    args: list[str], dsn: str, owner: str, redis_url: str, tmp_path: Path, extra: dict[str, str]
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **extra,
        "COLUMNS": "200",
        "AGENCY_DATA_POSTGRESQL__DSN": dsn,
        "AGENCY_DATA_POSTGRESQL__ADMIN_DSN": owner,
        "AGENCY_DATA_REDIS__URL": redis_url,
        "AGENCY_DATA_MIGRATION__BACKUP_DIR": str(tmp_path / "backups"),
    }
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("form", ["url", "query", "keywords", "quoted", "PGPASSWORD"])
def test_up_and_health_never_print_a_password(
    form: str, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    dsn, extra = dsn_forms(database)[form]
    redis_password = conninfo_password(redis_url)
    health = run(["health", "--json"], dsn, database.owner, redis_url, tmp_path, extra)
    out, err = health.communicate(timeout=60)
    assert health.returncode == 0, out + err
    assert '"status": "ok"' in out
    up = run(["up"], dsn, database.owner, redis_url, tmp_path, extra)
    assert up.stdout is not None
    lines = [up.stdout.readline() for _ in range(3)]
    up.send_signal(signal.SIGINT)
    rest, err_up = up.communicate(timeout=60)
    printed = out + err + "".join(lines) + rest + err_up
    assert lines[0].strip() == "ready", printed
    assert SECRET not in printed
    assert redis_password not in printed
    assert "***" in lines[2]  # the Redis URL's password, hidden


def conninfo_password(redis_url: str) -> str:
    # The embedded test Valkey's URL carries its generated password: unix://:<password>@/path
    password = redis_url.split("://", 1)[1].split("@", 1)[0].lstrip(":")
    assert len(password) > 16, "the test Valkey should require a password"
    return password


@pytest.mark.parametrize("form", ["url", "query", "keywords", "quoted"])
async def test_logs_at_debug_and_errors_never_show_a_password(
    form: str,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn, _ = dsn_forms(database)[form]
    caplog.set_level(logging.DEBUG)
    config = make_config(dsn, redis_url, tmp_path, postgresql={"admin_dsn": database.owner})
    async with DataLayer(config) as dl:
        await dl.health()
        await dl.agents.create(name="logged", type="t")
        with pytest.raises(AgencyDataError) as info:
            await dl.execute("SELECT * FROM no_such_table")
        assert SECRET not in str(info.value)
    # A server that refuses: the error names where, never the password.
    params = conninfo_to_dict(dsn)
    params.update(dbname="no_such_database")
    wrong = make_conninfo("", **params)
    broken = make_config(wrong, redis_url, tmp_path, postgresql={"pool_timeout": 0.5})
    with pytest.raises(AgencyDataError) as refused:
        await DataLayer(broken).connect()
    for text in (str(refused.value), repr(refused.value), caplog.text):
        assert SECRET not in text
        assert conninfo_password(redis_url) not in text
