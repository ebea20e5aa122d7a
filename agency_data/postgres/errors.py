"""The one place where psycopg's errors become agency-data's.

Use :func:`translate_errors` around any driver call (a plain ``with``, also in async code)::

    with translate_errors("creating an agent"):
        await conn.execute(query, params)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg import errors as pg

from agency_data.errors import (
    AgencyDataError,
    BackendUnavailable,
    Conflict,
    NotFound,
    PoolTimeout,
    QueryError,
    QueryTimeout,
    SerializationFailure,
    ValidationError,
)

__all__ = ["to_agency_error", "translate_errors"]

_BACKEND = "postgresql"
_OUR_CONSTRAINT = re.compile(
    r"^(?:agents|tasks|embeddings)_(?P<column>[a-z_]+?)"
    r"_(?:valid|not_blank|object|range|not_negative|transition|fkey)$"
)


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
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return PoolTimeout(
            f"{prefix}no PostgreSQL connection became free in time ({exc}); raise "
            "postgresql.pool_max_size or pool_timeout, or hold connections for less time",
            backend=_BACKEND,
        )
    if isinstance(exc, psycopg_pool.TooManyRequests):
        return PoolTimeout(
            f"{prefix}too many requests are waiting for a PostgreSQL connection ({exc}); "
            "raise postgresql.max_waiting or reduce concurrency",
            backend=_BACKEND,
        )
    if not isinstance(exc, psycopg.Error):
        return AgencyDataError(f"{prefix}{exc}")

    sqlstate = exc.sqlstate
    diag = exc.diag
    detail = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        detail = f"{detail} ({diag.message_detail})"
    field = diag.column_name or _constraint_field(diag.constraint_name)

    if isinstance(exc, pg.QueryCanceled):
        return QueryTimeout(
            f"{prefix}the statement was cancelled after running past its timeout; narrow the "
            "query, add an index, or raise the timeout",
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
            f"{prefix}PostgreSQL is unreachable: {str(exc).strip()}", backend=_BACKEND
        )
    if sqlstate is not None and sqlstate.startswith(("08", "57P")):
        # Connection exceptions and admin shutdown / crash: the server went away mid-call.
        return BackendUnavailable(f"{prefix}PostgreSQL connection lost: {detail}", backend=_BACKEND)
    return QueryError(f"{prefix}{detail}", sqlstate=sqlstate)


def _constraint_field(constraint: str | None) -> str | None:
    # Our constraints are named <table>_<column>_<rule>; other schemas keep their own names.
    if constraint is None:
        return None
    match = _OUR_CONSTRAINT.match(constraint)
    return match["column"] if match else constraint
