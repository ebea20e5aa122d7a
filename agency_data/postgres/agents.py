"""Agents: registration, lookup, partial update with optimistic concurrency, filtered listing.

SQL is built by the pure ``_..._sql`` functions (``(query, params)`` pairs); :class:`AgentStore`
only validates input and runs them.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, LiteralString, NamedTuple
from uuid import UUID

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from agency_data.batching import GroupCommit, PointReads
from agency_data.cache.store import Cache
from agency_data.errors import Conflict, NotFound, ValidationError
from agency_data.inputs import (
    as_choice,
    as_items,
    as_list,
    as_uuid,
    check_bool,
    check_datetime,
    check_int,
    check_mapping,
    check_text,
    encode_json,
    like_pattern,
    validated,
)
from agency_data.models import Agent, AgentStatus, Page
from agency_data.observability import observed
from agency_data.postgres._paging import count_where, keyset_page
from agency_data.postgres.database import Database, Params, Query
from agency_data.postgres.errors import refused_a_row

__all__ = ["AgentStore"]

_COLUMNS: LiteralString = (
    "id, tenant_id, name, type, capabilities, status, version, created_at, updated_at"
)
_UNSET: Any = object()
_MAX_INT = 2**31 - 1
_MAX_NAME = 255


class _AgentFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=255, pattern=r"\S")
    type: str = Field(min_length=1, max_length=100, pattern=r"\S")
    capabilities: dict[str, Any] = Field(default_factory=dict)


class _AgentChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, min_length=1, max_length=255, pattern=r"\S")
    type: str | None = Field(None, min_length=1, max_length=100, pattern=r"\S")
    capabilities: dict[str, Any] | None = None


# What Cache.peek answers when L1 does not hold the agent.
_ABSENT = object()


class AgentStore:
    """The agents of one tenant."""

    def __init__(
        self, db: Database, tenant: str, cache: Cache | None = None, cache_ttl: int = 0
    ) -> None:
        self._db = db
        self._telemetry = db.telemetry
        self.tenant = tenant
        self._cache = cache
        self._cache_ttl = cache_ttl
        # Whether reads are recorded in the audit trail (audit.reads names agents).
        self._reads_audited = db.notes.reads_of("agents")
        self._reads: PointReads[UUID, Agent] = PointReads(self._load_one, self._load_many)
        # Uncached reads that a read replica may serve, gathered apart from the primary's.
        self._replica_reads: PointReads[UUID, Agent] = PointReads(self._read_one, self._read_many)
        self._creates: GroupCommit[_NewAgent, Agent] = GroupCommit(
            self._insert_one, self._insert_group, retry_alone=refused_a_row
        )

    @observed("agents.create")
    async def create(
        self,
        name: str,
        type: str,
        capabilities: dict[str, Any] | None = None,
        status: AgentStatus | str = AgentStatus.ACTIVE,
    ) -> Agent:
        """Register an agent and return it."""
        fields = validated(
            _AgentFields,
            {
                "name": name,
                "type": type,
                "capabilities": {} if capabilities is None else capabilities,
            },
        )
        caps = encode_json(fields.capabilities, "capabilities", self._db.config.max_json_bytes)
        new = _NewAgent(fields.name, fields.type, caps, _status(status))
        if self._db.in_transaction:
            return await self._insert_one(new)
        # Concurrent callers' creates are committed together, each answered after the commit.
        return await self._creates.write(new)

    async def _insert_one(self, new: _NewAgent) -> Agent:
        row = await self._db.fetch_one(*_insert_sql(self.tenant, new), model=Agent)
        assert row is not None, "INSERT ... RETURNING returns the row"
        return row

    async def _insert_group(self, new: builtins.list[_NewAgent]) -> builtins.list[Agent]:
        ids = [uuid.uuid4() for _ in new]
        made = {
            a.id: a
            for a in await self._db.fetch(*_insert_many_sql(self.tenant, ids, new), model=Agent)
        }
        return [made[i] for i in ids]

    async def aclose(self) -> None:
        """Wait for the reads and creates gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        await self._reads.aclose()
        await self._replica_reads.aclose()
        await self._creates.aclose()

    async def get(
        self, agent_id: UUID | str, *, cached: bool | None = None, consistent: bool = False
    ) -> Agent:
        """The agent with ``agent_id``; :class:`NotFound` if this tenant has none.

        With ``cached`` (default: on when ``cache.record_ttl`` is set), the read goes through
        the cache. Writes through this store invalidate it once their transaction commits, so
        a reader sees a committed change at once, or (if it raced the write, or Redis was
        down when the write committed) within ``record_ttl`` seconds. Reads inside a
        transaction always go to PostgreSQL, and so do the cache's (a replica's older row
        must not be cached). An uncached read may be served by a read replica (see
        :mod:`agency_data.postgres.replicas`); ``consistent`` asks for one that has replayed
        every commit acknowledged so far, or the primary, and skips the cache.
        """
        uid = as_uuid(agent_id, "agent_id")
        if self._reads_audited:
            agent = await self._get_uncounted(uid, cached, consistent)
            await self._db.notes.read(self.tenant, "agents", [agent.id])
            return agent
        return await self._get_uncounted(uid, cached, consistent)

    async def _get_uncounted(self, uid: UUID, cached: bool | None, consistent: bool) -> Agent:
        if consistent is not False:
            check_bool(consistent, "consistent")
            if cached is not None:
                check_bool(cached, "cached")
            return await self._get_consistent(uid)
        use_cache = self._cache_ttl > 0 if cached is None else check_bool(cached, "cached")
        cache = self._cache if use_cache and not self._db.in_transaction else None
        if cache is not None:
            # An L1 hit is answered here, untimed, as the cache's own are: it costs about 3 us,
            # and timing it would add a sixth (it is counted as an L1 hit).
            data = cache.peek(_cache_key(uid), _ABSENT)
            if data is not _ABSENT:
                return Agent.model_validate(data)
        return await self._get(uid, cache)

    @observed("agents.get")
    async def _get(self, uid: UUID, cache: Cache | None) -> Agent:
        if cache is None:
            return await self._load(uid, replica=True)
        ttl = self._cache_ttl or None
        data = await cache.get_or_set(_cache_key(uid), lambda: self._load_json(uid), ttl=ttl)
        return Agent.model_validate(data)

    @observed("agents.get")
    async def _get_consistent(self, uid: UUID) -> Agent:
        row = await self._read_one(uid, consistent=True)
        if row is None:
            raise NotFound(f"agent {uid} does not exist", entity="agent", key=uid)
        return row

    async def _load(self, agent_id: UUID, *, replica: bool = False) -> Agent:
        if self._db.in_transaction:
            # A transaction's reads stay its own: never gathered with other callers'.
            row = await self._load_one(agent_id)
        elif replica and self._db.replicas is not None:
            row = await self._replica_reads.get(agent_id)
        else:
            row = await self._reads.get(agent_id)
        if row is None:
            raise NotFound(f"agent {agent_id} does not exist", entity="agent", key=agent_id)
        return row

    async def _read_one(self, agent_id: UUID, consistent: bool = False) -> Agent | None:
        return await self._db.read(lambda on: self._load_one(agent_id, on), consistent=consistent)

    async def _read_many(self, agent_ids: Sequence[UUID]) -> dict[UUID, Agent]:
        return await self._db.read(lambda on: self._load_many(agent_ids, on))

    async def _load_one(self, agent_id: UUID, db: Database | None = None) -> Agent | None:
        on = self._db if db is None else db
        return await on.fetch_one(*_get_sql(self.tenant, agent_id), model=Agent)

    async def _load_many(
        self, agent_ids: Sequence[UUID], db: Database | None = None
    ) -> dict[UUID, Agent]:
        on = self._db if db is None else db
        rows = await on.fetch(*_get_many_sql(self.tenant, list(agent_ids)), model=Agent)
        return {row.id: row for row in rows}

    async def _load_json(self, agent_id: UUID) -> dict[str, Any]:
        return (await self._load(agent_id)).model_dump(mode="json")

    async def _invalidate(self, agent_id: UUID) -> None:
        if self._cache is None:
            return
        cache = self._cache
        tx = self._db.current_transaction()
        if tx is not None:
            # After the commit only: a rolled-back write must leave the cache alone.
            tx.on_commit(lambda: cache.delete(_cache_key(agent_id)))
        else:
            await cache.delete(_cache_key(agent_id))

    @observed("agents.get_many")
    async def get_many(
        self, agent_ids: Iterable[UUID | str], *, consistent: bool = False
    ) -> builtins.list[Agent]:
        """The agents that exist among ``agent_ids`` (one round trip), in no particular order.

        A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        ids = [
            as_uuid(i, f"agent_ids[{n}]") for n, i in enumerate(as_items(agent_ids, "agent_ids"))
        ]
        if not ids:
            return []
        query = _get_many_sql(self.tenant, ids)
        agents = await self._db.read(
            lambda on: on.fetch(*query, model=Agent), consistent=consistent
        )
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "agents", [a.id for a in agents])
        return agents

    @observed("agents.update")
    async def update(
        self,
        agent_id: UUID | str,
        *,
        name: str = _UNSET,
        type: str = _UNSET,
        capabilities: dict[str, Any] = _UNSET,
        status: AgentStatus | str = _UNSET,
        expected_version: int | None = None,
        expected_updated_at: datetime | None = None,
    ) -> Agent:
        """Change the given fields only.

        With ``expected_version`` (or ``expected_updated_at``, a datetime with a timezone), the
        update applies only if the row still has that version; otherwise :class:`Conflict`, and
        nothing changes.
        """
        uid = as_uuid(agent_id, "agent_id")
        if expected_version is not None:
            check_int(expected_version, "expected_version", 1, _MAX_INT)
        if expected_updated_at is not None:
            check_datetime(expected_updated_at, "expected_updated_at")
        given = {
            key: value
            for key, value in {
                "name": name,
                "type": type,
                "capabilities": capabilities,
                "status": status,
            }.items()
            if value is not _UNSET
        }
        if not given:
            raise ValidationError("update needs at least one field to change", field=None)
        for key, value in given.items():
            if value is None:
                raise ValidationError(f"{key} cannot be None", field=key)
        status_value = _status(given.pop("status")) if "status" in given else None
        changes = validated(_AgentChanges, given)
        values: dict[str, Any] = {key: getattr(changes, key) for key in given}
        if status_value is not None:
            values["status"] = status_value
        if "capabilities" in values:
            values["capabilities"] = encode_json(
                values["capabilities"], "capabilities", self._db.config.max_json_bytes
            )
        row = await self._db.fetch_one(
            *_update_sql(self.tenant, uid, values, expected_version, expected_updated_at),
            model=Agent,
        )
        if row is not None:
            await self._invalidate(uid)
            return row
        current = await self._load(uid)  # NotFound when it does not exist at all
        raise Conflict(
            f"agent {agent_id} was changed by someone else (now version {current.version}); "
            "read it again and reapply your change",
            field="version",
        )

    @observed("agents.delete")
    async def delete(self, agent_id: UUID | str) -> None:
        """Delete the agent; its tasks stay, with no agent. :class:`NotFound` if absent."""
        uid = as_uuid(agent_id, "agent_id")
        deleted = await self._db.execute(*_delete_sql(self.tenant, uid))
        if deleted == 0:
            raise NotFound(f"agent {agent_id} does not exist", entity="agent", key=agent_id)
        await self._invalidate(uid)

    @observed("agents.list")
    async def list(
        self,
        *,
        type: str | Sequence[str] | None = None,
        status: AgentStatus | str | Sequence[AgentStatus | str] | None = None,
        capabilities: dict[str, Any] | None = None,
        has_capabilities: Sequence[str] | None = None,
        name_contains: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        consistent: bool = False,
    ) -> Page[Agent]:
        """Agents in creation order, filtered; follow ``next_cursor`` for the next page.

        ``capabilities`` matches by JSON containment (``{"plan": True}`` finds agents whose
        capabilities include that pair); ``has_capabilities`` requires every listed key. A
        read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        where, params = self._filters(type, status, capabilities, has_capabilities, name_contains)
        page = await keyset_page(
            self._db,
            "agents",
            _COLUMNS,
            where,
            params,
            model=Agent,
            limit=limit,
            cursor=cursor,
            consistent=consistent,
        )
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "agents", [a.id for a in page.items])
        return page

    @observed("agents.count")
    async def count(
        self,
        *,
        type: str | Sequence[str] | None = None,
        status: AgentStatus | str | Sequence[AgentStatus | str] | None = None,
        capabilities: dict[str, Any] | None = None,
        has_capabilities: Sequence[str] | None = None,
        name_contains: str | None = None,
        consistent: bool = False,
    ) -> int:
        """How many agents match the same filters as :meth:`list` (a read replica may answer)."""
        check_bool(consistent, "consistent")
        where, params = self._filters(type, status, capabilities, has_capabilities, name_contains)
        return await count_where(self._db, "agents", where, params, consistent)

    def _filters(
        self,
        type: str | Sequence[str] | None,
        status: AgentStatus | str | Sequence[AgentStatus | str] | None,
        capabilities: dict[str, Any] | None,
        has_capabilities: Sequence[str] | None,
        name_contains: str | None,
    ) -> tuple[builtins.list[sql.Composable], builtins.list[Any]]:
        where: builtins.list[sql.Composable] = [sql.SQL("tenant_id = %s")]
        params: builtins.list[Any] = [self.tenant]
        types = as_list(type, "type", str)
        if types is not None:
            where.append(sql.SQL("type = ANY(%s)"))
            params.append(types)
        statuses = as_list(status, "status", str)
        if statuses is not None:
            where.append(sql.SQL("status = ANY(%s)"))
            params.append([_status(s) for s in statuses])
        if capabilities is not None:
            check_mapping(capabilities, "capabilities")
            where.append(sql.SQL("capabilities @> %s::jsonb"))
            params.append(encode_json(capabilities, "capabilities", self._db.config.max_json_bytes))
        keys = as_list(has_capabilities, "has_capabilities", str)
        if keys:
            where.append(sql.SQL("capabilities ?& %s"))
            params.append(keys)
        if name_contains is not None:
            check_text(name_contains, "name_contains", max_length=_MAX_NAME)
            where.append(sql.SQL("name ILIKE %s"))
            params.append(like_pattern(name_contains))
        return where, params


def _cache_key(agent_id: UUID) -> str:
    return f"agent:{agent_id}"


def _status(value: Any) -> str:
    return as_choice(value, AgentStatus, "status")


class _NewAgent(NamedTuple):
    name: str
    type: str
    capabilities: str  # JSON text
    status: str


def _insert_sql(tenant: str, new: _NewAgent) -> tuple[Query, Params]:
    return (
        "INSERT INTO agents (tenant_id, name, type, capabilities, status) "
        "VALUES (%s, %s, %s, %s::jsonb, %s) RETURNING " + _COLUMNS,
        [tenant, *new],
    )


def _insert_many_sql(tenant: str, ids: list[UUID], new: list[_NewAgent]) -> tuple[Query, Params]:
    # One array per column; the ids are made here so that each row finds its caller.
    names, types, caps, statuses = (list(column) for column in zip(*new, strict=True))
    return (
        "INSERT INTO agents (id, tenant_id, name, type, capabilities, status) "
        "SELECT i.id, %s, i.name, i.type, i.capabilities, i.status "
        "FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::jsonb[], %s::text[]) "
        "AS i(id, name, type, capabilities, status) RETURNING " + _COLUMNS,
        [tenant, ids, names, types, caps, statuses],
    )


def _get_sql(tenant: str, agent_id: UUID) -> tuple[Query, Params]:
    return "SELECT " + _COLUMNS + " FROM agents WHERE tenant_id = %s AND id = %s", [
        tenant,
        agent_id,
    ]


def _get_many_sql(tenant: str, ids: list[UUID]) -> tuple[Query, Params]:
    return "SELECT " + _COLUMNS + " FROM agents WHERE tenant_id = %s AND id = ANY(%s)", [
        tenant,
        ids,
    ]


def _delete_sql(tenant: str, agent_id: UUID) -> tuple[Query, Params]:
    return "DELETE FROM agents WHERE tenant_id = %s AND id = %s", [tenant, agent_id]


def _update_sql(
    tenant: str,
    agent_id: UUID,
    values: dict[str, Any],
    expected_version: int | None,
    expected_updated_at: datetime | None,
) -> tuple[Query, Params]:
    assignments: builtins.list[sql.Composable] = [
        sql.SQL("{} = %s::jsonb" if key == "capabilities" else "{} = %s").format(
            sql.Identifier(key)
        )
        for key in values
    ]
    assignments.append(sql.SQL("version = version + 1"))
    where: list[sql.Composable] = [sql.SQL("tenant_id = %s"), sql.SQL("id = %s")]
    params: list[Any] = [*values.values(), tenant, agent_id]
    if expected_version is not None:
        where.append(sql.SQL("version = %s"))
        params.append(expected_version)
    if expected_updated_at is not None:
        where.append(sql.SQL("updated_at = %s"))
        params.append(expected_updated_at)
    query = sql.SQL("UPDATE agents SET {} WHERE {} RETURNING " + _COLUMNS).format(
        sql.SQL(", ").join(assignments), sql.SQL(" AND ").join(where)
    )
    return query, params
