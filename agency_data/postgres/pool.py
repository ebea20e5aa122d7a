"""The PostgreSQL connection pool, built from the config."""

from __future__ import annotations

import logging
import re
import select
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agency_data.config import PostgresConfig
from agency_data.dsn import postgres_dsn_problem, redact_dsn
from agency_data.errors import BackendUnavailable, ConfigError
from agency_data.postgres.errors import ServerUnreachable, connect_error_text

__all__ = [
    "Pool",
    "Setting",
    "Setup",
    "configure_connection",
    "mark_dirty",
    "open_pool",
    "set_config_statement",
    "transaction_settings",
]

_log = logging.getLogger("agency_data.postgres")

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]
# What runs on each new connection after the pool's own configuration (the owner's SET ROLE).
Setup = Callable[[AsyncConnection[Any]], Awaitable[None]]
# A setting's name and value, as set_config() takes them.
Setting = tuple[str, str]

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

# Behind PgBouncer's transaction pooling, each transaction may run on another server
# connection, shared with PgBouncer's other clients: a setting given at connect time (PgBouncer
# refuses the `options` startup parameter) or by a session-level SET would reach one server
# connection and be missing from the next. Such connections keep their settings here instead,
# and Database sends them with every transaction, transaction-locally (set_config(..., true)),
# which also overrides whatever another client left on the server connection.
_per_transaction: weakref.WeakKeyDictionary[AsyncConnection[Any], tuple[Setting, ...]] = (
    weakref.WeakKeyDictionary()
)

# pgvector >= 0.8: filtered searches keep scanning the index until LIMIT rows pass the filter
# (results come back nearly sorted; the store sorts them exactly).
_VECTOR_SETTINGS: tuple[Setting, ...] = (
    ("hnsw.iterative_scan", "relaxed_order"),
    ("ivfflat.iterative_scan", "relaxed_order"),
)
_VECTOR_SETTINGS_SQL = (
    "SET hnsw.iterative_scan = relaxed_order; SET ivfflat.iterative_scan = relaxed_order"
)


def transaction_settings(conn: AsyncConnection[Any]) -> tuple[Setting, ...]:
    """What to send with each transaction on ``conn``: nothing unless it goes through PgBouncer."""
    return _per_transaction.get(conn, ())


# SELECT set_config(...) statements by how many settings they give.
_SET_CONFIG: dict[int, LiteralString] = {}


def set_config_statement(settings: Sequence[Setting]) -> tuple[LiteralString, list[str]]:
    """One statement giving each of ``settings`` to the current transaction only."""
    count = len(settings)
    if count == 0:
        raise ValueError("set_config_statement needs at least one setting")
    query = _SET_CONFIG.get(count)
    if query is None:
        query = _SET_CONFIG[count] = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * count)
    return query, [part for setting in settings for part in setting]


def mark_dirty(conn: AsyncConnection[Any]) -> None:
    """Have ``conn`` reset (as by ``DISCARD ALL``) when it goes back to its pool."""
    _dirty.add(conn)


async def configure_connection(conn: AsyncConnection[DictRow]) -> None:
    """What every pooled connection gets: orjson for JSON, pgvector's types, iterative scans."""
    await _configure(conn, None)


async def _configure(
    conn: AsyncConnection[DictRow], per_transaction: tuple[Setting, ...] | None
) -> None:
    # per_transaction: None for a direct connection, else the settings (beyond pgvector's) to
    # send with each transaction of a connection through PgBouncer.
    set_json_loads(orjson.loads, conn)
    if per_transaction is None:
        if await _register_vector(conn):
            await conn.execute(_VECTOR_SETTINGS_SQL)
            _session_sql[conn] = _VECTOR_SETTINGS_SQL
        return
    # Through PgBouncer, pgvector's types are looked up (by name, so by search_path) in a
    # transaction of their own, with our settings: the server connection may carry another
    # client's search_path.
    async with conn.transaction():
        await conn.execute(*set_config_statement(per_transaction))
        iterative = await _register_vector(conn)
    _per_transaction[conn] = per_transaction + (_VECTOR_SETTINGS if iterative else ())


async def _register_vector(conn: AsyncConnection[DictRow]) -> bool:
    # pgvector's types exist only once its extension does; until then vectors are not used.
    # True when its iterative index scans are there to turn on (0.8 and later).
    cursor = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    row = await cursor.fetchone()
    if row is None:
        return False
    from pgvector.psycopg import register_vector_async

    await register_vector_async(conn)
    return tuple(int(p) for p in row["extversion"].split(".")[:2]) >= (0, 8)


def _then(setup: Setup) -> Callable[[AsyncConnection[DictRow]], Awaitable[None]]:
    async def configure(conn: AsyncConnection[DictRow]) -> None:
        await configure_connection(conn)
        await setup(conn)

    return configure


async def _forget(conn: AsyncConnection[DictRow]) -> None:
    # Through PgBouncer there is no session of ours to reset: whatever the caller's SQL left
    # behind stays on a server connection PgBouncer lends to anyone (its documented limits),
    # and a reset sent now would land on yet another one, maybe in another client's use.
    _dirty.discard(conn)


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
    # Connection attempts the server refused to log in (a metric, and an alert when repeated).
    refused_logins: int = 0

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[DictRow]:
        # psycopg_pool's one place where connections are made (its retries included). Were it
        # renamed, nothing is recorded and timeouts read as a busy pool, as before.
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            self.connect_error = exc
            if refused_login(exc):
                self.refused_logins += 1
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
    pgbouncer: bool = False,
    cursor_factory: type[AsyncCursor[Any]] | None = None,
    timeout: float | None = None,
    wait: bool = True,
    settings: Sequence[Setting] = (),
) -> Pool:
    """Open a pool on ``conninfo`` and wait until its minimum connections are up.

    Every checkout is checked (see ``_check``), so a restarted server never hands out a dead
    connection; statement_timeout is set per connection from the config. ``setup`` runs on
    each new connection (the owner's pool uses it to act as the owner role); the sizes
    default to the config's.

    ``pgbouncer``: ``conninfo`` goes through PgBouncer in transaction mode. Statements are
    then never prepared server-side (PgBouncer before 1.21, and later ones without
    ``max_prepared_statements``, would send them to server connections that never saw them),
    the settings travel with each transaction (see :func:`transaction_settings`), and
    connections handed back are not reset (there is no session to reset).

    ``cursor_factory``: the connections' cursor class (the observability cursor, when the
    slow-query log or trace comments are on). ``timeout``: how long a checkout waits (default:
    the config's ``pool_timeout``). Without ``wait``, the pool opens at once and connects in
    the background (a read replica that is down must not stop the layer from starting).
    ``settings``: more settings every connection carries, beyond the config's (the store
    events' ``agency_data.events``); one with an empty value is left unset on a direct
    connection, and set empty through PgBouncer (over whatever another client left there).
    """
    if pgbouncer and setup is not None:
        raise ConfigError(
            "a connection setup (such as the owner's SET ROLE) is session state, which "
            "PgBouncer's transaction pooling cannot keep; open that pool on a direct connection "
            "(postgresql.admin_dsn)"
        )
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
    every: tuple[Setting, ...] = (
        ("statement_timeout", str(int(config.statement_timeout * 1000))),
        ("timezone", "UTC"),
        ("search_path", "public,pg_temp"),
        *(_checked_setting(setting) for setting in settings),
    )
    kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": True}
    if cursor_factory is not None:
        # The slow-query log's timing and the trace context in SQL (agency_data.observability).
        kwargs["cursor_factory"] = cursor_factory
    configure: Callable[[AsyncConnection[DictRow]], Awaitable[None]]
    reset: Callable[[AsyncConnection[DictRow]], Awaitable[None]]
    if pgbouncer:
        kwargs["prepare_threshold"] = None
        configure = partial(_configure, per_transaction=every)
        reset = _forget
    else:
        kwargs["options"] = " ".join(f"-c {name}={value}" for name, value in every if value)
        configure = configure_connection if setup is None else _then(setup)
        reset = _resetter(setup)
    pool = _Pool(
        conninfo,
        connection_class=AsyncConnection[DictRow],
        kwargs=kwargs,
        min_size=config.pool_min_size if min_size is None else min_size,
        max_size=config.pool_max_size if max_size is None else max_size,
        timeout=config.pool_timeout if timeout is None else timeout,
        max_waiting=config.max_waiting,
        configure=configure,
        reset=reset,
        check=_check,
        open=False,
        name=name,
    )
    if not wait:
        await pool.open(wait=False)
        return pool
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


# What a setting given in the startup packet's options may hold: a space or a backslash
# would be read as the start of another option or an escape.
_OPTION_VALUE = re.compile(r"[A-Za-z0-9_.,:-]*")


def _checked_setting(setting: Setting) -> Setting:
    name, value = setting
    if not _OPTION_VALUE.fullmatch(name) or not name or not _OPTION_VALUE.fullmatch(value):
        raise ConfigError(
            f"connection setting {name!r} = {value!r} holds characters a connection's options "
            "cannot carry: use letters, digits and _ . , : - only",
            field="settings",
        )
    return setting


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


# libpq reports a refused login in the message only (psycopg's sqlstate is None at connect).
_REFUSED_LOGIN = re.compile(
    r'authentication failed|no pg_hba\.conf entry|role "[^"]*" does not exist|'
    r"is not permitted to log in|password authentication"
)


def refused_login(exc: BaseException) -> bool:
    """True when ``exc`` is the server refusing a login (not a server that is down)."""
    return isinstance(exc, psycopg.OperationalError) and bool(_REFUSED_LOGIN.search(str(exc)))
