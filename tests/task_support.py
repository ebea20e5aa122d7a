"""What the task-queue tests share: a worker agent, and the lease as the server sees it."""

from __future__ import annotations

from uuid import UUID

from agency_data import DataLayer, TenantScope

# A claim rescues expired leases at most this often per process and tenant (default 1 s).
FAST_RESCUE = {"rescue_interval": 0.05}


async def agent(dl: DataLayer, name: str = "w") -> UUID:
    """A new worker agent's id."""
    return (await dl.agents.create(name=name, type="worker")).id


async def seconds_left(dl: DataLayer | TenantScope, task_id: UUID) -> float:
    """How long the task's lease still runs, by the server's clock."""
    left = await dl.fetch_value(
        "SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8 "
        "FROM tasks WHERE id = %s",
        [task_id],
    )
    assert left is not None
    return float(left)


async def token_of(dl: DataLayer, task_id: UUID) -> UUID | None:
    """The lease token a task holds now (reads through the store never show it)."""
    token: UUID | None = await dl.fetch_value(
        "SELECT lease_token FROM tasks WHERE id = %s", [task_id]
    )
    return token
