"""Tenancy enforced by PostgreSQL: row-level security, least-privilege roles, the admin surface."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from agency_data import AgencyDataError, DataLayer, PermissionDenied, TenantScope, ValidationError
from tests.conftest import DatabaseDsn, make_config, other_connection

DIM = 3


@pytest.fixture
async def two_tenants(dl: DataLayer) -> DataLayer:
    """Tenants a and b, each with an agent, two tasks (one waiting on the other), a task type
    policy, a schedule, an embedding in two collections, a key-value item, a LangGraph
    checkpoint, a LangGraph store item, an outbox message, a change, a change consumer, a
    memory with its version and link, and a graph entity with a fact and a mention."""
    await dl.embeddings.create_collection("notes", dimension=DIM)
    # Agents audited: the audit trail's tables get a record and a chain head per tenant.
    await dl.admin.fetch("SELECT agency_data_audit('agents', true)")
    for tenant in ("a", "b"):
        scope = dl.tenant(tenant)
        agent = await scope.agents.create(name=f"{tenant}-agent", type="worker")
        first = await scope.tasks.create(type="job", data={"owner": tenant}, agent_id=agent.id)
        await scope.tasks.create(type="job", depends_on=[first.id])
        await scope.tasks.pause("job")
        await scope.tasks.schedule("nightly", type="job", cron="0 3 * * *")
        item = {"entity_type": "doc", "entity_id": tenant, "vector": [1, 2, 3]}
        await scope.embeddings.collection("notes").store(item)
        await scope.embeddings.store({**item, "vector": [0.1] * 768})
        await scope.execute(
            "INSERT INTO kv_items (tenant_id, namespace, key, value) VALUES (%s, 'n', 'k', 'v')",
            [tenant],
        )
        # A LangGraph checkpoint, one of its values and a pending write.
        await scope.execute(
            "INSERT INTO langgraph_checkpoints (tenant_id, thread_id, checkpoint_id, checkpoint) "
            "VALUES (%s, 'thread', 'c1', '{}')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO langgraph_checkpoint_blobs (tenant_id, thread_id, channel, version, "
            "type, blob) VALUES (%s, 'thread', 'messages', '1', 'null', '')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO langgraph_checkpoint_writes (tenant_id, thread_id, checkpoint_id, "
            "task_id, idx, channel, type, blob) VALUES (%s, 'thread', 'c1', 't', 0, 'x', 'null', '')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO outbox (tenant_id, kind, destination, message) "
            "VALUES (%s, 'stream', 'events', '{}')",
            [tenant],
        )
        # A change of the change feed, and a named consumer's cursor.
        await scope.execute(
            "INSERT INTO changes (tenant_id, table_name, op, row_id, new) "
            "VALUES (%s, 'agents', 'insert', 'x', '{}')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO change_consumers (tenant_id, name, seq, change_id) VALUES (%s, 'c', 0, 0)",
            [tenant],
        )
        # An item of the LangGraph store (agency_data.integrations.langgraph).
        await scope.execute(
            "INSERT INTO langgraph_store (tenant_id, store, prefix, key, value) "
            "VALUES (%s, 'lg_store', 'memories', 'k', '{}')",
            [tenant],
        )
        # A memory, its first version and a consolidation link to itself.
        await scope.execute(
            "INSERT INTO memories (tenant_id, id, collection, kind, importance, happened_at) "
            "VALUES (%s, 'm', 'memories', 'fact', 0.5, now())",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO memory_history (tenant_id, memory_id, version, event, collection, kind) "
            "VALUES (%s, 'm', 1, 'created', 'memories', 'fact')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO memory_links (tenant_id, summary_id, replaced_id) VALUES (%s, 'm', 'm')",
            [tenant],
        )
        # The knowledge graph: an entity, a fact about itself learned from the memory, and
        # the memory's mention of it.
        await scope.execute(
            "INSERT INTO memory_entities (tenant_id, id, name, type) VALUES (%s, 'e', 'E', 'x')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO memory_relations (tenant_id, id, source_id, relation, target_id, "
            "valid_from, source_memory) VALUES (%s, 'r', 'e', 'is', 'e', now(), 'm')",
            [tenant],
        )
        await scope.execute(
            "INSERT INTO memory_mentions (tenant_id, memory_id, entity_id) VALUES (%s, 'm', 'e')",
            [tenant],
        )
        # The service's API keys.
        await dl.admin.api_keys.create(tenant, "read-only")
    # Each tenant's record chained now: it waits in audit_pending until then.
    await dl.admin.fetch("SELECT agency_data_audit_seal()")
    return dl


# The audit trail's tables: read-only to the application (records come through functions).
READ_ONLY = {"audit_log", "audit_heads", "audit_pending"}
# Empty once sealed: its rows move to audit_log.
SEALED_AWAY = {"audit_pending"}


async def tenant_tables(dl: DataLayer) -> list[str]:
    """Every table of the schema with a tenant_id column (later ones included)."""
    rows = await dl.admin.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND column_name = 'tenant_id' ORDER BY table_name"
    )
    return [row["table_name"] for row in rows]


async def test_every_tenant_table_has_forced_rls_and_its_policy(two_tenants: DataLayer) -> None:
    dl = two_tenants
    tables = await tenant_tables(dl)
    assert {
        "agents",
        "tasks",
        "task_dependencies",
        "task_types",
        "task_schedules",
        "emb_notes",
        "emb_default",
        "langgraph_checkpoints",
        "langgraph_checkpoint_blobs",
        "langgraph_checkpoint_writes",
    } <= set(tables)
    for table in tables:
        row = await dl.admin.fetch_one(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, "
            "(SELECT count(*) FROM pg_policies p WHERE p.schemaname = 'public' "
            " AND p.tablename = c.relname AND p.qual LIKE '%%agency_data_current_tenant()%%' "
            " AND p.with_check LIKE '%%agency_data_current_tenant()%%' "
            " AND p.cmd = 'ALL' AND p.permissive = 'PERMISSIVE') AS policies "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            [table],
        )
        assert row == {"relrowsecurity": True, "relforcerowsecurity": True, "policies": 1}, table


async def test_the_pool_role_is_least_privilege(dl: DataLayer) -> None:
    row = await dl.fetch_one(
        "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, "
        "(SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) AS owned, "
        "has_schema_privilege('public', 'CREATE') AS can_create, "
        "pg_has_role('pg_read_server_files', 'MEMBER') AS read_files, "
        "pg_has_role('pg_write_server_files', 'MEMBER') AS write_files, "
        "pg_has_role('pg_execute_server_program', 'MEMBER') AS programs "
        "FROM pg_roles r WHERE r.rolname = current_user"
    )
    assert row == {
        "rolsuper": False,
        "rolbypassrls": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "owned": 0,
        "can_create": False,
        "read_files": False,
        "write_files": False,
        "programs": False,
    }
    assert await dl.admin.role_warnings() == []
    assert (await dl.health()).warnings == []


async def test_raw_sql_through_a_tenant_sees_and_changes_only_its_rows(
    two_tenants: DataLayer,
) -> None:
    dl = two_tenants
    a, b = dl.tenant("a"), dl.tenant("b")
    for table in await tenant_tables(dl):
        name = sql.Identifier(table)
        every = sql.SQL("SELECT tenant_id FROM {}").format(name)
        update = sql.SQL("UPDATE {} SET tenant_id = tenant_id WHERE tenant_id <> 'a'").format(name)
        delete = sql.SQL("DELETE FROM {} WHERE tenant_id = 'b'").format(name)
        if table in SEALED_AWAY:
            assert await a.fetch(every) == [], table
            for statement in (update, delete):
                with pytest.raises(PermissionDenied):
                    await a.execute(statement)
            continue
        assert {r["tenant_id"] for r in await a.fetch(every)} == {"a"}, table
        # Naming the other tenant outright, forgetting the condition, or changing rows in bulk:
        # b's rows are out of a's reach whatever the SQL says.
        assert await a.fetch(sql.SQL("{} WHERE tenant_id = %s").format(every), ["b"]) == []
        # Two tasks; an entity named E has two trigrams ("  e", " e ").
        rows = 2 if table in ("tasks", "memory_entity_trigrams") else 1
        assert await a.fetch_value(sql.SQL("SELECT count(*) FROM {}").format(name)) == rows
        for statement in (update, delete):
            if table in READ_ONLY:
                with pytest.raises(PermissionDenied):
                    await a.execute(statement)
            else:
                assert await a.execute(statement) == 0
        with pytest.raises(PermissionDenied):  # moving a's row to b
            await a.execute(sql.SQL("UPDATE {} SET tenant_id = 'b'").format(name))
        assert {r["tenant_id"] for r in await b.fetch(every)} == {"b"}, table
    with pytest.raises(PermissionDenied):
        await a.execute("INSERT INTO agents (tenant_id, name, type) VALUES ('b', 'spy', 't')")
    assert await a.execute("DELETE FROM tasks") == 2
    assert await b.tasks.count() == 2


async def test_a_transaction_may_span_tenants_and_each_statement_keeps_its_own(
    two_tenants: DataLayer,
) -> None:
    dl = two_tenants
    a, b = dl.tenant("a"), dl.tenant("b")
    names = "SELECT name FROM agents"
    async with a.transaction():
        assert await a.fetch(names) == [{"name": "a-agent"}]
        assert await b.fetch(names) == [{"name": "b-agent"}]
        with pytest.raises(PermissionDenied):
            async with b.transaction():  # a savepoint, rolled back with its setting
                await b.execute("INSERT INTO agents (tenant_id, name, type) VALUES ('a', 'x', 't')")
        assert await a.fetch(names) == [{"name": "a-agent"}]
        assert await b.fetch(names) == [{"name": "b-agent"}]
        assert await a.fetch_value("SELECT count(*) FROM agents", timeout=5) == 1
    assert await dl.execute_transaction([("SELECT name FROM agents", None)]) == [[]]
    results = await a.execute_transaction([("SELECT name FROM agents", None)])
    assert results == [[{"name": "a-agent"}]]


async def test_without_a_tenant_nothing_is_visible(two_tenants: DataLayer) -> None:
    async with two_tenants.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM agents")).fetchone()
    assert row == {"n": 0}
    async with other_connection(two_tenants, "b") as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM agents")).fetchone()
    assert row == {"n": 1}


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT pg_read_file('postgresql.conf')",
        "SELECT pg_ls_dir('.')",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY agents FROM '/etc/passwd'",
        "CREATE TABLE planted (id int)",
        "CREATE FUNCTION planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DROP TABLE agents",
        "TRUNCATE tasks",
        "ALTER TABLE agents DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE agents NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON agents",
        "CREATE INDEX planted ON agents (name)",
        "DELETE FROM embedding_collections",
        "DELETE FROM agency_data_migrations",
        "DROP TABLE emb_notes",
        "CREATE ROLE planted SUPERUSER",
        "SET ROLE agency_owner",
    ],
)
async def test_server_files_programs_and_ddl_are_refused(
    two_tenants: DataLayer, statement: str
) -> None:
    with pytest.raises(PermissionDenied) as info:
        await two_tenants.tenant("a").execute(statement)  # type: ignore[arg-type]
    assert "lacks this privilege" in str(info.value)
    assert await two_tenants.tenant("b").agents.count() == 1


async def test_a_tenant_view_stores_and_searches_but_administers_nothing(
    two_tenants: DataLayer,
) -> None:
    scope: TenantScope = two_tenants.tenant("a")
    notes = scope.embeddings.collection("notes")
    hits = await notes.find_similar([1, 2, 3], limit=10)
    assert [h.entity_id for h in hits] == ["a"]
    assert await notes.count() == 1
    assert (await notes.describe()).rows == 1
    for admin_only in ("create_collection", "drop_collection", "list_collections"):
        assert not hasattr(scope.embeddings, admin_only)
    for admin_only in ("create_index", "drop_index", "reindex", "optimize"):
        assert not hasattr(notes, admin_only)
    # The unscoped store and dl.admin still administer, as the owner.
    assert await two_tenants.embeddings.list_collections() == ["default", "notes"]
    await two_tenants.admin.create_index("notes", "hnsw")
    report = await two_tenants.embeddings.collection("notes").optimize()
    assert report.rows == 2  # every tenant's, for the owner's eyes only
    assert await notes.count() == 1


async def test_the_owner_reads_across_tenants(two_tenants: DataLayer) -> None:
    rows = await two_tenants.admin.fetch("SELECT tenant_id FROM agents ORDER BY tenant_id")
    assert [r["tenant_id"] for r in rows] == ["a", "b"]


async def test_a_superuser_pool_is_warned_about(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database.superuser, redis_url, tmp_path)
    async with DataLayer(config) as dl:
        warnings = (await dl.health()).warnings
    assert any("superuser" in w for w in warnings), warnings
    with psycopg.connect(database.owner) as conn:
        owner: Any = conn.execute("SELECT current_user").fetchone()
    config = make_config(database.owner, redis_url, tmp_path)
    async with DataLayer(config) as dl:
        warnings = (await dl.health()).warnings
    assert any(f"{owner[0]} owns tables" in w for w in warnings), warnings


async def test_statements_on_the_transactions_own_connection_run_as_its_tenant(
    two_tenants: DataLayer,
) -> None:
    async with two_tenants.tenant("b").transaction() as tx:
        cursor = await tx.conn.execute("SELECT name FROM agents")
        assert await cursor.fetchall() == [{"name": "b-agent"}]


async def test_search_settings_and_the_tenant_hold_for_one_call_only(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # One connection, so whatever a call leaves behind, the next call would see.
    config = make_config(database, redis_url, tmp_path, postgresql={"pool_max_size": 1})
    async with DataLayer(config) as dl:
        await dl.embeddings.create_collection("notes", dimension=DIM)
        notes = dl.tenant("a").embeddings.collection("notes")
        await notes.store({"entity_type": "doc", "entity_id": "1", "vector": [1, 2, 3]})
        settings = "SELECT current_setting('enable_indexscan') AS scan, current_setting('hnsw.ef_search') AS ef"
        for _ in range(2):
            assert len(await notes.find_similar([1, 2, 3], exact=True, ef_search=7)) == 1
            async with dl.pool.connection() as conn:
                row = await (await conn.execute(settings)).fetchone()
                tenant = await (
                    await conn.execute("SELECT current_setting('agency_data.tenant', true) AS t")
                ).fetchone()
            assert row == {"scan": "on", "ef": "40"}
            assert tenant in ({"t": None}, {"t": ""})
        async with dl.tenant("a").transaction():
            await notes.find_similar([1, 2, 3], exact=True, ef_search=7)
            assert await dl.tenant("a").fetch_one(settings) == {"scan": "on", "ef": "40"}


async def one_connection(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> DataLayer:
    config = make_config(database, redis_url, tmp_path, postgresql={"pool_max_size": 1})
    return DataLayer(config)


async def test_the_reset_after_raw_sql_restores_the_layers_own_settings(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # The reset is one round trip: it must still put back what each connection was set up with.
    async with await one_connection(database, redis_url, tmp_path) as dl:
        expected = {
            "hnsw.iterative_scan": "relaxed_order",
            "ivfflat.iterative_scan": "relaxed_order",
            "statement_timeout": await dl.fetch_value("SHOW statement_timeout"),
            "TimeZone": "UTC",
            "search_path": "public,pg_temp",
        }
        for name in expected:
            await dl.execute(f"SET {name} = DEFAULT")
        for name, value in expected.items():
            assert await dl.fetch_value(f"SHOW {name}") == value, name
        owner = await dl.admin.fetch_value("SELECT current_user")
        await dl.admin.execute("RESET ROLE")
        assert await dl.admin.fetch_value("SELECT current_user") == owner


async def test_session_state_left_by_raw_sql_never_reaches_another_tenant(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # One connection: whatever a's raw SQL leaves on it, b's next call would meet.
    async with await one_connection(database, redis_url, tmp_path) as dl:
        a, b = dl.tenant("a"), dl.tenant("b")
        await a.execute("CREATE TEMP TABLE agents (LIKE public.agents INCLUDING DEFAULTS)")
        await a.execute("SET search_path = pg_temp, public")
        await a.fetch("SELECT pg_advisory_lock(42)")
        await a.execute("PREPARE planted AS SELECT 1")
        await b.agents.create(name="b-secret", type="t")
        # The temporary table went with the reset of a's connection, before b got it.
        assert await a.fetch_value("SELECT to_regclass('pg_temp.agents') IS NULL") is True
        assert [x.name for x in (await b.agents.list()).items] == ["b-secret"]
        assert await b.fetch_value("SHOW search_path") == "public,pg_temp"
        # This connection's own: the layer's relay (another connection) takes advisory locks too.
        held = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert await b.fetch_value(held) == 0
        assert (
            await b.fetch_value(
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'planted'"
            )
            == 0
        )
        # The same through a transaction's own connection.
        async with a.transaction() as tx:
            await tx.conn.execute("CREATE TEMP TABLE tasks (LIKE public.tasks INCLUDING DEFAULTS)")
        await b.tasks.create(type="b-job")
        assert await b.tasks.count() == 1


async def test_a_rolled_back_block_never_leaves_a_tenant_behind(two_tenants: DataLayer) -> None:
    dl = two_tenants
    a, b = dl.tenant("a"), dl.tenant("b")
    notes = a.embeddings.collection("notes")
    names = "SELECT name FROM agents"
    async with b.transaction():
        async for _ in notes.search_stream([1, 2, 3]):
            break  # an early stop rolls the stream's savepoint back
        assert await b.fetch(names) == [{"name": "b-agent"}]
        assert await a.fetch(names) == [{"name": "a-agent"}]
        async with b.transaction():
            raise_rollback()  # psycopg's own way to roll a block back quietly
        assert await a.fetch(names) == [{"name": "a-agent"}]
        assert await b.fetch(names) == [{"name": "b-agent"}]


def raise_rollback() -> None:
    raise psycopg.Rollback()


async def test_tasks_sharing_a_transaction_each_keep_their_tenant(two_tenants: DataLayer) -> None:
    dl = two_tenants
    a, b = dl.tenant("a"), dl.tenant("b")
    names = "SELECT name FROM agents"
    async with dl.transaction():
        for _ in range(20):
            seen_a, seen_b, hits = await asyncio.gather(
                a.fetch(names),
                b.fetch(names),
                b.embeddings.collection("notes").find_similar([1, 2, 3]),
            )
            assert (seen_a, seen_b) == ([{"name": "a-agent"}], [{"name": "b-agent"}])
            assert [h.entity_id for h in hits] == ["b"]


@pytest.mark.parametrize(
    ("query", "params", "timeout"),
    [
        ("", None, None),
        ("-- only a comment", None, None),
        (123, None, None),
        ("SELECT 1", None, float("nan")),
        ("SELECT 1", None, float("inf")),
        ("SELECT 1", None, "1"),
        ("SELECT 1", None, -1),
    ],
)
async def test_bad_queries_are_typed_errors(
    two_tenants: DataLayer, query: Any, params: Any, timeout: Any
) -> None:
    for view in (two_tenants, two_tenants.tenant("a")):
        with pytest.raises(AgencyDataError):
            await view.fetch(query, params, timeout=timeout)
    with pytest.raises(ValidationError):
        await two_tenants.execute_transaction([("SELECT 1",)])  # type: ignore[list-item]
