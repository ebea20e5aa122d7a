"""Tasks: the queue an orchestrator lives on.

Status transitions are enforced by the database (pending -> running -> completed | failed;
pending | running -> cancelled; failed -> pending), so no client can skip a step. ``claim``
takes the highest-priority, oldest pending tasks with ``FOR UPDATE SKIP LOCKED``: concurrent
workers never get the same task and never wait on each other.
"""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, LiteralString
from uuid import UUID

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import (
    as_choice,
    as_items,
    as_list,
    as_uuid,
    check_datetime,
    check_int,
    check_limit,
    check_mapping,
    check_seconds,
    check_text,
    encode_json,
    located,
    validated,
)
from agency_data.models import Page, Task, TaskStatus
from agency_data.postgres._paging import count_where, keyset_page
from agency_data.postgres.database import Database, Params, Query
from agency_data.postgres.wakeups import TaskWakeups

__all__ = ["TaskStore"]

_COLUMNS: LiteralString = (
    "id, tenant_id, agent_id, type, status, priority, data, result, error, attempts, "
    "created_at, updated_at, started_at, finished_at"
)
_CLAIMED_COLUMNS: LiteralString = (
    "t.id, t.tenant_id, t.agent_id, t.type, t.status, t.priority, t.data, t.result, t.error, "
    "t.attempts, t.created_at, t.updated_at, t.started_at, t.finished_at"
)
_MAX_ERROR = 10_000
_Row = tuple[UUID, str, str, int, UUID | None]
_MAX_CLAIM = 1000
# The longest a claim waits for work: a worker's long poll, not a way to sleep for days.
MAX_CLAIM_WAIT = 3600.0
_MAX_SEARCH = 1000


class _TaskFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str = Field(min_length=1, max_length=100, pattern=r"\S")
    data: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=0, le=1000)
    agent_id: UUID | None = None


class TaskStore:
    """The tasks of one tenant."""

    def __init__(self, db: Database, tenant: str, wakeups: TaskWakeups | None = None) -> None:
        self._db = db
        self.tenant = tenant
        self._wakeups = wakeups

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        priority: int = 0,
        agent_id: UUID | str | None = None,
    ) -> Task:
        """Queue one task (pending) and return it."""
        row = self._row({"type": type, "data": data, "priority": priority, "agent_id": agent_id})
        (task,) = await self._db.fetch(*_insert_many_sql(self.tenant, [row]), model=Task)
        return task

    async def create_many(self, items: Iterable[Mapping[str, Any]]) -> builtins.list[Task]:
        """Queue many tasks in one statement, all or none; returned in the order given.

        Each item is a mapping with ``type`` and optionally ``data``, ``priority``, ``agent_id``.
        Every item is validated before anything is written.
        """
        rows = []
        for index, item in enumerate(as_items(items, "items")):
            with located(f"items[{index}]"):
                rows.append(self._row(item))
        if not rows:
            return []
        created = await self._db.fetch(*_insert_many_sql(self.tenant, rows), model=Task)
        order = {row[0]: i for i, row in enumerate(rows)}
        return sorted(created, key=lambda task: order[task.id])

    def _row(self, item: Mapping[str, Any]) -> _Row:
        if not isinstance(item, Mapping):
            raise ValidationError(
                f"a task must be a mapping with a type, not {type(item).__name__}", field=None
            )
        values = dict(item)
        if values.get("data") is None:
            values.pop("data", None)
        if values.get("agent_id") is not None:
            values["agent_id"] = as_uuid(values["agent_id"], "agent_id")
        fields = validated(_TaskFields, values)
        data = encode_json(fields.data, "data", self._db.config.max_json_bytes)
        # Ids are made here so that results can be put back in the caller's order.
        return (uuid.uuid4(), fields.type, data, fields.priority, fields.agent_id)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, task_id: UUID | str) -> Task:
        """The task with ``task_id``; :class:`NotFound` if this tenant has none."""
        task = await self._db.fetch_one(
            "SELECT " + _COLUMNS + " FROM tasks WHERE tenant_id = %s AND id = %s",
            [self.tenant, as_uuid(task_id, "task_id")],
            model=Task,
        )
        if task is None:
            raise NotFound(f"task {task_id} does not exist", entity="task", key=task_id)
        return task

    async def get_many(self, task_ids: Iterable[UUID | str]) -> builtins.list[Task]:
        """The tasks that exist among ``task_ids`` (one round trip), in no particular order."""
        ids = [as_uuid(i, f"task_ids[{n}]") for n, i in enumerate(as_items(task_ids, "task_ids"))]
        if not ids:
            return []
        return await self._db.fetch(
            "SELECT " + _COLUMNS + " FROM tasks WHERE tenant_id = %s AND id = ANY(%s)",
            [self.tenant, ids],
            model=Task,
        )

    async def list(
        self,
        *,
        agent_id: UUID | str | None = None,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        type: str | Sequence[str] | None = None,
        priority_min: int | None = None,
        priority_max: int | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        data_contains: dict[str, Any] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Task]:
        """Tasks in creation order, filtered; follow ``next_cursor`` for the next page.

        ``created_after`` / ``created_before`` are datetimes with a timezone; naive ones are
        refused, since the server would read them in its own time zone.
        """
        where, params = self._filters(
            agent_id,
            status,
            type,
            priority_min,
            priority_max,
            created_after,
            created_before,
            data_contains,
        )
        return await keyset_page(
            self._db, "tasks", _COLUMNS, where, params, model=Task, limit=limit, cursor=cursor
        )

    async def count(
        self,
        *,
        agent_id: UUID | str | None = None,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        type: str | Sequence[str] | None = None,
        priority_min: int | None = None,
        priority_max: int | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        data_contains: dict[str, Any] | None = None,
    ) -> int:
        """How many tasks match the same filters as :meth:`list`."""
        where, params = self._filters(
            agent_id,
            status,
            type,
            priority_min,
            priority_max,
            created_after,
            created_before,
            data_contains,
        )
        return await count_where(self._db, "tasks", where, params)

    async def search(
        self,
        text: str,
        *,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        type: str | Sequence[str] | None = None,
        limit: int = 20,
    ) -> builtins.list[Task]:
        """Full-text search over task type and data, best match first.

        ``text`` is read like a web search: words, ``"quoted phrases"``, ``or``, ``-excluded``.
        """
        check_text(text, "text", max_length=_MAX_SEARCH)
        check_limit(limit)
        where, params = self._filters(None, status, type, None, None, None, None, None)
        query = sql.SQL(
            "SELECT " + _COLUMNS + " FROM tasks, websearch_to_tsquery('english', %s) AS q "
            "WHERE search @@ q AND {} ORDER BY ts_rank(search, q) DESC, created_at, id LIMIT %s"
        ).format(sql.SQL(" AND ").join(where))
        return await self._db.fetch(query, [text, *params, limit], model=Task)

    # -- the queue -----------------------------------------------------------------------------

    async def claim(
        self,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        n: int = 1,
        *,
        wait: float | None = None,
    ) -> builtins.list[Task]:
        """Take up to ``n`` pending tasks for ``agent_id``: highest priority first, then oldest.

        Claimed tasks are ``running``, assigned to the agent, with ``attempts`` counted. With
        ``wait`` (seconds, from 0 to :data:`MAX_CLAIM_WAIT`; 0 or None: no wait), an empty
        queue is waited on (LISTEN/NOTIFY, no polling) until work arrives or the time is up;
        the result may still be empty.
        """
        agent = as_uuid(agent_id, "agent_id")
        wanted = as_list(types, "types", str)
        check_int(n, "n", 1, _MAX_CLAIM)
        if wait is not None:
            wait = check_seconds(wait, "wait", high=MAX_CLAIM_WAIT)
        query, params = _claim_sql(self.tenant, agent, wanted, n)
        if not wait or self._wakeups is None or self._db.in_transaction:
            return await self._db.fetch(query, params, model=Task)
        deadline = time.monotonic() + wait
        async with self._wakeups.subscription(self.tenant) as woken:
            while True:
                woken.clear()
                claimed = await self._db.fetch(query, params, model=Task)
                remaining = deadline - time.monotonic()
                if claimed or remaining <= 0:
                    return claimed
                try:
                    async with asyncio.timeout(remaining):
                        await woken.wait()
                except TimeoutError:
                    return await self._db.fetch(query, params, model=Task)

    async def complete(self, task_id: UUID | str, result: Any = None) -> Task:
        """Mark a running task completed, recording ``result`` (any JSON value)."""
        encoded = encode_json(result, "result", self._db.config.max_json_bytes)
        return await self._transition(task_id, "completed", result=encoded, error=None)

    async def fail(self, task_id: UUID | str, error: str) -> Task:
        """Mark a running task failed, recording ``error``."""
        if not isinstance(error, str) or not error.strip():
            raise ValidationError("error must be a non-empty string", field="error")
        if len(error) > _MAX_ERROR:
            raise ValidationError(
                f"error is over {_MAX_ERROR} characters; shorten it", field="error"
            )
        return await self._transition(task_id, "failed", error=error)

    async def cancel(self, task_id: UUID | str) -> Task:
        """Cancel a pending or running task."""
        return await self._transition(task_id, "cancelled")

    async def retry(self, task_id: UUID | str) -> Task:
        """Put a failed task back in the queue; its next claim counts another attempt."""
        return await self._transition(task_id, "pending")

    async def delete(self, task_id: UUID | str) -> None:
        """Delete a task; :class:`NotFound` if this tenant has none with that id."""
        deleted = await self._db.execute(
            "DELETE FROM tasks WHERE tenant_id = %s AND id = %s",
            [self.tenant, as_uuid(task_id, "task_id")],
        )
        if deleted == 0:
            raise NotFound(f"task {task_id} does not exist", entity="task", key=task_id)

    async def _transition(self, task_id: UUID | str, status: str, **values: Any) -> Task:
        task = await self._db.fetch_one(
            *_transition_sql(self.tenant, as_uuid(task_id, "task_id"), status, values), model=Task
        )
        if task is None:
            raise NotFound(f"task {task_id} does not exist", entity="task", key=task_id)
        return task

    def _filters(
        self,
        agent_id: UUID | str | None,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None,
        type: str | Sequence[str] | None,
        priority_min: int | None,
        priority_max: int | None,
        created_after: datetime | None,
        created_before: datetime | None,
        data_contains: dict[str, Any] | None,
    ) -> tuple[builtins.list[sql.Composable], builtins.list[Any]]:
        where: builtins.list[sql.Composable] = [sql.SQL("tenant_id = %s")]
        params: builtins.list[Any] = [self.tenant]

        def add(clause: LiteralString, value: Any) -> None:
            where.append(sql.SQL(clause))
            params.append(value)

        if agent_id is not None:
            add("agent_id = %s", as_uuid(agent_id, "agent_id"))
        statuses = as_list(status, "status", str)
        if statuses is not None:
            add("status = ANY(%s)", [_status(s) for s in statuses])
        types = as_list(type, "type", str)
        if types is not None:
            add("type = ANY(%s)", types)
        for name, bound, clause in (
            ("priority_min", priority_min, "priority >= %s"),
            ("priority_max", priority_max, "priority <= %s"),
        ):
            if bound is not None:
                check_int(bound, name, -(2**31), 2**31 - 1)
                add(clause, bound)
        for name, moment, clause in (
            ("created_after", created_after, "created_at > %s"),
            ("created_before", created_before, "created_at < %s"),
        ):
            if moment is not None:
                add(clause, check_datetime(moment, name))
        if data_contains is not None:
            check_mapping(data_contains, "data_contains")
            add(
                "data @> %s::jsonb",
                encode_json(data_contains, "data_contains", self._db.config.max_json_bytes),
            )
        return where, params


def _status(value: Any) -> str:
    return as_choice(value, TaskStatus, "status")


def _insert_many_sql(tenant: str, rows: list[_Row]) -> tuple[Query, Params]:
    ids, types, data, priorities, agents = (list(column) for column in zip(*rows, strict=True))
    return (
        "INSERT INTO tasks (id, tenant_id, type, data, priority, agent_id) "
        "SELECT id, %s, type, data, priority, agent_id "
        "FROM unnest(%s::uuid[], %s::text[], %s::jsonb[], %s::int[], %s::uuid[]) "
        "AS t(id, type, data, priority, agent_id) RETURNING " + _COLUMNS,
        [tenant, ids, types, data, priorities, agents],
    )


def _claim_sql(
    tenant: str, agent_id: UUID, types: list[str] | None, n: int
) -> tuple[Query, Params]:
    type_filter: LiteralString = "AND type = ANY(%s) " if types is not None else ""
    params: list[Any] = [tenant, *([types] if types is not None else []), n, agent_id]
    # UPDATE ... RETURNING has no order of its own: the claimed rows are sorted again.
    return (
        "WITH next AS ("
        " SELECT id FROM tasks WHERE tenant_id = %s AND status = 'pending' "
        + type_filter
        + " ORDER BY priority DESC, created_at, id LIMIT %s FOR UPDATE SKIP LOCKED), "
        "claimed AS ("
        " UPDATE tasks AS t SET status = 'running', agent_id = %s FROM next WHERE t.id = next.id "
        " RETURNING " + _CLAIMED_COLUMNS + ") "
        "SELECT * FROM claimed ORDER BY priority DESC, created_at, id",
        params,
    )


def _transition_sql(
    tenant: str, task_id: UUID, status: str, values: dict[str, Any]
) -> tuple[Query, Params]:
    assignments: list[sql.Composable] = [sql.SQL("status = %s")]
    params: list[Any] = [status]
    for key, value in values.items():
        template: LiteralString = "{} = %s::jsonb" if key == "result" else "{} = %s"
        assignments.append(sql.SQL(template).format(sql.Identifier(key)))
        params.append(value)
    query = sql.SQL(
        "UPDATE tasks SET {} WHERE tenant_id = %s AND id = %s RETURNING " + _COLUMNS
    ).format(sql.SQL(", ").join(assignments))
    return query, [*params, tenant, task_id]
