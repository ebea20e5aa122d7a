"""The ``agency-data`` command, run as a user would: a real process against the test servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from agency_data.migrations import BUILTIN_SOURCE
from agency_data.migrations._loader import load_migrations
from tests.conftest import DatabaseDsn

CLI = [sys.executable, "-m", "agency_data"]
BUILTIN_COUNT = len(load_migrations([BUILTIN_SOURCE]))


def agency_data(
    *args: str,
    dsn: str | None = None,
    redis_url: str | None = None,
    tmp_path: Path,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COLUMNS": "200",
        "AGENCY_DATA_MIGRATION__BACKUP_DIR": str(tmp_path / "backups"),
    }
    if dsn is not None:
        env["AGENCY_DATA_POSTGRESQL__DSN"] = dsn
        if isinstance(dsn, DatabaseDsn):
            env["AGENCY_DATA_POSTGRESQL__ADMIN_DSN"] = dsn.owner
    if redis_url is not None:
        env["AGENCY_DATA_REDIS__URL"] = redis_url
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_migrate_status_dry_run_up_down(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    opts = {"dsn": empty_database, "redis_url": redis_url, "tmp_path": tmp_path}
    status = agency_data("migrate", "status", **opts)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("pending") == BUILTIN_COUNT

    dry = agency_data("migrate", "up", "--dry-run", **opts)
    assert dry.returncode == 0, dry.stderr
    assert "CREATE TABLE agents" in dry.stdout
    assert f"would run {BUILTIN_COUNT} migration(s)" in dry.stdout
    assert "pending" in agency_data("migrate", "status", **opts).stdout

    up = agency_data("migrate", "up", "--to", "0002", **opts)
    assert up.returncode == 0, up.stderr
    assert "ran 2 migration(s)" in up.stdout
    assert "backup written to" in up.stdout

    down = agency_data("migrate", "down", "--to", "0", **opts)
    assert down.returncode == 0, down.stderr
    assert "ran 2 migration(s)" in down.stdout
    with psycopg.connect(empty_database.owner) as conn:
        left = conn.execute("SELECT count(*) FROM agency_data_migrations").fetchone()
    assert left == (0,)


def test_migrate_reports_errors_without_a_traceback(
    empty_database: str, redis_url: str, tmp_path: Path
) -> None:
    result = agency_data(
        "migrate",
        "down",
        "--to",
        "9999",
        dsn=empty_database,
        redis_url=redis_url,
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert "no migration is named '9999'" in result.stdout
    assert "Traceback" not in result.stderr


def test_health_exit_codes(database: str, redis_url: str, tmp_path: Path) -> None:
    ok = agency_data("health", dsn=database, redis_url=redis_url, tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "status: ok" in ok.stdout
    degraded = agency_data(
        "health",
        "--json",
        dsn=database,
        redis_url=f"unix://{tmp_path}/none.sock",
        tmp_path=tmp_path,
    )
    assert degraded.returncode == 1, degraded.stderr
    assert '"status": "degraded"' in degraded.stdout


def test_config_file_option(database: str, redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "agency-data.toml"
    config.write_text(f'[postgresql]\ndsn = "{database}"\n[redis]\nurl = "{redis_url}"\n')
    result = agency_data("health", "--config", str(config), tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_on_configured_servers(database: str, redis_url: str, tmp_path: Path) -> None:
    result = agency_data("demo", dsn=database, redis_url=redis_url, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("connect", "health", "migrations", "migration dry run", "close", "demo finished"):
        assert step in result.stdout


def test_up_serves_until_interrupted(tmp_path: Path, data_dir: Path) -> None:
    env = {
        **os.environ,
        "AGENCY_DATA_EMBEDDED__POSTGRES_SETTINGS": '{"fsync": "off"}',
        "AGENCY_DATA_MIGRATION__BACKUP_BEFORE_MIGRATION": "false",
    }
    process = subprocess.Popen(
        [*CLI, "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(3)]
    assert lines[0].strip() == "ready", lines
    dsn = lines[1].split(":", 1)[1].strip()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    assert "stopping" in out
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_roles_setup_is_idempotent_and_prints_no_secret(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "COLUMNS": "200",
        "AGENCY_DATA_POSTGRESQL__DSN": empty_database,
        # The DBA's connection: a superuser, as on a managed server's admin account.
        "AGENCY_DATA_POSTGRESQL__ADMIN_DSN": empty_database.superuser,
        "AGENCY_DATA_REDIS__URL": redis_url,
        "AGENCY_DATA_READONLY_PASSWORD": "ro-Secret-123",
    }
    runs = [
        subprocess.run(
            [*CLI, "roles", "setup"], capture_output=True, text=True, env=env, check=False
        )
        for _ in range(2)
    ]
    for result in runs:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "roles in place: owner agency_owner, application agency_app" in result.stdout
        assert "ro-Secret-123" not in result.stdout + result.stderr
    assert "set the password of agency_readonly" in runs[0].stdout
    assert "created role" not in runs[1].stdout  # the roles exist: nothing is made twice
    with psycopg.connect(empty_database.superuser) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert owner == ("agency_owner",)


def test_roles_setup_without_the_rights_is_a_clear_error(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # The application role may not create roles nor touch the database's privileges.
    env = {
        **os.environ,
        "AGENCY_DATA_POSTGRESQL__DSN": empty_database,
        "AGENCY_DATA_REDIS__URL": redis_url,
    }
    result = subprocess.run(
        [*CLI, "roles", "setup"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stdout
    assert "superuser" in result.stdout
    assert "Traceback" not in result.stderr
