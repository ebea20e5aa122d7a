"""Reading and checking one tenant's audit trail.

Each record carries the hash of the one before it (``prev_hash``) and its own hash over the
previous hash and its fields (``agency_data_audit_hash``), numbered from 1 without gaps. A
record edited after the fact no longer matches its hash; a record removed leaves a gap and a
``prev_hash`` that matches nothing; both show at that record. The check runs in PostgreSQL,
which computed the hashes, in one pass over the tenant's records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agency_data.errors import PermissionDenied, ValidationError
from agency_data.inputs import check_datetime, check_int, check_text

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = ["Anchor", "AuditRecord", "AuditTrail", "ChainReport", "anchors", "chains"]

_HEX = re.compile(r"[0-9a-fA-F]{64}")

# Committed records not yet chained are chained first (for this tenant), so that a check or a
# listing right after a write sees it.
_SEAL = "SELECT agency_data_audit_seal(%s)"

_CHECK = """
SELECT count(checked.seq) AS records,
       coalesce(
           min(checked.seq) FILTER (WHERE problem IS NOT NULL),
           CASE WHEN coalesce(max(checked.seq), head.pruned) < head.length
               THEN coalesce(max(checked.seq), head.pruned) + 1 END
       ) AS broken_at,
       coalesce(
           (array_agg(problem ORDER BY checked.seq) FILTER (WHERE problem IS NOT NULL))[1],
           CASE WHEN coalesce(max(checked.seq), head.pruned) < head.length
               THEN 'it is missing: the chain has ' || head.length || ' records' END
       ) AS problem,
       max(checked.seq) AS head_seq,
       (array_agg(checked.hash ORDER BY checked.seq DESC))[1] AS head_hash,
       (SELECT count(*) FROM audit_pending WHERE tenant_id = %(tenant)s) AS pending
FROM (
    SELECT coalesce(h.seq, 0) AS length, coalesce(h.pruned_seq, 0) AS pruned,
           coalesce(h.pruned_hash, '\\x'::bytea) AS pruned_hash
    FROM (SELECT 1) one LEFT JOIN audit_heads h ON h.tenant_id = %(tenant)s
) head
LEFT JOIN LATERAL (
    SELECT seq, hash,
           CASE
               WHEN seq <> head.pruned + row_number() OVER w
                   THEN 'a record before it is missing (expected seq '
                        || head.pruned + row_number() OVER w || ')'
               WHEN seq > head.length
                   THEN 'it lies past the chain''s head (' || head.length || ' records): '
                        || 'added behind the trail''s back'
               WHEN prev_hash <> coalesce(lag(hash) OVER w, head.pruned_hash)
                   THEN 'its prev_hash is not the hash of the record before it'
               WHEN hash <> agency_data_audit_hash(prev_hash, a)
                   THEN 'its fields no longer match its hash (edited)'
           END AS problem
    FROM audit_log a
    WHERE tenant_id = %(tenant)s
    WINDOW w AS (ORDER BY seq)
) checked ON true
GROUP BY head.length, head.pruned, head.pruned_hash
"""


class Anchor(BaseModel):
    """Where a tenant's chain ended when it was taken: kept elsewhere (a log, a ticket, a
    metric), it proves later that no record up to ``seq`` was rewritten, even by someone
    who recomputed every hash after an edit."""

    tenant: str
    seq: int
    hash: str

    @classmethod
    def parse(cls, tenant: str, text: str) -> Anchor:
        """An anchor from its printed form, ``SEQ:HASH``."""
        seq, sep, digest = text.partition(":")
        if not sep or not seq.isdigit() or not _HEX.fullmatch(digest):
            raise ValidationError(
                f"anchor {text!r} must be SEQ:HASH, a record number and its 64-digit hex hash "
                "(as audit verify prints it)",
                field="anchor",
            )
        return cls(tenant=tenant, seq=int(seq), hash=digest.lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


class ChainReport(BaseModel):
    """What walking a tenant's chain found."""

    tenant: str
    records: int
    ok: bool
    broken_at: int | None = None
    problem: str | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    # Committed records a sealer has not chained yet (another is at it right now).
    pending: int = 0


class AuditRecord(BaseModel):
    """One record of the trail."""

    seq: int
    at: datetime
    actor: str
    operation: str
    entity_type: str
    entity_id: str | None
    detail: dict[str, Any]


class AuditTrail:
    """The audit trail of one tenant (``dl.tenant(t).audit``)."""

    def __init__(self, db: Database, tenant: str) -> None:
        self._db = db
        self.tenant = tenant

    async def verify(self, anchors: Sequence[Anchor] = ()) -> ChainReport:
        """Walk the chain; the first broken record, if any, and the head (an anchor).

        Each of ``anchors`` (taken earlier, kept elsewhere) must still match its record: a
        chain rewritten with fresh hashes verifies on its own, but not against an anchor.
        """
        if (
            not isinstance(anchors, Sequence)
            or isinstance(anchors, str | bytes)
            or not all(isinstance(a, Anchor) for a in anchors)
        ):
            raise ValidationError(
                "anchors must be a list of Anchor (Anchor.parse(tenant, 'SEQ:HASH'))",
                field="anchors",
            )
        row = await self._sealed(_CHECK, {"tenant": self.tenant})
        head = row["head_hash"]
        report = ChainReport(
            tenant=self.tenant,
            records=int(row["records"]),
            ok=row["broken_at"] is None,
            broken_at=row["broken_at"],
            problem=row["problem"],
            head_seq=row["head_seq"],
            head_hash=bytes(head).hex() if head is not None else None,
            pending=int(row["pending"]),
        )
        for anchor in sorted(anchors, key=lambda a: a.seq):
            if anchor.tenant != self.tenant:
                raise ValidationError(
                    f"an anchor of tenant {anchor.tenant!r} cannot check {self.tenant!r}'s chain",
                    field="anchors",
                )
            found = await self._db.fetch_value(
                "SELECT hash FROM audit_log WHERE tenant_id = %s AND seq = %s",
                [self.tenant, anchor.seq],
            )
            if found is None or bytes(found).hex() != anchor.hash:
                problem = (
                    "it is missing, and the anchor names it"
                    if found is None
                    else "its hash is not the anchor's: the chain was rewritten up to here"
                )
                if report.broken_at is None or anchor.seq < report.broken_at:
                    report = report.model_copy(
                        update={"ok": False, "broken_at": anchor.seq, "problem": problem}
                    )
                break
        return report

    async def show(
        self,
        *,
        actor: str | None = None,
        entity_type: str | None = None,
        entity_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest records first, filtered by actor, entity and time."""
        check_int(limit, "limit", 1, 10_000)
        where: list[str] = ["tenant_id = %s"]
        params: list[Any] = [self.tenant]
        for column, value in (
            ("actor", actor),
            ("entity_type", entity_type),
            ("entity_id", entity_id),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(check_text(value, column, max_length=200))
        if since is not None:
            where.append("at >= %s")
            params.append(check_datetime(since, "since"))
        if until is not None:
            where.append("at < %s")
            params.append(check_datetime(until, "until"))
        query = (
            "SELECT seq, at, actor, operation, entity_type, entity_id, detail FROM audit_log "
            "WHERE " + " AND ".join(where) + " ORDER BY seq DESC LIMIT %s"
        )
        async with self._db.transaction():
            await self._db.execute(_SEAL, [self.tenant])
            return await self._db.fetch(query, [*params, limit], model=AuditRecord)

    async def _sealed(self, query: str, params: dict[str, Any]) -> dict[str, Any]:
        async with self._db.transaction():
            await self._db.execute(_SEAL, [self.tenant])
            row = await self._db.fetch_one(query, params)
        assert row is not None
        return row


async def anchors(db: Database) -> list[Anchor]:
    """Every chain's head, by tenant, once every committed record is chained (as the owner
    role: see :func:`chains`). A chain whose head record is missing has no anchor to give
    (its check names the loss)."""
    await db.execute("SELECT agency_data_audit_seal()")
    rows = await db.fetch(
        "SELECT h.tenant_id, h.seq, a.hash FROM audit_heads h "
        "JOIN audit_log a ON a.tenant_id = h.tenant_id AND a.seq = h.seq "
        "ORDER BY h.tenant_id"
    )
    return [
        Anchor(tenant=row["tenant_id"], seq=row["seq"], hash=bytes(row["hash"]).hex())
        for row in rows
    ]


async def chains(db: Database) -> list[str]:
    """Every tenant with an audit chain (the system trail's among them), sorted.

    Only the owner role sees them all (a policy of the trail's tables, or BYPASSRLS); another
    role is refused rather than shown none, which would pass for "nothing to check".
    """
    row = await db.fetch_one(
        "SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(t.tableowner, 'USAGE') AS sees_all "
        "FROM pg_roles r, pg_tables t "
        "WHERE r.rolname = current_user AND t.schemaname = 'public' AND t.tablename = 'audit_log'"
    )
    if row is None or not row["sees_all"]:
        raise PermissionDenied(
            "listing every tenant's audit chain needs the owner role (postgresql.admin_dsn): "
            "this role sees only the tenant it names; check one chain with --tenant"
        )
    rows = await db.fetch(
        "SELECT tenant_id FROM audit_heads UNION SELECT tenant_id FROM audit_log "
        "UNION SELECT tenant_id FROM audit_pending ORDER BY 1"
    )
    return [row["tenant_id"] for row in rows]
