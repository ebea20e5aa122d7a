"""The exceptions agency-data raises: one tree, rooted in :class:`AgencyDataError`.

```
AgencyDataError
 +-- ConfigError              a setting is missing or invalid (names the field)
 +-- EmbeddedServerError      the embedded PostgreSQL or Valkey server could not start or stop
 +-- BackendUnavailable       a server cannot be reached, or the pool had no connection in time
 |    +-- PoolTimeout         no connection was free within the configured pool timeout
 +-- QueryError               PostgreSQL rejected a statement (carries sqlstate)
 |    +-- QueryTimeout        the statement ran past its timeout and was cancelled
 |    +-- SerializationFailure  a serializable transaction conflicted (40001, 40P01)
 |    +-- PermissionDenied    the role lacks the privilege (42501): tenancy and least privilege
 |    +-- StorageFull         the server's disk is full (53100); the statement wrote nothing
 +-- NotFound                 a record does not exist (or a reference points nowhere)
 +-- Conflict                 a unique key or an expected version did not hold
 |    +-- LeaseLost           a worker's lease on a task ran out and the task moved on
 |    +-- TaskCancelled       the task a worker holds was cancelled
 |    +-- ChangesLost         a change-feed cursor points before what the feed still keeps
 +-- ValidationError          bad input, caught before (or by) the database
 |    +-- PayloadTooLarge     a request's body is larger than the service accepts
 +-- DecryptionError          an encrypted value's key is gone (shredded) or the value was moved
 +-- EmbedderError            a collection's text embedder failed, or returned unusable vectors
 +-- LockNotAcquired          a lock could not be taken within its wait
 +-- LockNotOwned             a lock was released or extended after it was lost
 +-- UsageError               a call the API cannot serve where it was made (a sync call
 |                            from inside the event loop it would have to wait on)
 +-- AuthenticationFailed     the service got no API key or token, or one it does not accept
 +-- RateLimited              a key made more requests than its rate limit allows
 +-- RequestTimeout           the service ended a request that ran past its time limit
 +-- MigrationError           a migration could not be planned, applied or rolled back
      +-- MigrationChecksumMismatch  an applied migration's file has changed since
      +-- BackupError         the backup before migrating failed
```

Driver errors are translated in one place per backend (:mod:`agency_data.postgres.errors`,
:mod:`agency_data.redis.errors`), always chained with ``from`` so the cause stays visible.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "AgencyDataError",
    "AuthenticationFailed",
    "BackendUnavailable",
    "BackupError",
    "ChangesLost",
    "ConfigError",
    "Conflict",
    "DecryptionError",
    "EmbeddedServerError",
    "EmbedderError",
    "LeaseLost",
    "LockNotAcquired",
    "LockNotOwned",
    "MigrationChecksumMismatch",
    "MigrationError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PoolTimeout",
    "QueryError",
    "QueryTimeout",
    "RateLimited",
    "RequestTimeout",
    "SerializationFailure",
    "StorageFull",
    "TaskCancelled",
    "UsageError",
    "ValidationError",
    "clear_message_mask",
    "set_message_mask",
]


class AgencyDataError(Exception):
    """Root of every error agency-data raises."""

    def __str__(self) -> str:
        text = super().__str__()
        # Masking (agency_data.security.masking), when configured: what a message quotes of
        # the caller's data (an email, a key) is hidden wherever the error is shown.
        mask = _message_mask
        return text if mask is None else mask(text)


_message_mask: Callable[[str], str] | None = None


def set_message_mask(mask: Callable[[str], str]) -> None:
    """Mask every error's text with ``mask`` from now on (see :mod:`agency_data.security.masking`)."""
    global _message_mask
    _message_mask = mask


def clear_message_mask(mask: Callable[[str], str]) -> None:
    """Stop masking error texts, if ``mask`` is the mask in use."""
    global _message_mask
    if _message_mask == mask:
        _message_mask = None


class DecryptionError(AgencyDataError):
    """An encrypted value cannot be read: its data key was destroyed (crypto-shredded) or is
    not in this deployment's key store, or the value was altered or moved to another row or
    tenant (its authentication failed)."""


class EmbedderError(AgencyDataError):
    """A collection's text embedder raised (after its retries, if the error was transient), or
    returned something other than one finite vector of the collection's dimension per text.
    Nothing was stored; the embedder's own exception is the ``__cause__``."""


class ConfigError(AgencyDataError):
    """A configuration value is missing or invalid."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EmbeddedServerError(AgencyDataError):
    """The embedded PostgreSQL or Valkey server could not be started or stopped."""

    def __init__(self, message: str, *, server: str, log_file: str | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.log_file = log_file


class BackendUnavailable(AgencyDataError):
    """A backend (``"postgresql"`` or ``"redis"``) cannot be reached right now."""

    def __init__(self, message: str, *, backend: str) -> None:
        super().__init__(message)
        self.backend = backend


class PoolTimeout(BackendUnavailable):
    """No pooled connection became free within the configured wait."""


class QueryError(AgencyDataError):
    """PostgreSQL rejected a statement."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class QueryTimeout(QueryError):
    """A statement ran past its timeout and was cancelled; the connection stays usable."""


class SerializationFailure(QueryError):
    """A transaction lost a serialization conflict or deadlock, even after retries."""


class PermissionDenied(QueryError):
    """The database role lacks the privilege: DDL from a tenant's view, server files, programs."""


class StorageFull(QueryError):
    """The database server's disk is full (53100): the statement failed and wrote nothing.

    Inside a transaction the whole transaction is rolled back. Free space on the volume that
    holds PostgreSQL's data directory (tables, WAL, temporary files), then retry.
    """


class NotFound(AgencyDataError):
    """A record does not exist, or a reference points to one that does not."""

    def __init__(self, message: str, *, entity: str | None = None, key: object = None) -> None:
        super().__init__(message)
        self.entity = entity
        self.key = key


class Conflict(AgencyDataError):
    """A uniqueness rule or an expected version did not hold."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LeaseLost(Conflict):
    """A worker acted on a task whose lease it no longer holds: nothing was changed.

    The lease ran out (the worker stopped heartbeating) and the task was rescued, given to
    another worker, or finished by someone else. ``status`` is the task's status now.
    """

    def __init__(self, message: str, *, task_id: object, status: str | None = None) -> None:
        super().__init__(message, field="lease_token")
        self.task_id = task_id
        self.status = status


class TaskCancelled(Conflict):
    """The task a worker holds was cancelled: stop working on it (nothing was changed)."""

    def __init__(self, message: str, *, task_id: object, reason: str | None = None) -> None:
        super().__init__(message, field="status")
        self.task_id = task_id
        self.reason = reason


class ChangesLost(Conflict):
    """The change feed no longer keeps every change after a cursor: some were pruned (older
    than ``changes.keep``, or past ``changes.max_rows`` while a consumer lagged). Reading on
    would skip them silently, so the feed refuses; start again from ``since="now"`` (after
    reloading what the changes described), and drop a named consumer with
    ``dl.changes.drop(name)``."""

    def __init__(self, message: str, *, cursor: str) -> None:
        super().__init__(message, field="since")
        self.cursor = cursor


class ValidationError(AgencyDataError):
    """Input was rejected: wrong shape, out of range, or refused by a constraint."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(ValidationError):
    """A request's body is larger than ``service.max_body_bytes``; nothing was read into it."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, field="body")
        self.limit = limit


class AuthenticationFailed(AgencyDataError):
    """The service got no API key or bearer token, or one that is unknown, revoked, expired or
    malformed. Which of these it was is not told, so a guesser learns nothing."""


class RateLimited(AgencyDataError):
    """An API key made more requests than ``service.rate_limit`` allows; retry after
    ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(AgencyDataError):
    """The service ended a request that ran past ``service.request_timeout``; what it had
    written in a transaction was rolled back."""

    def __init__(self, message: str, *, limit: float) -> None:
        super().__init__(message)
        self.limit = limit


class LockNotAcquired(AgencyDataError):
    """A lock was not granted within its wait."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class LockNotOwned(AgencyDataError):
    """A lock was released or extended by a holder that no longer owns it."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class UsageError(AgencyDataError):
    """The API was called where it cannot serve the call: a synchronous method called on the
    thread of the event loop it would wait on (it would wait forever), or a closed front end."""


class MigrationError(AgencyDataError):
    """A migration could not be planned, applied or rolled back."""

    def __init__(self, message: str, *, migration: str | None = None) -> None:
        super().__init__(message)
        self.migration = migration


class MigrationChecksumMismatch(MigrationError):
    """An applied migration's file differs from what was applied."""


class BackupError(MigrationError):
    """The backup taken before migrating failed, so nothing was migrated."""
