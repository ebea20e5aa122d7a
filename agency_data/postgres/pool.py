"""The PostgreSQL connection pool, built from the config."""

from __future__ import annotations

import logging
import select

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agency_data.config import PostgresConfig
from agency_data.errors import BackendUnavailable

__all__ = ["Pool", "open_pool"]

_log = logging.getLogger("agency_data.postgres")

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


async def _configure(conn: AsyncConnection[DictRow]) -> None:
    set_json_loads(orjson.loads, conn)
    # pgvector's types exist only once its extension does; until then vectors are not used.
    cursor = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    row = await cursor.fetchone()
    if row is not None:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        if tuple(int(p) for p in row["extversion"].split(".")[:2]) >= (0, 8):
            # Filtered searches keep scanning the index until LIMIT rows pass the filter
            # (results come back nearly sorted; the store sorts them exactly).
            await conn.execute("SET hnsw.iterative_scan = relaxed_order")
            await conn.execute("SET ivfflat.iterative_scan = relaxed_order")


async def _check(conn: AsyncConnection[DictRow]) -> None:
    # A full check is a round trip, which would double the cost of a point read. A connection
    # whose server went away (restart, crash, termination) has an unread message or EOF on its
    # socket, so only a readable idle socket earns the round trip, which then fails and makes
    # the pool replace the connection. (A silent network partition is caught by the query.)
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        await AsyncConnectionPool.check_connection(conn)


async def open_pool(config: PostgresConfig, conninfo: str) -> Pool:
    """Open a pool on ``conninfo`` and wait until its minimum connections are up.

    Every checkout is checked (see ``_check``), so a restarted server never hands out a dead
    connection; statement_timeout is set per connection from the config.
    """
    # UTC sessions: timestamps without an offset (in JSON metadata, say) mean the same
    # instant on every machine.
    options = f"-c statement_timeout={int(config.statement_timeout * 1000)} -c timezone=UTC"
    pool: Pool = AsyncConnectionPool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        kwargs={"row_factory": dict_row, "options": options, "autocommit": True},
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout=config.pool_timeout,
        max_waiting=config.max_waiting,
        configure=_configure,
        check=_check,
        open=False,
        name="agency-data",
    )
    try:
        await pool.open(wait=True, timeout=config.pool_timeout)
    except PoolTimeout as exc:
        await pool.close()
        raise BackendUnavailable(
            f"could not connect to PostgreSQL at {_where(conninfo)} within "
            f"{config.pool_timeout:.1f} s; is the server running and the DSN right?",
            backend="postgresql",
        ) from exc
    return pool


def _where(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    return (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )
