"""The migration service against a real PostgreSQL: apply, re-apply, roll back, refuse, lock, back up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from agency_data import BackupError, DataLayer, MigrationChecksumMismatch, MigrationError
from agency_data.embedded import postgres_bin_dir
from agency_data.migrations import (
    BUILTIN_SOURCE,
    DataLoss,
    MigrationRunner,
    MigrationSource,
    find_tool,
    restore_backup,
)
from agency_data.migrations._loader import load_migrations
from tests.conftest import DatabaseDsn, ServerSet, make_config

CORE_TABLES = {"agents", "tasks", "embedding_collections"}


@pytest.fixture
def empty_database(empty_database: DatabaseDsn) -> str:
    """Migrating is the owner role's work: these tests connect as it."""
    return empty_database.owner


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def write(directory: Path, files: dict[str, str]) -> MigrationSource:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return MigrationSource("app", directory)


@asynccontextmanager
async def restored(servers: ServerSet, backup: Path) -> AsyncIterator[str]:
    """The DSN of a new database holding ``backup`` restored with pg_restore."""
    target = servers.create_database()
    try:
        await restore_backup(backup, servers.dsn(target), await find_tool("pg_restore", 18))
        yield servers.dsn(target)
    finally:
        servers.drop_database(target)


def runner(dsn: str, *sources: MigrationSource, **options: object) -> MigrationRunner:
    return MigrationRunner(dsn, [BUILTIN_SOURCE, *sources], **options)  # type: ignore[arg-type]


async def test_apply_reapply_rollback_and_forward(empty_database: str) -> None:
    run = runner(empty_database)
    first = await run.up()
    assert first.applied == [m.key for m in load_migrations([BUILTIN_SOURCE])]
    assert first.applied[:4] == [
        "agency_data:0001_foundation",
        "agency_data:0002_agents",
        "agency_data:0003_tasks",
        "agency_data:0004_embeddings",
    ]
    assert tables(empty_database) >= CORE_TABLES

    again = await run.up()
    assert again.applied == []
    assert again.steps == []

    back = await run.down(to="0")
    assert back.applied == list(reversed(first.applied))
    assert tables(empty_database) == {"agency_data_migrations"}
    assert {s.state for s in await run.status()} == {"pending"}

    forward = await run.up()
    assert forward.applied == first.applied
    assert tables(empty_database) >= CORE_TABLES


async def test_down_by_steps_and_to_version(empty_database: str) -> None:
    run = runner(empty_database)
    await run.up()
    await run.down(to="0004")
    one = await run.down()
    assert one.applied == ["agency_data:0004_embeddings"]
    two = await run.down(to="0002")
    assert two.applied == ["agency_data:0003_tasks"]
    assert "agents" in tables(empty_database)
    assert "tasks" not in tables(empty_database)
    with pytest.raises(MigrationError, match="not applied"):
        await run.down(to="0003")
    with pytest.raises(MigrationError, match="at least 1"):
        await run.down(steps=0)


async def test_up_to_a_version_applies_only_it_and_its_dependencies(
    empty_database: str, tmp_path: Path
) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_notes.up.sql": "-- depends: agency_data:0002\nCREATE TABLE notes (agent uuid REFERENCES agents(id));",
            "0001_notes.down.sql": "DROP TABLE notes;",
        },
    )
    run = runner(empty_database, app)
    report = await run.up(to="app:0001")
    assert report.applied == [
        "agency_data:0001_foundation",
        "agency_data:0002_agents",
        "app:0001_notes",
    ]
    assert "tasks" not in tables(empty_database)


async def test_dependencies_order_across_sources(tmp_path: Path) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_first.up.sql": "-- depends: agency_data:0004_embeddings\nSELECT 1;",
            "0002_second.up.sql": "SELECT 2;",
        },
    )
    keys = [m.key for m in runner("", app).migrations()]
    assert keys.index("app:0001_first") > keys.index("agency_data:0004_embeddings")
    assert keys.index("app:0002_second") > keys.index("app:0001_first")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"0001_a.up.sql": "-- depends: app:0002\nSELECT 1;", "0002_b.up.sql": "SELECT 1;"},
            "cycle",
        ),
        ({"0001_a.up.sql": "-- depends: app:0009\nSELECT 1;"}, "no migration is named"),
        ({"1_Bad Name.up.sql": "SELECT 1;"}, "is not named like"),
        ({"0001_a.up.sql": "SELECT 1;", "0001_b.up.sql": "SELECT 1;"}, "appears twice"),
        ({"0001_a.down.sql": "SELECT 1;"}, "without an up step"),
        ({"0001_a.up.sql": "-- transaction: maybe\nSELECT 1;"}, "takes true or false"),
    ],
)
def test_bad_migration_sets_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    app = write(tmp_path / "app", files)
    with pytest.raises(MigrationError, match=message):
        runner("", app).migrations()


def test_namespace_must_be_safe(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="namespace"):
        MigrationSource("App; DROP", tmp_path)


async def test_changed_applied_migration_is_refused(empty_database: str, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"0001_notes.up.sql": "CREATE TABLE notes (id int);"})
    run = runner(empty_database, app)
    await run.up()
    (tmp_path / "app" / "0001_notes.up.sql").write_text("CREATE TABLE notes (id bigint);")
    states = {s.key: s.state for s in await run.status()}
    assert states["app:0001_notes"] == "changed"
    with pytest.raises(MigrationChecksumMismatch, match="app:0001_notes"):
        await run.up()
    # Whitespace at the ends and line endings do not count as a change.
    (tmp_path / "app" / "0001_notes.up.sql").write_text("\r\nCREATE TABLE notes (id int);\r\n\n")
    assert (await run.up()).applied == []


async def test_an_edit_that_names_the_old_checksum_is_accepted(
    empty_database: str, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"0001_notes.up.sql": "CREATE TABLE notes (id int);"})
    run = runner(empty_database, app)
    await run.up()
    old = next(m for m in load_migrations([app]) if m.key == "app:0001_notes").checksum
    (tmp_path / "app" / "0001_notes.up.sql").write_text(
        f"-- replaces: {old}\nCREATE TABLE notes (id int);\nCREATE INDEX ON notes (id);"
    )
    states = {s.key: s.state for s in await run.status()}
    assert states["app:0001_notes"] == "applied"
    assert (await run.up()).applied == []
    (tmp_path / "app" / "0001_notes.up.sql").write_text(
        f"-- replaces: {'0' * 64}\nCREATE TABLE notes (id bigint);"
    )
    with pytest.raises(MigrationChecksumMismatch, match="app:0001_notes"):
        await run.up()


def test_replaces_takes_checksums_only(tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"0001_x.up.sql": "-- replaces: 0004\nSELECT 1;"})
    with pytest.raises(MigrationError, match=r"replaces.*SHA-256"):
        load_migrations([app])


async def test_databases_that_ran_0004_before_its_row_security_still_migrate(
    empty_database: str,
) -> None:
    run = runner(empty_database)
    await run.up()
    before = "5e180c567bd2b0dd0d8e5fcb2aa142c79b943867d979604c434f71053ee9343c"
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(
            "UPDATE agency_data_migrations SET checksum = %s WHERE id = %s",
            [before, "agency_data:0004_embeddings"],
        )
    assert {s.state for s in await run.status()} == {"applied"}
    assert (await run.up()).applied == []
    # Rolled back to where the table exists again, it is a tenant table like any other.
    await run.down(to="0005")
    with psycopg.connect(empty_database) as conn:
        row = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity, "
            "(SELECT count(*) FROM pg_policies WHERE tablename = 'embeddings') "
            "FROM pg_class WHERE oid = 'embeddings'::regclass"
        ).fetchone()
    assert row == (True, True, 1)


async def test_missing_file_is_reported(empty_database: str, tmp_path: Path) -> None:
    app = write(tmp_path / "app", {"0001_notes.up.sql": "CREATE TABLE notes (id int);"})
    await runner(empty_database, app).up()
    states = {s.key: s.state for s in await runner(empty_database).status()}
    assert states["app:0001_notes"] == "missing"
    with pytest.raises(MigrationError, match="no file for it"):
        await runner(empty_database).down(steps=1)


async def test_failed_migration_leaves_no_trace(empty_database: str, tmp_path: Path) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_ok.up.sql": "CREATE TABLE kept (id int);",
            "0002_broken.up.sql": (
                "CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\n"
                "ALTER TABLE agents ADD COLUMN extra int;\nSELECT 1 / 0;"
            ),
        },
    )
    run = runner(empty_database, app)
    with pytest.raises(MigrationError, match=r"app:0002_broken.*division by zero.*rolled back"):
        await run.up()
    present = tables(empty_database)
    assert "kept" in present
    assert "half" not in present
    with psycopg.connect(empty_database) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'agents'"
        ).fetchall()
    assert "extra" not in {c[0] for c in columns}
    states = {s.key: s.state for s in await run.status()}
    assert states["app:0001_ok"] == "applied"
    assert states["app:0002_broken"] == "pending"


async def test_dry_run_changes_nothing(empty_database: str) -> None:
    run = runner(empty_database)
    plan = await run.up(dry_run=True)
    assert [s.key for s in plan.steps] == [m.key for m in load_migrations([BUILTIN_SOURCE])]
    assert "CREATE TABLE agents" in plan.steps[1].sql
    assert plan.applied == []
    assert tables(empty_database) == set()  # not even the history table

    await run.up()
    rollback = await run.down(to="0", dry_run=True)
    assert rollback.steps[-1].key == "agency_data:0001_foundation"
    assert any("DROP TABLE IF EXISTS embedding_collections" in step.sql for step in rollback.steps)
    assert tables(empty_database) >= CORE_TABLES


async def test_concurrent_migrators_apply_each_migration_once(
    empty_database: str, tmp_path: Path
) -> None:
    # A slow first step makes sure both migrators are in flight at once.
    app = write(
        tmp_path / "app",
        {
            "0001_slow.up.sql": "SELECT pg_sleep(0.5);\nCREATE TABLE slow (id int);",
            "0002_after.up.sql": "CREATE TABLE after_slow (id int);",
        },
    )
    runs = [runner(empty_database, app) for _ in range(3)]
    reports = await asyncio.gather(*(r.up() for r in runs))
    applied = [key for report in reports for key in report.applied]
    assert sorted(applied) == sorted(m.key for m in runs[0].migrations())
    assert len(applied) == len(set(applied))
    with psycopg.connect(empty_database) as conn:
        count = conn.execute("SELECT count(*) FROM agency_data_migrations").fetchone()
    assert count is not None
    assert count[0] == len(applied)


async def test_migrator_gives_up_after_lock_timeout(empty_database: str) -> None:
    run = runner(empty_database, lock_timeout=0.2)
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [run._lock_key])
        with pytest.raises(MigrationError, match="another migrator"):
            await run.up()


async def test_non_transactional_migration(empty_database: str, tmp_path: Path) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_index.up.sql": (
                "-- transaction: false\n-- depends: agency_data:0003\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_error ON tasks (error);\n"
                "-- a comment between statements; with a semicolon\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_result ON tasks USING gin (result);\n"
            ),
            "0001_index.down.sql": (
                "-- transaction: false\nDROP INDEX CONCURRENTLY IF EXISTS tasks_error;\n"
                "DROP INDEX CONCURRENTLY IF EXISTS tasks_result;\n"
            ),
        },
    )
    run = runner(empty_database, app)
    await run.up()

    def indexes() -> set[str]:
        with psycopg.connect(empty_database) as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'"
            ).fetchall()
        return {r[0] for r in rows}

    assert {"tasks_error", "tasks_result"} <= indexes()
    await run.down(steps=1)
    assert not {"tasks_error", "tasks_result"} & indexes()


async def test_migration_without_down_step_cannot_roll_back(
    empty_database: str, tmp_path: Path
) -> None:
    app = write(tmp_path / "app", {"0001_oneway.up.sql": "CREATE TABLE oneway (id int);"})
    run = runner(empty_database, app)
    await run.up()
    with pytest.raises(MigrationError, match="no down step"):
        await run.down(steps=1)


async def test_backup_before_migrating_restores(
    empty_database: str, servers: ServerSet, tmp_path: Path
) -> None:
    await runner(empty_database).up()
    with psycopg.connect(empty_database) as conn:
        conn.execute("SELECT set_config('agency_data.tenant', 'default', true)")
        conn.execute("INSERT INTO agents (name, type) VALUES ('planner', 'coordinator')")
    app = write(tmp_path / "app", {"0001_more.up.sql": "CREATE TABLE more (id int);"})
    report = await runner(empty_database, app, backup_dir=tmp_path / "backups").up()
    assert report.backup_file is not None
    assert report.backup_file.stat().st_size > 0
    assert report.backup_file.parent == tmp_path / "backups"

    async with restored(servers, report.backup_file) as target:
        with psycopg.connect(target) as conn:
            agents = conn.execute("SELECT name, type FROM agents").fetchall()
            history = conn.execute("SELECT count(*) FROM agency_data_migrations").fetchone()
        assert agents == [("planner", "coordinator")]
        assert history == (len(load_migrations([BUILTIN_SOURCE])),)  # taken before app:0001_more
        assert "more" not in tables(target)


async def test_backup_failure_stops_the_migration(empty_database: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory should be")
    run = runner(empty_database, backup_dir=blocker)
    with pytest.raises(BackupError, match="cannot create the backup directory"):
        await run.up()
    assert tables(empty_database) == set()


async def test_find_tool_refuses_too_old_versions() -> None:
    assert (await find_tool("pg_dump", 18)).parent == postgres_bin_dir()
    with pytest.raises(MigrationError, match="version 99 or newer"):
        await find_tool("pg_dump", 99)


async def test_rollback_plan_says_what_it_destroys(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        notes = await dl.embeddings.create_collection("notes", dimension=3)
        await notes.store_many(
            {"entity_type": "note", "entity_id": str(i), "vector": [1.0, i, 0.0]} for i in range(3)
        )
        await dl.agents.create(name="planner", type="coordinator")
        await dl.tasks.create(type="plan")
    with psycopg.connect(database.owner) as conn:
        row = conn.execute(
            "SELECT table_name FROM embedding_collections WHERE name = 'notes'"
        ).fetchone()
        collections = conn.execute("SELECT count(*) FROM embedding_collections").fetchone()
    assert row is not None
    assert collections is not None
    before = tables(database.owner)

    plan = await runner(database.owner).down(to="0004", dry_run=True)
    by_step = {step.key: step for step in plan.steps}
    assert list(by_step) == [
        "agency_data:0020_api_keys",
        "agency_data:0019_knowledge_graph",
        "agency_data:0018_agent_memory",
        "agency_data:0017_store_events",
        "agency_data:0016_change_feed",
        "agency_data:0015_outbox",
        "agency_data:0014_kv_items",
        "agency_data:0013_langgraph_store",
        "agency_data:0012_langgraph_checkpoints",
        "agency_data:0011_string_ids",
        "agency_data:0010_audit",
        "agency_data:0009_task_queue",
        "agency_data:0008_no_metadata_gin",
        "agency_data:0007_row_level_security",
        "agency_data:0006_embedding_collections",
        "agency_data:0005_task_lifecycle",
    ]
    # The service's API keys, none made here.
    assert by_step["agency_data:0020_api_keys"].data_loss == (DataLoss("api_keys", rows=0),)
    # The knowledge graph's tables, empty here.
    assert set(by_step["agency_data:0019_knowledge_graph"].data_loss) == {
        DataLoss("memory_entities", rows=0),
        DataLoss("memory_entity_trigrams", rows=0),
        DataLoss("memory_relations", rows=0),
        DataLoss("memory_mentions", rows=0),
    }
    # Agent memory's tables, empty here.
    assert set(by_step["agency_data:0018_agent_memory"].data_loss) == {
        DataLoss("memories", rows=0),
        DataLoss("memory_history", rows=0),
        DataLoss("memory_links", rows=0),
    }
    # Triggers and functions only: nothing stored goes.
    assert by_step["agency_data:0017_store_events"].data_loss == ()
    # The change feed's tables: two bookkeeping rows (where the relays and the pruner are).
    assert set(by_step["agency_data:0016_change_feed"].data_loss) == {
        DataLoss("change_consumers", rows=0),
        DataLoss("change_feed", rows=1),
        DataLoss("changes", rows=0),
        DataLoss("outbox_relay", rows=1),
        DataLoss("commit_order", rows=0),
    }
    assert by_step["agency_data:0015_outbox"].data_loss == (DataLoss("outbox", rows=0),)
    assert by_step["agency_data:0014_kv_items"].data_loss == (DataLoss("kv_items", rows=0),)
    # The LangGraph store's table, empty here.
    assert by_step["agency_data:0013_langgraph_store"].data_loss == (
        DataLoss("langgraph_store", rows=0),
    )
    assert set(by_step["agency_data:0012_langgraph_checkpoints"].data_loss) == {
        DataLoss("langgraph_checkpoints", rows=0),
        DataLoss("langgraph_checkpoint_blobs", rows=0),
        DataLoss("langgraph_checkpoint_writes", rows=0),
    }
    # Ids back to UUIDs: a column changes type, nothing is dropped.
    assert by_step["agency_data:0011_string_ids"].data_loss == ()
    # The system trail's records: 0010 to 0020 applied, then the collection made.
    assert set(by_step["agency_data:0010_audit"].data_loss) == {
        DataLoss("audit_heads", rows=1),
        DataLoss("audit_log", rows=12),
        DataLoss("audit_pending", rows=0),
    }
    assert set(by_step["agency_data:0009_task_queue"].data_loss) == {
        DataLoss("task_schedules", rows=0),
        DataLoss("task_types", rows=0),
        DataLoss("task_dependencies", rows=0),
        *(
            DataLoss("tasks", column, rows)
            for column, rows in [
                ("run_at", 1),
                ("max_attempts", 1),
                ("lease_token", 0),
                ("lease_expires_at", 0),
                ("key", 0),
                ("blocked_by", 1),
                ("has_dependents", 1),
                ("traceback", 0),
            ]
        ),
    }
    assert by_step["agency_data:0008_no_metadata_gin"].data_loss == ()
    assert by_step["agency_data:0007_row_level_security"].data_loss == ()
    assert set(by_step["agency_data:0006_embedding_collections"].data_loss) == {
        DataLoss(row[0], rows=3),  # dropped from a loop in dynamic SQL
        DataLoss("embedding_collections", rows=collections[0]),
    }
    # started_at and finished_at hold data (none yet); the generated search column does not.
    assert set(by_step["agency_data:0005_task_lifecycle"].data_loss) == {
        DataLoss("tasks", "started_at", 0),
        DataLoss("tasks", "finished_at", 0),
    }
    assert all(step.loss_note is None for step in plan.steps)
    assert DataLoss(row[0], rows=3).describe() == f"table {row[0]} (3 rows)"
    assert tables(database.owner) == before  # the trial was rolled back

    everything = await runner(database.owner).down(to="0", dry_run=True)
    assert DataLoss("agents", rows=1) in everything.data_loss
    assert DataLoss("tasks", rows=1) in everything.data_loss
    assert tables(database.owner) == before


async def test_down_backs_up_first(
    database: DatabaseDsn, servers: ServerSet, tmp_path: Path
) -> None:
    with psycopg.connect(database.owner) as conn:
        conn.execute("INSERT INTO agents (tenant_id, name, type) VALUES ('default', 'kept', 'w')")
    report = await runner(database.owner, backup_dir=tmp_path / "backups").down(to="0001")
    assert "agents" not in tables(database.owner)
    assert report.backup_file is not None
    assert report.backup_file.parent == tmp_path / "backups"

    async with restored(servers, report.backup_file) as target:
        with psycopg.connect(target) as conn:
            agents = conn.execute("SELECT name FROM agents").fetchall()
        assert agents == [("kept",)]


async def test_down_refuses_a_plan_other_than_the_one_shown(empty_database: str) -> None:
    run = runner(empty_database)
    await run.up()
    with pytest.raises(MigrationError, match="plan changed since it was shown"):
        await run.down(steps=1, expect=["agency_data:0006_embedding_collections"])
    assert all(state.state == "applied" for state in await run.status())


async def test_failed_statement_outside_a_transaction_is_named(
    empty_database: str, tmp_path: Path
) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_indexes.up.sql": (
                "-- transaction: false\n-- depends: agency_data:0003\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_type_idx ON tasks (type);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS broken_idx\n    ON no_such_table (id);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_error_idx ON tasks (error);\n"
            ),
        },
    )
    run = runner(empty_database, app)
    with pytest.raises(MigrationError) as info:
        await run.up()
    message = str(info.value)
    assert "statement 2 of 3 (CREATE INDEX CONCURRENTLY IF NOT EXISTS broken_idx)" in message
    assert "no_such_table" in message  # the cause
    assert "the 1 statement before it took effect" in message
    states = {s.key: s.state for s in await run.status()}
    assert states["app:0001_indexes"] == "pending"


async def test_rollback_outside_a_transaction_lists_the_tables_it_names(
    empty_database: str, tmp_path: Path
) -> None:
    app = write(
        tmp_path / "app",
        {
            "0001_log.up.sql": (
                "-- transaction: false\n-- depends: agency_data:0002\nCREATE TABLE log (id int);"
            ),
            "0001_log.down.sql": (
                "DROP INDEX CONCURRENTLY IF EXISTS log_id;\n"
                "DROP TABLE IF EXISTS log, missing CASCADE;\n"
            ),
        },
    )
    run = runner(empty_database, app)
    await run.up()
    with psycopg.connect(empty_database) as conn:
        conn.execute("INSERT INTO log SELECT generate_series(1, 5)")
    (step,) = (await run.down(steps=1, dry_run=True)).steps
    assert step.data_loss == (DataLoss("log", rows=5),)
    assert step.loss_note is not None
    assert "outside a transaction" in step.loss_note


async def test_old_backups_are_pruned_and_nothing_else(empty_database: str, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    database = conninfo_to_dict(empty_database)["dbname"]
    others = [
        backups / "notes.txt",
        backups / f"{database}-manual.dump",
        backups / "other_db-20200101T000000000000Z.dump",
        backups / f"{database}-20200101T000000000000Z.dump.keep",
    ]
    for other in others:
        other.write_text("not ours to delete")
    oldest = backups / f"{database}-20200101T000000000000Z.dump"
    oldest.write_text("an older release's backup")
    (backups / f"{database}-20200102T000000000000Z.dump").symlink_to(backups / "notes.txt")
    app = write(tmp_path / "app", {"0001_broken.up.sql": "SELECT 1 / 0;"})
    run = runner(empty_database, app, backup_dir=backups, keep_backups=2)
    for _ in range(3):
        with pytest.raises(MigrationError, match="division by zero"):
            await run.up()
    ours = sorted(p for p in backups.glob(f"{database}-2*.dump") if not p.is_symlink())
    assert len(ours) == 2
    assert oldest not in ours
    assert all(other.read_text() == "not ours to delete" for other in others)
    assert (backups / f"{database}-20200102T000000000000Z.dump").is_symlink()


async def test_collections_made_before_0008_lose_their_metadata_index(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.embeddings.create_collection("older", dimension=3)
    run = runner(database.owner)
    await run.down(to="0007")
    with psycopg.connect(database.owner) as conn:
        table = conn.execute(
            "SELECT table_name FROM embedding_collections WHERE name = 'older'"
        ).fetchone()
        assert table is not None
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", table)
        }
    assert f"{table[0]}_metadata" in indexes  # as 0006's collections had it
    await run.up()
    with psycopg.connect(database.owner) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = %s", [f"{table[0]}_metadata"]
        ).fetchone()
    assert left == (0,)
