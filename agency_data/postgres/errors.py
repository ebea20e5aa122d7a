"""The one place where psycopg's errors become agency-data's.

Use :func:`translate_errors` around any driver call (a plain ``with``, also in async code)::

    with translate_errors("creating an agent"):
        await conn.execute(query, params)

Driver text can carry pieces of a connection string, so every message built from it goes
through :func:`~agency_data.config.redact_dsn`, and libpq's connection-string parse errors
(which quote the string, or a bare piece of the password) are not passed on at all.

A pool timeout is told apart by its cause: the pool raises :class:`ServerUnreachable` when its
latest connection attempt had failed (the server is down), a plain ``PoolTimeout`` when every
connection was simply busy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg import errors as pg

from agency_data.dsn import redact_dsn
from agency_data.errors import (
    AgencyDataError,
    BackendUnavailable,
    Conflict,
    NotFound,
    PermissionDenied,
    PoolTimeout,
    QueryError,
    QueryTimeout,
    SerializationFailure,
    StorageFull,
    ValidationError,
)

__all__ = [
    "ServerUnreachable",
    "connect_error_text",
    "refused_a_row",
    "to_agency_error",
    "translate_errors",
]

_BACKEND = "postgresql"
_OUR_CONSTRAINT = re.compile(
    r"^(?:agents|tasks|embeddings)_(?P<column>[a-z_]+?)"
    r"_(?:valid|not_blank|object|range|not_negative|transition|fkey)$"
)
# libpq's messages about a connection string it cannot parse: they quote the string or a
# piece of it (say, the part of a password around a bad percent-escape), which no redaction
# can recognise.
_CONNINFO_PARSE_ERROR = re.compile(
    r"connection info string|percent-encoded|invalid connection option|in URI|URI query"
    r"|unexpected spaces found|invalid URI"
)


class ServerUnreachable(psycopg_pool.PoolTimeout):
    """A pool checkout timed out while the pool's latest connection attempt had failed.

    Raised by the library's pool in place of ``PoolTimeout``: waiting longer or a bigger pool
    would not help, the server is down or refusing connections. ``connect_error`` is that
    attempt's exception (also the ``__cause__``).
    """

    def __init__(self, message: str, connect_error: Exception) -> None:
        super().__init__(message)
        self.connect_error = connect_error


@contextmanager
def translate_errors(context: str = "") -> Iterator[None]:
    """Re-raise psycopg and pool errors raised inside the block as agency-data errors."""
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests) as exc:
        raise to_agency_error(exc, context) from exc


def to_agency_error(exc: Exception, context: str = "") -> AgencyDataError:
    """The most specific agency-data error for a driver exception."""
    prefix = f"{context}: " if context else ""
    if isinstance(exc, ServerUnreachable):
        return BackendUnavailable(
            f"{prefix}PostgreSQL is unreachable: no connection could be made in time, and the "
            f"pool's latest connection attempt failed: {connect_error_text(exc.connect_error)}. "
            "Check that the server is running and that postgresql.dsn points at it",
            backend=_BACKEND,
        )
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return PoolTimeout(
            f"{prefix}no PostgreSQL connection became free in time ({_text(exc)}); raise "
            "postgresql.pool_max_size or pool_timeout, or hold connections for less time",
            backend=_BACKEND,
        )
    if isinstance(exc, psycopg_pool.TooManyRequests):
        return PoolTimeout(
            f"{prefix}too many requests are waiting for a PostgreSQL connection "
            f"({_text(exc)}); raise postgresql.max_waiting or reduce concurrency",
            backend=_BACKEND,
        )
    if not isinstance(exc, psycopg.Error):
        return AgencyDataError(f"{prefix}{_text(exc)}")

    sqlstate = exc.sqlstate
    diag = exc.diag
    detail = redact_dsn(diag.message_primary or "") or _text(exc)
    if diag.message_detail:
        detail = f"{detail} ({redact_dsn(diag.message_detail)})"
    field = diag.column_name or _constraint_field(diag.constraint_name)

    if isinstance(exc, pg.QueryCanceled):
        return QueryTimeout(
            f"{prefix}the statement was cancelled after running past its timeout; narrow the "
            "query, add an index, or raise the timeout",
            sqlstate=sqlstate,
        )
    if isinstance(exc, pg.DiskFull):
        # Class 53's siblings (out of memory, too many connections, configuration limits) are
        # not about storage and stay plain QueryErrors.
        return StorageFull(
            f"{prefix}the database server ran out of disk space, so the statement failed and "
            f"wrote nothing (inside a transaction, the whole transaction was rolled back): "
            f"{detail}. Free space on the volume that holds PostgreSQL's data directory "
            "(tables, WAL, temporary files), then retry",
            sqlstate=sqlstate,
        )
    if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected):
        return SerializationFailure(
            f"{prefix}the transaction conflicted with a concurrent one: {detail}",
            sqlstate=sqlstate,
        )
    if isinstance(exc, pg.UniqueViolation | pg.ExclusionViolation):
        return Conflict(f"{prefix}{detail}", field=field)
    if isinstance(exc, pg.ForeignKeyViolation):
        return NotFound(f"{prefix}a referenced record does not exist: {detail}", entity=field)
    if isinstance(exc, pg.IntegrityError | pg.DataError):
        where = f" ({field})" if field else ""
        return ValidationError(f"{prefix}invalid value{where}: {detail}", field=field)
    if isinstance(exc, pg.OperationalError | pg.InterfaceError) and sqlstate is None:
        return BackendUnavailable(
            f"{prefix}PostgreSQL is unreachable: {_text(exc)}", backend=_BACKEND
        )
    if sqlstate is not None and sqlstate.startswith(("08", "57P")):
        # Connection exceptions and admin shutdown / crash: the server went away mid-call.
        return BackendUnavailable(f"{prefix}PostgreSQL connection lost: {detail}", backend=_BACKEND)
    if isinstance(exc, pg.InsufficientPrivilege):
        return PermissionDenied(
            f"{prefix}{detail}; the connection's role lacks this privilege. The pool's role may "
            "only read and write the rows of its tenant (row-level security); DDL and "
            "collection administration go through dl.admin (the owner role), and server files "
            "and programs are a superuser's",
            sqlstate=sqlstate,
        )
    return QueryError(f"{prefix}{detail}", sqlstate=sqlstate)


def refused_a_row(exc: Exception) -> bool:
    """Whether ``exc`` is the server refusing a row's values (a unique key, a reference, a
    check): the statement wrote nothing, and its rows written one by one would fail only there.
    """
    return isinstance(exc, Conflict | NotFound | ValidationError)


def connect_error_text(exc: BaseException) -> str:
    """Why a connection attempt failed, safe to show: redacted, one line, never empty."""
    return " ".join(_text(exc).split()) or type(exc).__name__


def _text(exc: BaseException) -> str:
    # The driver's message, safe to show: redacted, or withheld when libpq is quoting a
    # connection string it could not parse.
    text = str(exc).strip()
    if isinstance(exc, psycopg.Error) and _CONNINFO_PARSE_ERROR.search(text):
        return (
            "the connection string is malformed (libpq's message is withheld because it may "
            "quote the password); check postgresql.dsn and postgresql.admin_dsn"
        )
    return redact_dsn(text)


def _constraint_field(constraint: str | None) -> str | None:
    # Our constraints are named <table>_<column>_<rule>; other schemas keep their own names.
    if constraint is None:
        return None
    match = _OUR_CONSTRAINT.match(constraint)
    return match["column"] if match else constraint
