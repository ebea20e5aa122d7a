"""What the embedded servers refuse to touch, and what survives a half-done migration."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agency_data import DataLayer, EmbeddedServerError, MigrationError
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.files import write_private
from agency_data.migrations import BUILTIN_SOURCE, MigrationRunner, MigrationSource
from agency_data.security.roles import RoleNames, setup_roles
from tests.conftest import FAST_POSTGRES, ROLES, DatabaseDsn


def test_write_private_replaces_a_planted_link_and_never_follows_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    victim.chmod(0o644)
    target = tmp_path / "config"
    target.symlink_to(victim)
    write_private(target, "ours")
    assert victim.read_text() == "keep me"
    assert oct(victim.stat().st_mode & 0o777) == "0o644"
    assert not target.is_symlink()
    assert target.read_text() == "ours"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_folder_of_someone_elses_is_not_taken_as_the_data_directory(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("a user's file")
    data_dir.chmod(0o755)
    with pytest.raises(EmbeddedServerError, match="not empty and holds no agency-data"):
        EmbeddedValkey(data_dir)
    assert oct(data_dir.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in data_dir.iterdir()) == ["notes.txt"]


def test_links_in_the_data_directory_are_refused_not_followed(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    elsewhere.chmod(0o755)
    data_dir.mkdir()
    (data_dir / ".agency-data").touch()
    (data_dir / "run").symlink_to(elsewhere)
    with pytest.raises(EmbeddedServerError, match="symbolic link"):
        EmbeddedValkey(data_dir)
    assert oct(elsewhere.stat().st_mode & 0o777) == "0o755"
    assert elsewhere.stat().st_uid == os.geteuid()


def test_a_valkey_that_refuses_our_password_is_not_started_twice(data_dir: Path) -> None:
    valkey = EmbeddedValkey(data_dir)
    url = valkey.acquire()
    try:
        password_file = data_dir / "valkey" / "password"
        saved = password_file.read_text()
        password_file.write_text("not-the-password\n")
        with pytest.raises(EmbeddedServerError, match="refused the password"):
            EmbeddedValkey(data_dir).acquire()
        password_file.write_text(saved)
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    finally:
        valkey.release()


async def test_a_failed_migration_leaves_the_application_role_without_write_rights(
    empty_database: DatabaseDsn, tmp_path: Path
) -> None:
    broken = tmp_path / "app"
    broken.mkdir()
    (broken / "0001_broken.up.sql").write_text("-- depends: agency_data:0006\nSELECT 1/0;")
    # As deployed: default privileges give the application role DML on the owner's new tables.
    async with await psycopg.AsyncConnection.connect(
        empty_database.superuser, autocommit=True
    ) as su:
        await setup_roles(su, ROLES)
    runner = MigrationRunner(
        empty_database.owner, [BUILTIN_SOURCE, MigrationSource("app", broken)], role=ROLES
    )
    with pytest.raises(MigrationError):
        await runner.up()
    with psycopg.connect(empty_database) as conn:
        for table in ("embedding_collections", "agency_data_migrations"):
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT') OR has_table_privilege(%s, 'DELETE')",
                [table, table],
            ).fetchone()
            assert row == (False,), table


def test_a_postgres_data_folder_that_is_a_link_is_refused(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("pg-elsewhere")
    data_dir.mkdir()
    (data_dir / ".agency-data").touch()
    (data_dir / "postgres").symlink_to(elsewhere)
    server = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
    with pytest.raises(EmbeddedServerError):
        server.acquire()
    assert elsewhere.stat().st_uid == os.geteuid()


async def test_roles_set_up_by_a_createrole_database_owner(empty_database: DatabaseDsn) -> None:
    # The managed-server path: not a superuser, but CREATEROLE and the database's owner.
    names = RoleNames(owner="cr_owner", app="cr_app", readonly="cr_readonly")
    with psycopg.connect(empty_database.superuser, autocommit=True) as su:
        su.execute("DROP ROLE IF EXISTS cr_dba")
        su.execute("CREATE ROLE cr_dba LOGIN CREATEROLE")
        dbname = su.execute("SELECT current_database()").fetchone()
        assert dbname is not None
        su.execute(sql.SQL("ALTER DATABASE {} OWNER TO cr_dba").format(sql.Identifier(dbname[0])))
        su.execute("ALTER SCHEMA public OWNER TO cr_dba")
    params = conninfo_to_dict(empty_database.superuser)
    dba = make_conninfo("", **{**params, "user": "cr_dba"})
    try:
        async with await psycopg.AsyncConnection.connect(dba, autocommit=True) as conn:
            done = await setup_roles(conn, names)
        assert "created role cr_owner" in done
        with psycopg.connect(dba) as conn:
            row = conn.execute(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'cr_app'"
            ).fetchone()
        assert row == (False, False)
        with psycopg.connect(dba) as conn:
            defaults = conn.execute(
                "SELECT count(*) FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole "
                "WHERE r.rolname = 'cr_owner'"
            ).fetchone()
        assert defaults is not None
        assert defaults[0] >= 2  # tables and sequences, as the owner
    finally:
        with psycopg.connect(empty_database.superuser, autocommit=True) as su:
            dbname = su.execute("SELECT current_database()").fetchone()
            assert dbname is not None
            su.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname[0]), sql.Identifier(ROLES.owner)
                )
            )
            su.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
            for role in ("cr_owner", "cr_app", "cr_readonly", "cr_dba"):
                su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_a_data_directory_with_spaces_works(data_dir: Path) -> None:
    spaced = data_dir.parent / "Application Support" / "agency data"
    async with DataLayer(
        embedded={"data_dir": spaced, "postgres_settings": FAST_POSTGRES},
        migration={"backup_before_migration": False},
    ) as dl:
        await dl.agents.create(name="spaced", type="t")
        assert await dl.agents.count() == 1
        assert await dl.cache.set("k", 1) is None
        assert await dl.cache.get("k") == 1
