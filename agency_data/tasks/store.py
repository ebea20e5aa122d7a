"""Tasks: the queue an orchestrator lives on.

A task is created ``pending`` (due at once, at ``run_at``, or after ``delay``), claimed by one
worker at a time under a lease, and ends ``completed``, ``failed``, ``dead`` (out of attempts)
or ``cancelled``. The database enforces the transitions (see the README's state diagram), so
no client can skip a step. This module holds the records: creating (with uniqueness keys and
dependencies), reading, searching and deleting; :mod:`.queue` works them and
:mod:`.schedules` enqueues them on a timetable.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, LiteralString
from uuid import UUID

import orjson
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from agency_data.batching import GroupCommit, PointReads
from agency_data.errors import (
    BackendUnavailable,
    Conflict,
    NotFound,
    QueryError,
    ValidationError,
)
from agency_data.inputs import (
    as_choice,
    as_items,
    as_list,
    as_uuid,
    check_bool,
    check_choice,
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
from agency_data.observability import observed
from agency_data.postgres._paging import count_where, keyset_page
from agency_data.postgres.database import Database
from agency_data.postgres.errors import refused_a_row
from agency_data.retry import Backoff
from agency_data.security.fields import sealed_limit
from agency_data.tasks import _sql
from agency_data.tasks._sql import READ_COLUMNS, NewTask
from agency_data.tasks.policies import PolicyOps
from agency_data.tasks.queue import QueueOps
from agency_data.tasks.runtime import TaskRuntime
from agency_data.tasks.schedules import ScheduleOps
from agency_data.tasks.worker import Handler, Worker

__all__ = ["OnConflict", "TaskStore"]

OnConflict = Literal["return", "replace", "raise"]
_log = logging.getLogger("agency_data.tasks")
_ON_CONFLICT = ("return", "replace", "raise")
_MAX_SEARCH = 1000
_MAX_DEPENDENCIES = 1000
# The longest delay a task may be scheduled with: a year.
_MAX_DELAY = 86_400.0 * 366
# A scheduler looks for new or changed schedules at least this often.
_MAX_NAP = 5.0
# A keyed insert that lost its race to a task which then finished tries again this often.
_KEY_RETRIES = 5


class _TaskFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: UUID | None = None
    type: str = Field(min_length=1, max_length=100, pattern=r"\S")
    data: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=0, le=1000)
    agent_id: UUID | None = None
    max_attempts: int | None = Field(None, ge=1, le=1000)
    key: str | None = Field(None, min_length=1, max_length=200)


class TaskStore(QueueOps, PolicyOps, ScheduleOps):
    """The tasks of one tenant: records here, the queue in :class:`QueueOps`."""

    def __init__(self, db: Database, tenant: str, runtime: TaskRuntime) -> None:
        self._db = db
        self._telemetry = db.telemetry
        self.tenant = tenant
        self._runtime = runtime
        # Whether reads are recorded in the audit trail (audit.reads names tasks).
        self._reads_audited = db.notes.reads_of("tasks")
        self._reads: PointReads[UUID, Task] = PointReads(self._read_one, self._read_many)
        self._creates: GroupCommit[NewTask, Task] = GroupCommit(
            self._insert_one, self._insert_group, retry_alone=refused_a_row
        )

    async def aclose(self) -> None:
        """Wait for the reads and creates gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        await self._reads.aclose()
        await self._creates.aclose()

    # -- creating ------------------------------------------------------------------------------

    @observed("tasks.create")
    async def create(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        priority: int = 0,
        agent_id: UUID | str | None = None,
        *,
        run_at: datetime | None = None,
        delay: float | None = None,
        max_attempts: int | None = None,
        key: str | None = None,
        on_conflict: OnConflict = "return",
        depends_on: Iterable[UUID | str] | None = None,
    ) -> Task:
        """Queue one task and return it.

        ``run_at`` (a datetime with a timezone) or ``delay`` (seconds) keeps it from being
        claimed until then. ``max_attempts`` overrides the type's (or the configured)
        number of attempts. ``key`` makes it unique among live (pending or running) tasks:
        a second create with the same key returns the live task (``on_conflict="return"``),
        replaces a pending one's data, priority, agent, due time and attempts, not its
        type (``"replace"``; :class:`Conflict` if it is running; its dependencies stay as they
        were), or raises :class:`Conflict` (``"raise"``). ``depends_on`` lists tasks that must
        complete first; if one ends any other way, this task is cancelled with the reason.
        """
        item: dict[str, Any] = {"type": type, "data": data, "priority": priority}
        for name, value in (
            ("agent_id", agent_id),
            ("run_at", run_at),
            ("delay", delay),
            ("max_attempts", max_attempts),
            ("key", key),
            ("depends_on", depends_on),
        ):
            if value is not None:
                item[name] = value
        await self._keys_ready()
        (task,) = await self._create([self._row(item)], on_conflict)
        return task

    async def _keys_ready(self) -> None:
        # The tenant's data key read (off the event loop) before rows are sealed.
        if self._db.cipher.chosen("tasks", "data"):
            await self._db.cipher.ensure(self.tenant)

    @observed("tasks.create_many")
    async def create_many(
        self, items: Iterable[Mapping[str, Any]], *, on_conflict: OnConflict = "return"
    ) -> builtins.list[Task]:
        """Queue many tasks at once, all or none; returned in the order given.

        Each item is a mapping with ``type`` and optionally the other arguments of
        :meth:`create`, and an ``id`` (a UUID) that later items' ``depends_on`` may name: a
        whole graph of steps goes in one call. Cycles are refused; every item is validated
        before anything is written.
        """
        rows = []
        await self._keys_ready()
        for index, item in enumerate(as_items(items, "items")):
            with located(f"items[{index}]"):
                rows.append(self._row(item))
        if not rows:
            return []
        return await self._create(rows, on_conflict)

    def _row(self, item: Mapping[str, Any]) -> tuple[NewTask, builtins.list[UUID]]:
        if not isinstance(item, Mapping):
            raise ValidationError(
                f"a task must be a mapping with a type, not {builtins.type(item).__name__}",
                field=None,
            )
        values = dict(item)
        if values.get("data") is None:
            values.pop("data", None)
        for name in ("id", "agent_id"):
            if values.get(name) is not None:
                values[name] = as_uuid(values[name], name)
        run_at = values.pop("run_at", None)
        if run_at is not None:
            run_at = check_datetime(run_at, "run_at")
        delay = values.pop("delay", None)
        if delay is not None:
            if run_at is not None:
                raise ValidationError("give run_at or delay, not both", field="delay")
            delay = check_seconds(delay, "delay", high=_MAX_DELAY)
        dependencies: builtins.list[UUID] = []
        depends_on = values.pop("depends_on", None)
        if depends_on is not None:
            for n, dep in enumerate(as_items(depends_on, "depends_on", most=_MAX_DEPENDENCIES)):
                dep_id = as_uuid(dep, f"depends_on[{n}]")
                if dep_id not in dependencies:
                    dependencies.append(dep_id)
        fields = validated(_TaskFields, values)
        task_id = fields.id or uuid.uuid4()
        cipher = self._db.cipher
        plain = fields.data
        if cipher.chosen("tasks", "data"):
            # Checked for size as given, then sealed for this row.
            encode_json(plain, "data", self._db.config.max_json_bytes)
            plain = cipher.seal(self.tenant, "tasks", "data", task_id, plain)
        data = encode_json(plain, "data", sealed_limit(self._db.config.max_json_bytes))
        if task_id in dependencies:
            raise ValidationError(f"task {task_id} cannot depend on itself", field="depends_on")
        row = NewTask(
            id=task_id,
            type=fields.type,
            data=data,
            priority=fields.priority,
            agent_id=fields.agent_id,
            run_at=run_at,
            delay=delay or 0.0,
            max_attempts=fields.max_attempts,
            key=fields.key,
        )
        return row, dependencies

    async def _create(
        self, rows: builtins.list[tuple[NewTask, builtins.list[UUID]]], on_conflict: str
    ) -> builtins.list[Task]:
        check_choice(on_conflict, "on_conflict", _ON_CONFLICT)
        _check_batch(rows)
        keyed = any(row.key is not None for row, _ in rows)
        linked = any(deps for _, deps in rows)
        order = [row.id for row, _ in rows]
        if not keyed and not linked and len(rows) == 1 and not self._db.in_transaction:
            # The commonest case: concurrent callers' creates are committed together.
            task = await self._creates.write(rows[0][0])
            return [task]
        if not keyed and not linked:
            # The common case: one statement, no transaction of its own.
            tasks = await self._db.fetch(
                *_sql.insert(self.tenant, [r for r, _ in rows], self._runtime.defaults, None),
                model=Task,
            )
            made = {task.id: task for task in tasks}
        else:
            async with self._db.transaction():
                if linked:
                    rows = await self._link(rows)
                made = await self._insert_keyed([r for r, _ in rows], on_conflict, rows)
        return [made[task_id] for task_id in order]

    async def _insert_one(self, row: NewTask) -> Task:
        task = await self._db.fetch_one(
            *_sql.insert(self.tenant, [row], self._runtime.defaults, None), model=Task
        )
        assert task is not None, "INSERT ... RETURNING returns the row"
        return task

    async def _insert_group(self, rows: builtins.list[NewTask]) -> builtins.list[Task]:
        tasks = await self._db.fetch(
            *_sql.insert(self.tenant, rows, self._runtime.defaults, None), model=Task
        )
        made = {task.id: task for task in tasks}
        return [made[row.id] for row in rows]

    async def _link(
        self, rows: builtins.list[tuple[NewTask, builtins.list[UUID]]]
    ) -> builtins.list[tuple[NewTask, builtins.list[UUID]]]:
        """Rows with their state from their dependencies, in an order parents come first."""
        batch = {row.id: (row, deps) for row, deps in rows}
        outside = sorted({d for _, deps in rows for d in deps if d not in batch})
        status: dict[UUID, str] = {}
        if outside:
            found = await self._db.fetch(*_sql.mark_dependencies(self.tenant, outside))
            status = {r["id"]: r["status"] for r in found}
            for index, (_, deps) in enumerate(rows):
                for n, dep in enumerate(deps):
                    if dep not in batch and dep not in status:
                        raise NotFound(
                            f"items[{index}].depends_on[{n}]: task {dep} does not exist",
                            entity="task",
                            key=dep,
                        )
        depended = {d for _, deps in rows for d in deps if d in batch}
        linked = []
        for task_id in _topological(batch):
            row, deps = batch[task_id]
            ended = next((d for d in deps if status[d] in _ENDED), None)
            state: dict[str, Any] = {
                "blocked_by": sum(1 for d in deps if status[d] != "completed"),
                "has_dependents": task_id in depended,
            }
            if ended is not None:
                state["status"] = "cancelled"
                state["error"] = f"task {ended}, which this one depends on, ended {status[ended]}"
            if row.key is not None and task_id in depended:
                raise ValidationError(
                    f"task {task_id} has a key and other tasks of the batch depend on it; "
                    "create it first, then the tasks that depend on it",
                    field="key",
                )
            row = dataclasses.replace(row, **state)
            status[task_id] = row.status
            linked.append((row, deps))
        return linked

    async def _insert_keyed(
        self,
        rows: builtins.list[NewTask],
        on_conflict: str,
        linked: builtins.list[tuple[NewTask, builtins.list[UUID]]],
    ) -> dict[UUID, Task]:
        """Insert ``rows`` under the key policy: each row's id -> its task (new or live)."""
        policy = on_conflict if any(r.key is not None for r in rows) else None
        made: dict[UUID, Task] = {}
        by_key: dict[str, Task] = {}
        todo = await self._born_ended(rows, on_conflict, by_key)
        tries = 0
        while todo:
            if tries == _KEY_RETRIES:
                raise Conflict("the task keys changed hands too often; try again", field="key")
            tries += 1
            tasks = await self._insert_rows(todo, policy)
            for task in tasks:
                made[task.id] = task
                if task.key is not None:
                    by_key[task.key] = task
            lost = [r for r in todo if r.id not in made and r.key not in by_key]
            if not lost:
                break
            if on_conflict == "replace":
                raise Conflict(
                    f"a running task holds key {lost[0].key!r}; only a pending one can be "
                    "replaced (cancel it, or wait for it to finish)",
                    field="key",
                )
            if on_conflict == "raise":
                raise Conflict(
                    f"a live task already holds key {lost[0].key!r}; pass "
                    "on_conflict='return' to get it instead",
                    field="key",
                )
            keys = [r.key for r in lost if r.key is not None]
            for task in await self._db.fetch(*_sql.live_with_keys(self.tenant, keys), model=Task):
                if task.key is not None:
                    by_key[task.key] = task
            # A task that finished in between freed its key: insert those rows again.
            todo = [r for r in lost if r.key not in by_key]
        edges = [(row.id, dep) for row, deps in linked for dep in deps if row.id in made]
        if edges:
            await self._db.execute(*_sql.insert_edges(self.tenant, edges))
        # A row that lost its key to a live task gets that task.
        return {row.id: made[row.id] if row.id in made else by_key[str(row.key)] for row in rows}

    async def _insert_rows(
        self, rows: builtins.list[NewTask], policy: str | None
    ) -> builtins.list[Task]:
        """Insert under the key policy; a replaced task's new data sealed again for its row."""
        cipher = self._db.cipher
        query = _sql.insert(self.tenant, rows, self._runtime.defaults, policy)
        if policy != "replace" or not cipher.chosen("tasks", "data"):
            return await self._db.fetch(*query, model=Task)
        raw = await self._db.fetch(*query)
        proposed = {row.key: row for row in rows if row.key is not None}
        for found in raw:
            row = proposed.get(found["key"])
            if row is None or row.id == found["id"]:
                continue
            # The live task kept its id and took this row's data, sealed for this row's id.
            plain = cipher.open(self.tenant, "tasks", "data", row.id, found["data"])
            found["data"] = cipher.seal(self.tenant, "tasks", "data", found["id"], plain)
            await self._db.execute(
                "UPDATE tasks SET data = %s::jsonb WHERE tenant_id = %s AND id = %s",
                [orjson.dumps(found["data"]).decode(), self.tenant, found["id"]],
            )
        return [Task.model_validate(row) for row in cipher.open_rows(Task, raw)]

    async def _born_ended(
        self, rows: builtins.list[NewTask], on_conflict: str, by_key: dict[str, Task]
    ) -> builtins.list[NewTask]:
        """Rows to insert, less keyed ones born cancelled whose key a live task holds.

        A cancelled row is outside the unique index of live keys, so the insert would not
        see the conflict: it is settled here, by the policy, before anything is written.
        """
        ended = [r.key for r in rows if r.key is not None and r.status != "pending"]
        if not ended:
            return rows
        live = await self._db.fetch(*_sql.live_with_keys(self.tenant, ended), model=Task)
        if live and on_conflict != "return":
            raise Conflict(
                f"a live task already holds key {live[0].key!r}, and the new one would be "
                "cancelled at once (a task it depends on has ended)",
                field="key",
            )
        by_key.update({task.key: task for task in live if task.key is not None})
        return [r for r in rows if r.status == "pending" or r.key not in by_key]

    # -- running -------------------------------------------------------------------------------

    def worker(
        self,
        handler: Handler,
        *,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        concurrency: int = 1,
        lease_seconds: float | None = None,
    ) -> Worker:
        """A :class:`~agency_data.tasks.Worker` running ``handler`` on this tenant's tasks."""
        return Worker(
            self,
            handler,
            agent_id=agent_id,
            types=types,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
        )

    async def run_scheduler(self, *, sweep: bool = True) -> None:
        """Enqueue due schedules (and, with ``sweep``, rescue expired leases) until cancelled.

        Run it in as many processes as you like: each tick is enqueued once. It sleeps until
        the next tick is due, and looks for new schedules at least every 5 seconds. A pass
        that fails (PostgreSQL unreachable, a timeout) is logged and tried again after a
        backoff.
        """
        last_sweep = float("-inf")
        backoff = Backoff(first=0.5, most=30.0)
        while True:
            try:
                await self.run_due_schedules()
                if sweep and time.monotonic() - last_sweep >= self._runtime.config.rescue_interval:
                    await self.sweep()
                    last_sweep = time.monotonic()
                wait = await self._db.fetch_value(
                    "SELECT extract(epoch FROM min(next_run_at) - clock_timestamp())::float8 "
                    "FROM task_schedules WHERE tenant_id = %s",
                    [self.tenant],
                )
            except (BackendUnavailable, QueryError) as exc:
                _log.warning("the scheduler's pass failed (%s); trying again", exc)
                await backoff.sleep()
                continue
            backoff.reset()
            nap = _MAX_NAP if wait is None else min(_MAX_NAP, max(wait, 0.0))
            if sweep:
                nap = min(nap, self._runtime.config.rescue_interval)
            # A hair past the tick, so that the server's now() has reached it.
            await asyncio.sleep(nap + 0.002)

    # -- reading -------------------------------------------------------------------------------

    @observed("tasks.get")
    async def get(self, task_id: UUID | str, *, consistent: bool = False) -> Task:
        """The task with ``task_id``; :class:`NotFound` if this tenant has none.

        Concurrent calls outside transactions share one query (see
        :mod:`agency_data.batching`). A read replica may serve it (see
        :mod:`agency_data.postgres.replicas`); ``consistent`` asks for one that has replayed
        every commit acknowledged so far, or the primary.
        """
        uid = as_uuid(task_id, "task_id")
        if consistent is not False or self._db.in_transaction:
            # Alone: a consistent read waits for its own replica; a transaction's stays its own.
            task = await self._read_one(uid, consistent=check_bool(consistent, "consistent"))
        else:
            task = await self._reads.get(uid)
        if task is None:
            raise NotFound(f"task {task_id} does not exist", entity="task", key=task_id)
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "tasks", [task.id])
        return task

    async def _read_one(self, task_id: UUID, consistent: bool = False) -> Task | None:
        return await self._db.read(lambda on: self._load_one(task_id, on), consistent=consistent)

    async def _load_one(self, task_id: UUID, db: Database) -> Task | None:
        return await db.fetch_one(
            "SELECT " + READ_COLUMNS + " FROM tasks WHERE tenant_id = %s AND id = %s",
            [self.tenant, task_id],
            model=Task,
        )

    async def _read_many(self, task_ids: Sequence[UUID]) -> dict[UUID, Task]:
        tasks = await self._db.read(lambda on: self._load_many(list(task_ids), on))
        return {task.id: task for task in tasks}

    async def _load_many(self, task_ids: builtins.list[UUID], db: Database) -> builtins.list[Task]:
        return await db.fetch(
            "SELECT " + READ_COLUMNS + " FROM tasks WHERE tenant_id = %s AND id = ANY(%s)",
            [self.tenant, task_ids],
            model=Task,
        )

    @observed("tasks.get_many")
    async def get_many(
        self, task_ids: Iterable[UUID | str], *, consistent: bool = False
    ) -> builtins.list[Task]:
        """The tasks that exist among ``task_ids`` (one round trip), in no particular order.

        A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        ids = [as_uuid(i, f"task_ids[{n}]") for n, i in enumerate(as_items(task_ids, "task_ids"))]
        if not ids:
            return []
        tasks = await self._db.read(lambda on: self._load_many(ids, on), consistent=consistent)
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "tasks", [t.id for t in tasks])
        return tasks

    @observed("tasks.dependencies")
    async def dependencies(self, task_id: UUID | str) -> builtins.list[UUID]:
        """The ids of the tasks ``task_id`` depends on (sorted)."""
        rows = await self._db.fetch(*_sql.dependencies_of(self.tenant, as_uuid(task_id, "task_id")))
        return [row["depends_on"] for row in rows]

    @observed("tasks.list")
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
        consistent: bool = False,
    ) -> Page[Task]:
        """Tasks in creation order, filtered; follow ``next_cursor`` for the next page.

        ``created_after`` / ``created_before`` are datetimes with a timezone; naive ones are
        refused, since the server would read them in its own time zone. A read replica may
        serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
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
        page = await keyset_page(
            self._db,
            "tasks",
            READ_COLUMNS,
            where,
            params,
            model=Task,
            limit=limit,
            cursor=cursor,
            consistent=consistent,
        )
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "tasks", [t.id for t in page.items])
        return page

    @observed("tasks.count")
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
        consistent: bool = False,
    ) -> int:
        """How many tasks match the same filters as :meth:`list` (a read replica may answer)."""
        check_bool(consistent, "consistent")
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
        return await count_where(self._db, "tasks", where, params, consistent)

    @observed("tasks.search")
    async def search(
        self,
        text: str,
        *,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        type: str | Sequence[str] | None = None,
        limit: int = 20,
        consistent: bool = False,
    ) -> builtins.list[Task]:
        """Full-text search over task type and data, best match first.

        ``text`` is read like a web search: words, ``"quoted phrases"``, ``or``, ``-excluded``.
        A read replica may serve it; ``consistent`` as for :meth:`get`.
        """
        check_bool(consistent, "consistent")
        check_text(text, "text", max_length=_MAX_SEARCH)
        check_limit(limit)
        where, params = self._filters(None, status, type, None, None, None, None, None)
        query = sql.SQL(
            "SELECT " + READ_COLUMNS + " FROM tasks, websearch_to_tsquery('english', %s) AS q "
            "WHERE search @@ q AND {} ORDER BY ts_rank(search, q) DESC, created_at, id LIMIT %s"
        ).format(sql.SQL(" AND ").join(where))
        values = [text, *params, limit]
        found = await self._db.read(
            lambda on: on.fetch(query, values, model=Task), consistent=consistent
        )
        if self._reads_audited:
            await self._db.notes.read(self.tenant, "tasks", [t.id for t in found])
        return found

    @observed("tasks.delete")
    async def delete(self, task_id: UUID | str) -> None:
        """Delete a task; :class:`NotFound` if this tenant has none with that id.

        Tasks waiting on it (if it had not completed) are cancelled, saying why.
        """
        task = as_uuid(task_id, "task_id")
        deleted = await self._db.execute(
            "DELETE FROM tasks WHERE tenant_id = %s AND id = %s", [self.tenant, task]
        )
        # A worker of this process holding it learns at its next heartbeat, as any would.
        if deleted == 0:
            raise NotFound(f"task {task_id} does not exist", entity="task", key=task_id)

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
            add("status = ANY(%s)", [as_choice(s, TaskStatus, "status") for s in statuses])
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


_ENDED = frozenset({"failed", "dead", "cancelled"})


def _check_batch(rows: builtins.list[tuple[NewTask, builtins.list[UUID]]]) -> None:
    ids: set[UUID] = set()
    keys: set[str] = set()
    for index, (row, _) in enumerate(rows):
        if row.id in ids:
            raise ValidationError(
                f"items[{index}].id: {row.id} is given twice in the batch", field="id"
            )
        ids.add(row.id)
        if row.key is not None:
            if row.key in keys:
                raise ValidationError(
                    f"items[{index}].key: {row.key!r} is given twice in the batch", field="key"
                )
            keys.add(row.key)


def _topological(
    batch: dict[UUID, tuple[NewTask, builtins.list[UUID]]],
) -> builtins.list[UUID]:
    """The batch's ids with every task after the tasks of the batch it depends on."""
    order: builtins.list[UUID] = []
    state: dict[UUID, int] = {}  # 1: being visited, 2: placed
    for start in batch:
        if state.get(start):
            continue
        # Iterative depth-first search: a chain of a thousand steps must not hit the
        # recursion limit.
        path: builtins.list[UUID] = [start]
        stack: builtins.list[Iterable[UUID]] = [iter(batch[start][1])]
        state[start] = 1
        while stack:
            child = next((d for d in stack[-1] if d in batch), None)
            if child is None:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
            elif state.get(child) == 1:
                cycle = [*path[path.index(child) :], child]
                raise ValidationError(
                    "dependencies form a cycle: " + " -> ".join(str(t) for t in cycle),
                    field="depends_on",
                )
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(batch[child][1]))
    return order
