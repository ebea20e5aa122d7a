"""``dl.admin``: administration, as the owner role, apart from any tenant's view.

Collection DDL and index upkeep, the pool role's check, and raw SQL as the owner, which sees
every tenant's rows when the owner role bypasses row-level security (as the embedded server's
and ``agency-data roles setup``'s do). Keep it away from code that serves one tenant: that code
gets ``dl.tenant(t)``.
"""

from __future__ import annotations

from agency_data.audit import SYSTEM_TRAIL, Anchor, AuditTrail, ChainReport, anchors, chains
from agency_data.config import AUDIT_DETAILS, AUDITABLE
from agency_data.dsn import database_of
from agency_data.inputs import check_bool, check_choice
from agency_data.observability.statements import StatementStats, top_statements
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors
from agency_data.scope import QueryMethods
from agency_data.security.api_keys import ApiKeys
from agency_data.security.rekey import KeyAdmin
from agency_data.security.roles import role_warnings
from agency_data.vectors.admin import CollectionAdmin
from agency_data.vectors.catalog import Catalog

__all__ = ["Admin"]


class Admin(QueryMethods, CollectionAdmin):
    """What the owner role does: collections, indexes, checks; raw SQL across tenants.

    Usage::

        await dl.admin.create_collection("memories", dimension=768, storage="halfvec")
        await dl.admin.create_index("memories", "hnsw")
        print(await dl.admin.list_collections())
        print(await dl.admin.role_warnings())     # [] when the pool's role is least-privilege
    """

    def __init__(
        self,
        admin: Database,
        app: Database,
        catalog: Catalog,
        *,
        keys: KeyAdmin,
        statements: tuple[str, str] | None = None,
    ) -> None:
        CollectionAdmin.__init__(self, catalog, admin)
        self._app = app
        self.keys = keys
        """The tenants' data keys: rotate the KEK, re-encrypt, retire, crypto-shred."""
        self.api_keys = ApiKeys(admin, app)
        """The service's API keys: make, list, revoke and check them."""
        # (conninfo, database) where pg_stat_statements is read; see top_statements.
        self._statements = statements

    def _database(self) -> Database:
        return self._admin

    async def top_statements(self, limit: int = 20, order: str = "total") -> list[StatementStats]:
        """The costliest statements of the layer's database, from ``pg_stat_statements``.

        ``order``: ``total`` time, ``mean`` time, ``calls`` or ``rows``. See
        :mod:`agency_data.observability.statements` for what the server needs.
        """
        if self._statements is None:
            conninfo, database = self._admin.conninfo, database_of(self._admin.conninfo)
        else:
            conninfo, database = self._statements
        return await top_statements(conninfo, database, limit=limit, order=order)

    async def audit(self, table: str, enabled: bool = True, detail: str = "digest") -> list[str]:
        """Record every change to ``table`` in the audit trail (or stop); the tables switched.

        ``table`` is one of :data:`~agency_data.config.AUDITABLE`; ``embeddings`` means every
        collection's table (and, with ``audit.tables`` naming it, those made later).
        ``detail``: what a record keeps of the row, ``digest`` (SHA-256 of the row before and
        after), ``fields`` (and the names of the changed columns) or ``values`` (the row
        itself, before and after).
        """
        check_choice(table, "table", AUDITABLE)
        check_bool(enabled, "enabled")
        check_choice(detail, "detail", AUDIT_DETAILS)
        if table == "embeddings":
            rows = await self._admin.fetch(
                "SELECT table_name FROM embedding_collections ORDER BY table_name"
            )
            tables = [row["table_name"] for row in rows]
        else:
            tables = [table]
        async with self._admin.transaction():
            for name in tables:
                changed = await self._admin.fetch_value(
                    "SELECT agency_data_audit(%s::regclass, %s, %s)", [name, enabled, detail]
                )
                if changed:
                    await self._admin.notes.action(
                        self._admin,
                        "audit.on" if enabled else "audit.off",
                        "table",
                        name,
                        {"detail": detail} if enabled else None,
                    )
        return tables

    @property
    def system_audit(self) -> AuditTrail:
        """The system trail: the layer's own actions (collection and index DDL, auditing
        switched, migrations), chained apart from every tenant's."""
        return AuditTrail(self._admin.for_tenant(SYSTEM_TRAIL), SYSTEM_TRAIL)

    async def audit_anchors(self) -> list[Anchor]:
        """Every audit chain's head now (what ``audit.anchor_interval`` logs)."""
        return await anchors(self._admin)

    async def verify_audit(self) -> list[ChainReport]:
        """Walk every audit chain (the system trail's and each tenant's), in tenant order.

        Only the owner role sees every chain (:class:`PermissionDenied` for another, whose
        view would be empty); check one tenant's with ``dl.tenant(t).audit.verify()``.
        """
        reports = []
        for tenant in await chains(self._admin):
            trail = AuditTrail(self._admin.for_tenant(tenant), tenant)
            reports.append(await trail.verify())
        return reports

    async def role_warnings(self) -> list[str]:
        """What is unsafe about the pool's role (superuser, BYPASSRLS, owns tables); [] if fine."""
        async with self._app.connection() as conn:
            with translate_errors("checking the pool's role"):
                return await role_warnings(conn)
