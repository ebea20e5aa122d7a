"""Records the layer writes itself, where no table trigger sees the act.

Triggers record every change to an audited table (migration 0010). What they cannot see is
recorded here, through ``agency_data_audit_append``, into the same chains:

- the layer's own actions (collection and index DDL, auditing switched on or off, migrations)
  into the system trail, :data:`SYSTEM_TRAIL`, in the action's transaction where it has one;
- session writes, which live in Redis, into the tenant's trail before the write is sent
  (write-ahead: no write goes unrecorded; a write that then fails leaves a record of the
  attempt), with an HMAC of the data under ``audit.digest_key``, or only its keys and size;
- reads of the tables named by ``audit.reads``, one record per call naming the rows returned,
  in a transaction of their own (a read happened even if the caller's transaction rolls back).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = ["SYSTEM_TRAIL", "AuditNotes", "digest"]

# Not a valid tenant id (those are letters, digits and _ . : -): no tenant's trail is it.
SYSTEM_TRAIL = "(system)"

_APPEND = "SELECT agency_data_audit_append(%s, %s, %s, %s, %s::jsonb)"
# A read names at most this many rows; the count says how many there were.
_READ_IDS = 100


def digest(value: Any, key: bytes) -> str:
    """HMAC-SHA256 (hex) under ``key`` of a JSON value in a fixed form (sorted keys)."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _summary(data: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    # Without a key a digest of small data could be reversed by trying likely values: the
    # record then says only which keys the data had and how large it was.
    if key is not None:
        return {"after": digest(data, key)}
    return {"keys": sorted(data), "bytes": len(orjson.dumps(data))}


class AuditNotes:
    """What this DataLayer records beyond its triggers, and where (``audit`` config)."""

    def __init__(
        self,
        primary: Database | None = None,
        *,
        admin: bool = False,
        sessions: bool = False,
        reads: Sequence[str] = (),
        digest_key: bytes | None = None,
    ) -> None:
        # A view of the primary with no transaction of the caller's: reads and session
        # writes are recorded in transactions of their own.
        self._primary = primary
        self.admin = admin
        self.sessions = sessions
        self.reads = frozenset(reads)
        self._digest_key = digest_key
        self._views: dict[str, Database] = {}

    @classmethod
    def off(cls) -> AuditNotes:
        """Records nothing (before connect, and for layers without auditing)."""
        return cls()

    async def action(
        self,
        db: Database,
        operation: str,
        entity_type: str,
        entity_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an admin action in the system trail, in ``db``'s current transaction."""
        if self.admin:
            await db.for_tenant(SYSTEM_TRAIL).execute(
                _APPEND, [SYSTEM_TRAIL, operation, entity_type, entity_id, _json(detail)]
            )

    async def session_write(
        self, tenant: str, operation: str, session_id: str, data: dict[str, Any] | None
    ) -> None:
        """Record a session write (never ``data``'s values) before it is sent."""
        if self.sessions and self._primary is not None:
            detail = {} if data is None else _summary(data, self._digest_key)
            await self._independent(tenant).execute(
                _APPEND, [tenant, operation, "session", session_id, _json(detail)]
            )

    def reads_of(self, table: str) -> bool:
        """Whether reads of ``table`` are recorded."""
        return table in self.reads

    async def read(self, tenant: str, table: str, ids: Sequence[Any]) -> None:
        """Record a read of ``table`` (the caller checked :meth:`reads_of`) that returned the
        rows ``ids``."""
        if self._primary is None:
            return
        named = [str(i) for i in ids[:_READ_IDS]]
        detail: dict[str, Any] = {"rows": len(ids), "ids": named}
        entity = named[0] if len(ids) == 1 else None
        await self._independent(tenant).execute(
            _APPEND, [tenant, "read", table, entity, _json(detail)]
        )

    def _independent(self, tenant: str) -> Database:
        view = self._views.get(tenant)
        if view is None:
            assert self._primary is not None
            view = self._views[tenant] = self._primary.outside_transactions(tenant)
        return view


def _json(detail: dict[str, Any] | None) -> str:
    return orjson.dumps(detail or {}).decode()
