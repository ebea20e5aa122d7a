"""``/v1/tasks``: queue, read, search, claim (with a long poll) and finish tasks.

Leases and fencing are the library's: a claim gives each task a ``lease_token``, and a
heartbeat, completion or failure must present it (a stale one is ``409 LeaseLost``, and the
task is left as it is). An admin key may complete or fail a task without it: the operator's
override, which moves the task whoever holds it. As in the library, only a claim hands out
the token of a live lease: reads (get, list, search) show ``lease_token: null``, so that a
reader cannot act as the holder.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field

from agency_data.errors import ValidationError
from agency_data.models import Task, TaskStats, TaskStatus
from agency_data.security.api_keys import ApiKeyRole
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant, principal_of
from agency_data.service.routes._waiting import ClientGone, longest_wait, while_connected

__all__ = ["TasksController"]

_MAX_BATCH = 1000


class NewTask(BaseModel):
    """A task to queue (see ``TaskStore.create``)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100)
    data: dict[str, Any] | None = None
    priority: int = Field(0, ge=0, le=1000)
    agent_id: UUID | None = None
    run_at: datetime | None = Field(None, description="not claimed before (with a time zone)")
    delay: float | None = Field(None, ge=0, description="seconds before it may be claimed")
    max_attempts: int | None = Field(None, ge=1, le=1000)
    key: str | None = Field(
        None, min_length=1, max_length=200, description="unique among live tasks"
    )
    on_conflict: Literal["return", "replace", "raise"] = "return"
    depends_on: list[UUID] | None = Field(None, max_length=1000)


class BatchItem(BaseModel):
    """One task of a batch; ``id`` lets later items' ``depends_on`` name it."""

    model_config = ConfigDict(extra="forbid")

    id: UUID | None = None
    type: str = Field(min_length=1, max_length=100)
    data: dict[str, Any] | None = None
    priority: int = Field(0, ge=0, le=1000)
    agent_id: UUID | None = None
    run_at: datetime | None = None
    delay: float | None = Field(None, ge=0)
    max_attempts: int | None = Field(None, ge=1, le=1000)
    key: str | None = Field(None, min_length=1, max_length=200)
    depends_on: list[UUID] | None = Field(None, max_length=1000)


class NewTasks(BaseModel):
    """Tasks to queue all at once, or none."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BatchItem] = Field(min_length=1, max_length=_MAX_BATCH)
    on_conflict: Literal["return", "replace", "raise"] = "return"


class ClaimRequest(BaseModel):
    """What to claim: up to ``n`` due tasks for ``agent_id``, waiting up to ``wait`` seconds."""

    model_config = ConfigDict(extra="forbid")

    agent_id: UUID
    types: list[str] | None = Field(None, min_length=1, max_length=100)
    n: int = Field(1, ge=1, le=1000)
    wait: float | None = Field(
        None,
        ge=0,
        le=3600,
        description="seconds to wait for work (a long poll; capped below the service's "
        "request timeout, so the answer may come sooner, empty)",
    )
    lease_seconds: float | None = Field(None, gt=0)


class Completion(BaseModel):
    """A task's result; ``lease_token`` from its claim (an admin key may omit it)."""

    model_config = ConfigDict(extra="forbid")

    lease_token: UUID | None = None
    result: Any = None


class Failure(BaseModel):
    """A failed attempt; with ``retry`` (and attempts left) the task is queued again."""

    model_config = ConfigDict(extra="forbid")

    lease_token: UUID | None = None
    error: str = Field(min_length=1, max_length=10_000)
    retry: bool = True
    traceback: str | None = Field(None, max_length=1_000_000)


class Heartbeat(BaseModel):
    """A lease to extend, by ``lease_seconds`` from now (default: as long as it was claimed)."""

    model_config = ConfigDict(extra="forbid")

    lease_token: UUID
    lease_seconds: float | None = Field(None, gt=0)


class LeaseExtended(BaseModel):
    """When the lease now runs out."""

    lease_expires_at: datetime


class Cancellation(BaseModel):
    """Why a task is cancelled."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, min_length=1, max_length=10_000)


class TaskList(BaseModel):
    """Tasks (a claim's come with their lease tokens)."""

    items: list[Task]


class TaskPage(BaseModel):
    """One page of tasks; pass ``next_cursor`` as ``cursor`` for the next (null: no more)."""

    items: list[Task]
    next_cursor: str | None = None


class TasksController(Controller):
    """Tasks of the caller's tenant."""

    path = "/v1/tasks"
    tags = ["tasks"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/", guards=[writes], summary="Queue a task")
    async def create_task(self, tenant: Tenant, data: JSONBody[NewTask]) -> Task:
        """Queue one task; with a ``key`` already live, ``on_conflict`` decides."""
        fields = data.model_dump(exclude_unset=True, exclude={"on_conflict"})
        return await tenant.tasks.create(**fields, on_conflict=data.on_conflict)

    @post("/batch", guards=[writes], summary="Queue many tasks")
    async def create_tasks(self, tenant: Tenant, data: JSONBody[NewTasks]) -> TaskList:
        """Queue every task of the batch or none, in the order given (dependencies may point
        at tasks of the batch by their ``id``)."""
        items = [item.model_dump(exclude_unset=True) for item in data.tasks]
        made = await tenant.tasks.create_many(items, on_conflict=data.on_conflict)
        return TaskList(items=made)

    @get("/stats", guards=[reads], summary="The queue at a glance")
    async def task_stats(self, tenant: Tenant) -> TaskStats:
        """Counts by status and type, the oldest due task's wait, expired leases, paused types."""
        return await tenant.tasks.stats()

    @get("/search", guards=[reads], summary="Search tasks")
    async def search_tasks(
        self,
        tenant: Tenant,
        text: Annotated[str, QueryParameter(min_length=1, max_length=1000)],
        status: Annotated[list[TaskStatus] | None, QueryParameter(description="statuses")] = None,
        type: Annotated[list[str] | None, QueryParameter(description="task types")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 20,
    ) -> TaskList:
        """Full-text search over type and data, best match first (words, "phrases", or, -not)."""
        found = await tenant.tasks.search(text, status=status, type=type, limit=limit)
        return TaskList(items=found)

    @get("/{task_id:uuid}", guards=[reads], summary="Get a task")
    async def get_task(self, tenant: Tenant, task_id: FromPath[UUID]) -> Task:
        """The task with ``task_id``."""
        return await tenant.tasks.get(task_id)

    @get("/", guards=[reads], summary="List tasks")
    async def list_tasks(
        self,
        tenant: Tenant,
        agent_id: Annotated[UUID | None, QueryParameter(description="the assigned agent")] = None,
        status: Annotated[list[TaskStatus] | None, QueryParameter(description="statuses")] = None,
        type: Annotated[list[str] | None, QueryParameter(description="task types")] = None,
        priority_min: Annotated[int | None, QueryParameter(ge=0, le=1000)] = None,
        priority_max: Annotated[int | None, QueryParameter(ge=0, le=1000)] = None,
        created_after: Annotated[datetime | None, QueryParameter(description="with a zone")] = None,
        created_before: Annotated[
            datetime | None, QueryParameter(description="with a zone")
        ] = None,
        data_contains: Annotated[
            str | None,
            QueryParameter(max_length=10_000, description="a JSON object the data contains"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=1000)] = None,
    ) -> TaskPage:
        """Tasks in creation order, filtered; follow ``next_cursor`` for the next page."""
        page = await tenant.tasks.list(
            agent_id=agent_id,
            status=status,
            type=type,
            priority_min=priority_min,
            priority_max=priority_max,
            created_after=created_after,
            created_before=created_before,
            data_contains=_json_object(data_contains),
            limit=limit,
            cursor=cursor,
        )
        return TaskPage(items=page.items, next_cursor=page.next_cursor)

    @delete("/{task_id:uuid}", guards=[writes], summary="Delete a task")
    async def delete_task(self, tenant: Tenant, task_id: FromPath[UUID]) -> None:
        """Delete the task; tasks waiting on it (if it had not completed) are cancelled."""
        await tenant.tasks.delete(task_id)

    @post("/claim", guards=[writes], status_code=200, summary="Claim tasks")
    async def claim_tasks(
        self, request: Request[Any, Any, Any], tenant: Tenant, data: JSONBody[ClaimRequest]
    ) -> TaskList:
        """Take up to ``n`` due tasks, each leased with a ``lease_token``; with ``wait``, wait
        for work (empty ``items`` if none came). If the client leaves during the wait, what
        the claim took goes back to the queue untouched."""
        # An unknown agent is refused up front, rather than after a wait for nothing (the
        # database checks it only when a task is taken).
        await tenant.agents.get(data.agent_id)
        wait = None if data.wait is None else longest_wait(request, data.wait)
        claiming = tenant.tasks.claim(
            data.agent_id, data.types, data.n, wait=wait, lease_seconds=data.lease_seconds
        )
        try:
            claimed = await while_connected(request, claiming, tenant.tasks.unclaim)
        except ClientGone:
            return TaskList(items=[])  # for nobody: what it took went back to the queue
        return TaskList(items=claimed)

    @post("/{task_id:uuid}/heartbeat", guards=[writes], status_code=200, summary="Extend a lease")
    async def heartbeat_task(
        self, tenant: Tenant, task_id: FromPath[UUID], data: JSONBody[Heartbeat]
    ) -> LeaseExtended:
        """Extend the lease the token names; ``409 LeaseLost`` if it is gone."""
        expires = await tenant.tasks.heartbeat(
            task_id, lease_seconds=data.lease_seconds, lease_token=data.lease_token
        )
        return LeaseExtended(lease_expires_at=expires)

    @post("/{task_id:uuid}/complete", guards=[writes], status_code=200, summary="Complete a task")
    async def complete_task(
        self,
        request: Request[Any, Any, Any],
        tenant: Tenant,
        task_id: FromPath[UUID],
        data: JSONBody[Completion],
    ) -> Task:
        """Record the result of a running task held under ``lease_token``."""
        override = _override(request, data.lease_token, "complete")
        return await tenant.tasks.complete(
            task_id, data.result, lease_token=data.lease_token, override=override
        )

    @post("/{task_id:uuid}/fail", guards=[writes], status_code=200, summary="Fail an attempt")
    async def fail_task(
        self,
        request: Request[Any, Any, Any],
        tenant: Tenant,
        task_id: FromPath[UUID],
        data: JSONBody[Failure],
    ) -> Task:
        """Record a failed attempt: queued again after a backoff (``retry`` and attempts left),
        ``dead`` when out of attempts, ``failed`` for good with ``retry: false``."""
        override = _override(request, data.lease_token, "fail")
        return await tenant.tasks.fail(
            task_id,
            data.error,
            retry=data.retry,
            traceback=data.traceback,
            lease_token=data.lease_token,
            override=override,
        )

    @post("/{task_id:uuid}/cancel", guards=[writes], status_code=200, summary="Cancel a task")
    async def cancel_task(
        self, tenant: Tenant, task_id: FromPath[UUID], data: JSONBody[Cancellation | None] = None
    ) -> Task:
        """Cancel a pending or running task (and those depending on it)."""
        return await tenant.tasks.cancel(task_id, None if data is None else data.reason)

    @post("/{task_id:uuid}/retry", guards=[writes], status_code=200, summary="Retry a task")
    async def retry_task(self, tenant: Tenant, task_id: FromPath[UUID]) -> Task:
        """Put a failed or dead task back in the queue."""
        return await tenant.tasks.retry(task_id)


def _override(request: Request[Any, Any, Any], token: UUID | None, action: str) -> bool:
    """Whether a move without a lease token is the admin's override (or refused)."""
    if token is not None:
        return False
    if principal_of(request).role.allows(ApiKeyRole.ADMIN):
        return True
    raise ValidationError(
        f"lease_token is required to {action} a task (the one its claim gave); only an admin "
        "key may omit it, as an operator's override",
        field="lease_token",
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValidationError(
            "data_contains must be a JSON object", field="data_contains"
        ) from None
    if not isinstance(value, dict):
        raise ValidationError("data_contains must be a JSON object", field="data_contains")
    return value
