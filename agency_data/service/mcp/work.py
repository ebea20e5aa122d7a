"""The coordination tools: tasks (submit, claim, heartbeat, complete, fail), sessions and locks."""

from __future__ import annotations

import re
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from agency_data.errors import LockNotOwned
from agency_data.models import Task
from agency_data.security.api_keys import ApiKeyRole
from agency_data.service.mcp._access import READ, WRITE, Access

__all__ = ["MAX_WAIT", "add_work_tools"]

MAX_WAIT = 20.0
"""The longest a claim or a lock may wait, in seconds: a tool call blocks its client, and
clients commonly give up on a call after 30 to 60 s."""

_TOKEN = re.compile(r"[0-9a-f]{32}")

TaskId = Annotated[str, Field(description="the task's id (a UUID)")]
LeaseToken = Annotated[str, Field(description="the lease_token claim_task returned")]
Wait = Annotated[
    float, Field(ge=0, le=MAX_WAIT, description="seconds to wait when nothing is available now")
]


def add_work_tools(server: MCPServer[Any], access: Access) -> None:
    """Register the task, session and lock tools of ``server``."""

    def waited(wait: float) -> float:
        # Below the service's request timeout too, as the HTTP API's long polls are.
        return min(wait, access.config.request_timeout * 0.8)

    @server.tool(description="Queue a task for an agent (or any agent) to claim.")
    async def submit_task(
        type: Annotated[str, Field(description="what kind of work it is")],
        data: Annotated[dict[str, Any] | None, Field(description="its input")] = None,
        priority: Annotated[int, Field(ge=0, le=1000, description="higher first")] = 0,
        agent_id: Annotated[str | None, Field(description="the agent it is for")] = None,
        delay: Annotated[float | None, Field(ge=0, description="seconds before it is due")] = None,
        key: Annotated[
            str | None, Field(description="a key unique among live tasks: a repeat returns it")
        ] = None,
        max_attempts: Annotated[int | None, Field(ge=1, le=1000)] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            task = await tenant.tasks.create(
                type,
                data,
                priority,
                agent_id,
                delay=delay,
                key=key,
                max_attempts=max_attempts,
            )
            return _task(task)

    @server.tool(
        description="Claim due tasks for an agent: each comes back running, with the "
        "lease_token that completing, failing or extending it takes. Empty items when none "
        "came within the wait."
    )
    async def claim_task(
        agent_id: Annotated[str, Field(description="the claiming agent's id (a UUID)")],
        types: Annotated[list[str] | None, Field(description="only tasks of these types")] = None,
        n: Annotated[int, Field(ge=1, le=100, description="at most this many")] = 1,
        wait: Wait = 0.0,
        lease_seconds: Annotated[
            float | None, Field(gt=0, le=86_400, description="the lease's length")
        ] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            claimed = await tenant.tasks.claim(
                agent_id, types, n, wait=waited(wait), lease_seconds=lease_seconds
            )
            return {"items": [_task(task) for task in claimed]}

    @server.tool(description="Extend the lease of a task this agent is working on.")
    async def heartbeat_task(
        task_id: TaskId,
        lease_token: LeaseToken,
        lease_seconds: Annotated[float | None, Field(gt=0, le=86_400)] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            expires = await tenant.tasks.heartbeat(
                task_id, lease_seconds=lease_seconds, lease_token=lease_token
            )
            return {"lease_expires_at": expires.isoformat()}

    @server.tool(description="Complete a claimed task with its result.")
    async def complete_task(
        task_id: TaskId,
        lease_token: Annotated[
            str | None,
            Field(
                description="the lease_token claim_task returned (only an admin key may omit it)"
            ),
        ] = None,
        result: Annotated[Any, Field(description="any JSON value")] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            await _fenced(access, lease_token, "complete_task")
            task = await tenant.tasks.complete(task_id, result, lease_token=lease_token)
            return _task(task)

    @server.tool(
        description="Record a failed attempt of a claimed task: retried later while attempts "
        "remain (unless retry is false), else dead."
    )
    async def fail_task(
        task_id: TaskId,
        error: Annotated[str, Field(description="what went wrong")],
        lease_token: Annotated[
            str | None,
            Field(
                description="the lease_token claim_task returned (only an admin key may omit it)"
            ),
        ] = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            await _fenced(access, lease_token, "fail_task")
            task = await tenant.tasks.fail(task_id, error, retry=retry, lease_token=lease_token)
            return _task(task)

    @server.tool(
        description="Read a session's data.", annotations=ToolAnnotations(read_only_hint=True)
    )
    async def get_session(
        session_id: Annotated[str, Field(description="the session's id")],
    ) -> dict[str, Any]:
        async with access.tool(READ) as tenant:
            session = await tenant.sessions.get(session_id)
            return session.model_dump(mode="json")

    @server.tool(
        description="Open a session (no session_id; agent_id needed) or change one's data "
        "(merged into what it holds unless merge is false). Either way its expiry slides."
    )
    async def set_session(
        data: Annotated[dict[str, Any], Field(description="the data (top-level keys)")],
        session_id: Annotated[str | None, Field(description="the session to change")] = None,
        agent_id: Annotated[str | None, Field(description="the new session's agent")] = None,
        merge: bool = True,
        ttl: Annotated[
            float | None, Field(gt=0, description="seconds it lives after its last touch")
        ] = None,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            sessions = tenant.sessions
            if session_id is None:
                if agent_id is None:
                    raise ToolError(
                        "a new session needs agent_id (or pass session_id to change one)"
                    )
                session = await sessions.create(agent_id, data, ttl)
            else:
                session = await sessions.update(session_id, data, merge=merge)
                if ttl is not None:
                    session = await sessions.touch(session_id, ttl)
            return session.model_dump(mode="json")

    @server.tool(
        description="Take a lock for ttl seconds (waiting up to wait for it). Keep the token: "
        "releasing takes it. fencing_token grows with every grant, to guard writes with."
    )
    async def acquire_lock(
        name: Annotated[str, Field(description="the lock's name")],
        ttl: Annotated[float, Field(gt=0, le=86_400, description="seconds it is held")] = 30.0,
        wait: Wait = 0.0,
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            lock = tenant.lock(name, ttl=ttl, wait=waited(wait))
            fence = await lock.acquire()
            return {"name": lock.name, "token": lock.holder, "fencing_token": fence, "ttl": ttl}

    @server.tool(description="Release a lock taken with acquire_lock, proving it with its token.")
    async def release_lock(
        name: Annotated[str, Field(description="the lock's name")],
        token: Annotated[str, Field(description="the token acquire_lock returned")],
    ) -> dict[str, Any]:
        async with access.tool(WRITE) as tenant:
            if not _TOKEN.fullmatch(token):
                raise ToolError("token must be the 32-character token acquire_lock returned")
            lock = tenant.lock(name, holder=token)
            try:
                await lock.release()
            except LockNotOwned:
                raise ToolError(
                    f"lock {name!r} is not held with this token: it expired (its ttl ran out), "
                    "was released already, or the token is another grant's"
                ) from None
            return {"name": lock.name, "released": True}


async def _fenced(access: Access, lease_token: str | None, tool: str) -> None:
    # An id without its lease moves the task whoever holds it: the operator's override only.
    if lease_token is None and not (await access.caller()).role.allows(ApiKeyRole.ADMIN):
        raise ToolError(
            f"{tool} needs the lease_token claim_task returned (only an admin key may finish "
            "a task without it)"
        )


def _task(task: Task) -> dict[str, Any]:
    return task.model_dump(mode="json", exclude={"traceback"})
