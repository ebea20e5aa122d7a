"""What the baselines run on: a psycopg pool of the owner role, which row-level security does not
filter, and a second data layer on a database of its own whose tables have no row-level security.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded.postgres import SUPERUSER
from agency_data.postgres.pool import configure_connection
from agency_data.security.roles import RoleNames, setup_roles

__all__ = [
    "RLS_OFF_DATABASE",
    "RawPool",
    "disable_rls",
    "equalize",
    "raw_pool",
    "rls_off_layer",
    "with_params",
]

RawPool = AsyncConnectionPool[AsyncConnection[DictRow]]

# The database of the layer without row-level security; dropped and made afresh at each run.
RLS_OFF_DATABASE = "agency_data_bench_rls_off"


def with_params(conninfo: str, **changes: Any) -> str:
    """``conninfo`` with some of its parameters (dbname, user) replaced."""
    return make_conninfo(**{**conninfo_to_dict(conninfo), **changes})


@asynccontextmanager
async def raw_pool(dl: DataLayer) -> AsyncIterator[RawPool]:
    """A pool as large as the layer's, logged in as the owner role, for the raw baselines.

    The layer's own pool is the application role's, which sees no row until a tenant is named;
    the owner bypasses row-level security (the embedded server grants it BYPASSRLS), so
    hand-written psycopg reads and writes the same tables with nothing in the way.
    """
    config = dl.config.postgresql
    options = f"-c statement_timeout={int(config.statement_timeout * 1000)} -c timezone=UTC"
    pool: RawPool = AsyncConnectionPool(
        dl.admin_conninfo,
        connection_class=AsyncConnection[DictRow],
        kwargs={"row_factory": dict_row, "options": options, "autocommit": True},
        min_size=dl.pool.min_size,
        max_size=dl.pool.max_size,
        configure=configure_connection,
        open=False,
        name="bench-raw",
    )
    await pool.open(wait=True, timeout=config.pool_timeout)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT rolsuper OR rolbypassrls AS free FROM pg_roles WHERE rolname = current_user"
            )
            row = await cursor.fetchone()
        if row is None or not row["free"]:
            raise RuntimeError(
                "the owner role (postgresql.admin_dsn) does not bypass row-level security, so "
                "the raw baselines would see no rows; grant it BYPASSRLS for the benchmark"
            )
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def rls_off_layer(dl: DataLayer) -> AsyncIterator[DataLayer]:
    """The same layer on a fresh database of the same server, with no tenant named to it.

    Its pool logs in as the same application role as ``dl``'s; agents and tasks have row-level
    security disabled (collections made later: :func:`disable_rls`). On the embedded server the
    database is made by the superuser; on a configured one by the owner role, which then needs
    CREATEDB (and a vector extension it may create).
    """
    roles = RoleNames.from_config(dl.config.postgresql)
    creator = dl.admin_conninfo
    if dl.config.postgresql.is_embedded:
        # The embedded server lets its OS user log in as any role: the superuser makes the
        # database and the roles' grants in it, as the layer does for its own database.
        creator = with_params(creator, user=SUPERUSER)
    database = sql.Identifier(RLS_OFF_DATABASE)
    async with await AsyncConnection.connect(creator, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        await conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(database, sql.Identifier(roles.owner))
        )
    try:
        async with await AsyncConnection.connect(
            with_params(creator, dbname=RLS_OFF_DATABASE), autocommit=True
        ) as conn:
            await setup_roles(conn, roles, migrations_table=dl.config.migration.table_name)
        postgresql = dl.config.postgresql.model_copy(
            update={
                "dsn": SecretStr(with_params(dl.conninfo, dbname=RLS_OFF_DATABASE)),
                "admin_dsn": SecretStr(with_params(dl.admin_conninfo, dbname=RLS_OFF_DATABASE)),
            }
        )
        config: DataLayerConfig = dl.config.model_copy(update={"postgresql": postgresql})
        async with DataLayer(config) as off:
            for table in ("agents", "tasks"):
                await disable_rls(off, table)
            # The private seam: names_tenant is the Database's switch for the per-statement
            # set_config, with no public setting (production must never turn it off). Tenant
            # scopes copy it when made, and dl.embeddings is built on one, so both caches go.
            assert off._db is not None
            off._db.names_tenant = False
            off._scopes.clear()
            off._embeddings = None
            yield off
    finally:
        async with await AsyncConnection.connect(creator, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))


async def disable_rls(layer: DataLayer, table: str) -> None:
    """Turn row-level security off on ``table`` (as the owner) and check that it is off."""
    ident = sql.Identifier(table)
    await layer.admin.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(ident))
    await layer.admin.execute(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(ident))
    row = await layer.admin.fetch_one(
        "SELECT relrowsecurity OR relforcerowsecurity AS rls FROM pg_class "
        "WHERE oid = %s::regclass",
        [table],
    )
    assert row == {"rls": False}, f"row-level security is still on for {table}"


async def equalize(*pools: RawPool) -> None:
    """Open connections until each pool holds as many as the largest, before comparing them.

    psycopg_pool hands its idle connections out in turn, so a pool that an earlier scenario grew
    to 20 spreads sequential calls over 20 server processes, each colder than with 4: point
    reads measured a third slower for that alone.
    """
    size = max(pool.get_stats().get("pool_size", 0) for pool in pools)
    for pool in pools:
        async with AsyncExitStack() as stack:
            for _ in range(size):
                await stack.enter_async_context(pool.connection())
