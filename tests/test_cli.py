"""The ``agency-data`` command, run as a user would: a real process against the test servers."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from agency_data import DataLayer, __version__
from agency_data.cli import _common, main
from agency_data.health import versions_text
from agency_data.migrations import BUILTIN_SOURCE, MigrationState
from agency_data.migrations._loader import load_migrations
from agency_data.models import HealthStatus
from tests.conftest import DatabaseDsn, make_config

CLI = [sys.executable, "-m", "agency_data"]
BUILTIN_COUNT = len(load_migrations([BUILTIN_SOURCE]))


def cli_env(dsn: str | None, redis_url: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "COLUMNS": "200",
        "AGENCY_DATA_MIGRATION__BACKUP_DIR": str(tmp_path / "backups"),
        **extra,
    }
    if dsn is not None:
        env["AGENCY_DATA_POSTGRESQL__DSN"] = dsn
        if isinstance(dsn, DatabaseDsn):
            env["AGENCY_DATA_POSTGRESQL__ADMIN_DSN"] = dsn.owner
    if redis_url is not None:
        env["AGENCY_DATA_REDIS__URL"] = redis_url
    return env


def agency_data(
    *args: str,
    dsn: str | None = None,
    redis_url: str | None = None,
    tmp_path: Path,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """Run the command with stdin and stdout not terminals, as in a script or a pipe."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=cli_env(dsn, redis_url, tmp_path, **extra_env),
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def history(dsn: DatabaseDsn) -> int:
    with psycopg.connect(dsn.owner) as conn:
        exists = conn.execute("SELECT to_regclass('agency_data_migrations')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute("SELECT count(*) FROM agency_data_migrations").fetchone()
    assert row is not None
    return int(row[0])


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

    down = agency_data("migrate", "down", "--to", "0", "--yes", **opts)
    assert down.returncode == 0, down.stderr
    assert "ran 2 migration(s)" in down.stdout
    assert "dropped table agents (0 rows)" in down.stdout
    assert history(empty_database) == 0


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
    assert "error: no migration is named '9999'" in result.stderr
    assert "error" not in result.stdout
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
    # A worker process killed while holding a task; another finishes it after the lease.
    crash = re.search(r"worker crash .*worker-a \(process (\d+)\) claimed .*SIGKILL", result.stdout)
    assert crash is not None, result.stdout
    assert re.search(
        r"lease rescue .*worker-b's claim found the lease run out .*attempt 1 lost its lease"
        r".*completed by worker-b, attempts=2",
        result.stdout,
    ), result.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(int(crash.group(1)), 0)  # really gone, not left running
    # health and the demo write the servers' versions the same way.
    health = agency_data("health", dsn=database, redis_url=redis_url, tmp_path=tmp_path)

    async def probe() -> HealthStatus:
        async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
            return await dl.health()

    for part in asyncio.run(probe()).components.values():
        assert versions_text(part) in health.stdout
        assert versions_text(part) in result.stdout


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
    assert "error:" in result.stderr
    assert "superuser" in result.stderr
    assert "Traceback" not in result.stderr


def on_a_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str, str]:
    """Run the command with stdin a terminal (a pty) that types ``answer``; stdout is piped."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, *args],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        os.close(follower)
        os.write(leader, f"{answer}\n".encode())
        out, err = process.communicate(timeout=120)
    finally:
        os.close(leader)
    return process.returncode, out, err


def test_version() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"agency-data {__version__}"


def test_rollback_without_a_terminal_is_refused(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    result = agency_data(
        "migrate", "down", "--steps", "1", dsn=database, redis_url=redis_url, tmp_path=tmp_path
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "down agency_data:0020_api_keys" in result.stderr  # the plan, shown
    assert "error: not rolling back without a confirmation" in result.stderr
    assert "--yes" in result.stderr
    assert history(database) == BUILTIN_COUNT
    assert not (tmp_path / "backups").exists()


def test_rollback_on_a_terminal_asks_then_backs_up_first(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    env = cli_env(database, redis_url, tmp_path)
    args = ["migrate", "down", "--steps", "1"]
    code, out, err = on_a_terminal(args, env, "n")
    assert code == 1, out + err
    assert "Roll back these migrations? [y/N]" in err
    assert "Nothing was rolled back." in err
    assert history(database) == BUILTIN_COUNT
    assert not (tmp_path / "backups").exists()

    code, out, err = on_a_terminal(args, env, "y")
    assert code == 0, out + err
    assert history(database) == BUILTIN_COUNT - 1
    (backup,) = (tmp_path / "backups").glob("*.dump")
    assert f"backup written to {backup}" in out
    assert "ran 1 migration(s)" in out


def test_rollback_plan_names_the_tables_it_drops_and_their_rows(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async def fill() -> str:
        async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
            notes = await dl.embeddings.create_collection("notes", dimension=3)
            await notes.store_many(
                {"entity_type": "note", "entity_id": str(i), "vector": [1.0, i, 0.0]}
                for i in range(3)
            )
            rows = await dl.admin.fetch(
                "SELECT table_name FROM embedding_collections WHERE name = 'notes'"
            )
        return str(rows[0]["table_name"])

    table = asyncio.run(fill())
    opts = {"dsn": database, "redis_url": redis_url, "tmp_path": tmp_path}
    plan = agency_data("migrate", "down", "--to", "0005", "--dry-run", **opts)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "-- down agency_data:0006_embedding_collections" in plan.stdout
    assert f"--   drops table {table} (3 rows)" in plan.stdout
    assert "--   drops table embedding_collections (1 row)" in plan.stdout
    assert history(database) == BUILTIN_COUNT


def test_saved_dry_run_plan_is_valid_sql(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # A narrow terminal width must not matter when the output goes to a file.
    result = agency_data(
        "migrate",
        "up",
        "--dry-run",
        dsn=empty_database,
        redis_url=redis_url,
        tmp_path=tmp_path,
        COLUMNS="40",
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert max(len(line) for line in plan.splitlines()) > 40
    with psycopg.connect(empty_database.owner) as conn:
        conn.execute(plan)  # type: ignore[call-overload]  # the plan is trusted text here
        made = conn.execute("SELECT to_regclass('agents') IS NOT NULL").fetchone()
        conn.rollback()
    assert made == (True,)
    assert history(empty_database) == 0


def test_health_changes_nothing(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    result = agency_data(
        "health",
        dsn=empty_database,
        redis_url=redis_url,
        tmp_path=tmp_path,
        AGENCY_DATA_POSTGRES__PASSWORD="hunter2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{BUILTIN_COUNT} migration(s) not applied" in result.stdout
    assert history(empty_database) == 0  # nothing was migrated
    assert not (tmp_path / "backups").exists()  # nor backed up
    # A misspelt section is named on stderr, its value never shown.
    assert "warning: the environment variable AGENCY_DATA_POSTGRES__PASSWORD" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_health_with_postgres_down_prints_each_component(redis_url: str, tmp_path: Path) -> None:
    result = agency_data(
        "health",
        dsn=f"postgresql://agency_app@/postgres?host={tmp_path}/nowhere",
        redis_url=redis_url,
        tmp_path=tmp_path,
        AGENCY_DATA_POSTGRESQL__POOL_TIMEOUT="0.5",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    assert rows["postgresql"][1] == "no"
    assert "could not connect to PostgreSQL" in result.stdout
    assert rows["redis"][1] == "yes"
    assert "status: down" in result.stdout
    assert "migrate" not in result.stdout + result.stderr


def test_migrate_status_never_cuts_names(
    empty_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    result = agency_data(
        "migrate",
        "status",
        dsn=empty_database,
        redis_url=redis_url,
        tmp_path=tmp_path,
        COLUMNS="30",
    )
    assert result.returncode == 0, result.stderr
    for migration in load_migrations([BUILTIN_SOURCE]):
        assert re.search(rf"^{re.escape(migration.key)} +pending$", result.stdout, re.MULTILINE)


def test_status_table_on_a_narrow_terminal_folds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    narrow = Console(file=out, width=30, force_terminal=True, color_system=None)
    monkeypatch.setattr(_common, "console", narrow)
    monkeypatch.setattr(_common, "plain", lambda: False)
    keys = [m.key for m in load_migrations([BUILTIN_SOURCE])]
    main._print_status([MigrationState(key, "pending") for key in keys])
    text = out.getvalue()
    assert "…" not in text
    first_column = "".join(
        line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 2
    )
    for key in keys:
        assert key in first_column
