"""The one place where redis-py's errors become agency-data's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as rx

from agency_data.errors import AgencyDataError, BackendUnavailable, QueryError

__all__ = ["to_agency_error", "translate_errors"]

_BACKEND = "redis"


@contextmanager
def translate_errors(context: str = "") -> Iterator[None]:
    """Re-raise redis-py errors raised inside the block as agency-data errors."""
    try:
        yield
    except rx.RedisError as exc:
        raise to_agency_error(exc, context) from exc


def to_agency_error(exc: rx.RedisError, context: str = "") -> AgencyDataError:
    """The most specific agency-data error for a redis-py exception."""
    prefix = f"{context}: " if context else ""
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.BusyLoadingError):
        return BackendUnavailable(f"{prefix}Redis is unreachable: {exc}", backend=_BACKEND)
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return BackendUnavailable(
            f"{prefix}Redis refused our credentials: {exc}; check redis.password",
            backend=_BACKEND,
        )
    return QueryError(f"{prefix}Redis rejected the command: {exc}")
