"""The PostgreSQL connection pool, built from the config."""

from __future__ import annotations

import logging
import select
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agency_data.config import PostgresConfig
from agency_data.dsn import postgres_dsn_problem, redact_dsn
from agency_data.errors import BackendUnavailable, ConfigError
from agency_data.postgres.errors import ServerUnreachable, connect_error_text

__all__ = ["Pool", "Setup", "configure_connection", "mark_dirty", "open_pool"]

_log = logging.getLogger("agency_data.postgres")

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]
# What runs on each new connection after the pool's own configuration (the owner's SET ROLE).
Setup = Callable[[AsyncConnection[Any]], Awaitable[None]]

# Connections that ran the caller's own SQL, which may have left session state behind
# (temporary tables shadowing ours, settings, prepared statements, advisory locks): the pool
# resets them before anyone else gets them. The library's own statements leave none.
_dirty: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()


# DISCARD ALL, but deallocating only the caller's prepared statements: psycopg keeps those it
# prepared itself (_pg3_<n>, after five runs of one query) in a cache of its own, and would run
# into "prepared statement _pg3_0 does not exist" and lose the connection. RESET ALL returns the
# settings given at connect time (statement_timeout, timezone, search_path) to those values,
# and drops the ones configure_connection SET, which are sent again in the same round trip
# (_SESSION_SQL); psycopg's adapters (JSON, pgvector's types) live in the client and stay.
_RESET = """
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
DISCARD PLANS;
DISCARD TEMP;
DISCARD SEQUENCES;
DO $$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT name FROM pg_prepared_statements WHERE name !~ '^_pg3_[0-9]+$'
    LOOP
        EXECUTE format('DEALLOCATE %I', statement);
    END LOOP;
END
$$
"""


# What configure_connection SET on each connection, to be set again after a reset.
_session_sql: weakref.WeakKeyDictionary[AsyncConnection[Any], str] = weakref.WeakKeyDictionary()


def mark_dirty(conn: AsyncConnection[Any]) -> None:
    """Have ``conn`` reset (as by ``DISCARD ALL``) when it goes back to its pool."""
    _dirty.add(conn)


async def configure_connection(conn: AsyncConnection[DictRow]) -> None:
    """What every pooled connection gets: orjson for JSON, pgvector's types, iterative scans."""
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
            settings = (
                "SET hnsw.iterative_scan = relaxed_order; "
                "SET ivfflat.iterative_scan = relaxed_order"
            )
            await conn.execute(settings)
            _session_sql[conn] = settings


def _then(setup: Setup) -> Callable[[AsyncConnection[DictRow]], Awaitable[None]]:
    async def configure(conn: AsyncConnection[DictRow]) -> None:
        await configure_connection(conn)
        await setup(conn)

    return configure


def _resetter(setup: Setup | None) -> Callable[[AsyncConnection[DictRow]], Awaitable[None]]:
    async def reset(conn: AsyncConnection[DictRow]) -> None:
        if conn in _dirty:
            _dirty.discard(conn)
            # One round trip (two with a setup, such as the owner pool's SET ROLE).
            await conn.execute(_RESET + ";\n" + _session_sql.get(conn, ""))
            if setup is not None:
                await setup(conn)

    return reset


async def _check(conn: AsyncConnection[DictRow]) -> None:
    # A full check is a round trip, which would double the cost of a point read. A connection
    # whose server went away (restart, crash, termination) has an unread message or EOF on its
    # socket, so only a readable idle socket earns the round trip, which then fails and makes
    # the pool replace the connection. (A silent network partition is caught by the query.)
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    if _readable(conn.pgconn.socket):
        await AsyncConnectionPool.check_connection(conn)


if sys.platform == "win32":
    # Windows' select() limits how many sockets it watches, not how high their numbers go.
    def _readable(fd: int) -> bool:
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)

else:

    def _readable(fd: int) -> bool:
        # poll(), not select(): select() refuses descriptors of 1024 and up (FD_SETSIZE), which
        # a busy process's sockets reach. A hang-up or an error counts as readable too.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))


class _Pool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """The pool, remembering whether its latest connection attempt failed, and why.

    A checkout that times out meanwhile raises ``ServerUnreachable`` (the server is down),
    not a plain ``PoolTimeout`` (every connection busy), so the error can say which.
    """

    # The latest connection attempt's error; None once an attempt succeeds.
    connect_error: Exception | None = None

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[DictRow]:
        # psycopg_pool's one place where connections are made (its retries included). Were it
        # renamed, nothing is recorded and timeouts read as a busy pool, as before.
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            self.connect_error = exc
            raise
        self.connect_error = None
        return conn

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[DictRow]:
        """A connection, as ``AsyncConnectionPool.getconn``; see the class for its timeout."""
        try:
            return await super().getconn(timeout)
        except PoolTimeout as exc:
            if (error := self.connect_error) is None:
                raise
            raise ServerUnreachable(
                f"{exc}; the latest connection attempt failed: {connect_error_text(error)}", error
            ) from error


async def open_pool(
    config: PostgresConfig,
    conninfo: str,
    *,
    setup: Setup | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    name: str = "agency-data",
) -> Pool:
    """Open a pool on ``conninfo`` and wait until its minimum connections are up.

    Every checkout is checked (see ``_check``), so a restarted server never hands out a dead
    connection; statement_timeout is set per connection from the config. ``setup`` runs on
    each new connection (the owner's pool uses it to act as the owner role); the sizes
    default to the config's.
    """
    # psycopg_pool logs each failed connection attempt's error at WARNING, and libpq's error
    # for a malformed string quotes it, password included: refuse it before the pool sees it.
    if problem := postgres_dsn_problem(conninfo):
        raise ConfigError(
            f"the PostgreSQL connection string is not valid (check postgresql.dsn and "
            f"postgresql.admin_dsn): {problem}"
        )
    # UTC sessions: timestamps without an offset (in JSON metadata, say) mean the same
    # instant on every machine.
    # pg_temp last: a temporary table can never stand in for one of ours by name.
    options = (
        f"-c statement_timeout={int(config.statement_timeout * 1000)} -c timezone=UTC "
        "-c search_path=public,pg_temp"
    )
    configure = configure_connection if setup is None else _then(setup)
    pool = _Pool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        kwargs={"row_factory": dict_row, "options": options, "autocommit": True},
        min_size=config.pool_min_size if min_size is None else min_size,
        max_size=config.pool_max_size if max_size is None else max_size,
        timeout=config.pool_timeout,
        max_waiting=config.max_waiting,
        configure=configure,
        reset=_resetter(setup),
        check=_check,
        open=False,
        name=name,
    )
    try:
        await pool.open(wait=True, timeout=config.pool_timeout)
    except PoolTimeout as exc:
        error = pool.connect_error
        await pool.close()
        why = f" (the latest attempt failed: {connect_error_text(error)})" if error else ""
        raise BackendUnavailable(
            f"could not connect to PostgreSQL at {_where(conninfo)} within "
            f"{config.pool_timeout:.1f} s{why}; is the server running and the DSN right?",
            backend="postgresql",
        ) from exc
    return pool


def _where(conninfo: str) -> str:
    """``host:port/dbname`` of ``conninfo`` for messages: never a password, never a raise."""
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:  # noqa: BLE001 - a message helper must not replace the real error
        # (psycopg's parse error would quote the string, password included.)
        return "the configured server"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    where = f"{host}:{params.get('port') or 5432}/{params.get('dbname', '')}"
    return redact_dsn(where)
