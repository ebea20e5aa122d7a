"""The platform's records as pydantic models: agents, tasks, embeddings, and health reports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_TENANT",
    "Agent",
    "AgentStatus",
    "ComponentHealth",
    "Embedding",
    "HealthStatus",
    "Page",
    "Task",
    "TaskStatus",
]

DEFAULT_TENANT = "default"
T = TypeVar("T")


class AgentStatus(StrEnum):
    """Whether an agent takes work."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    MAINTENANCE = "maintenance"


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class Agent(_Record):
    """An agent registered on the platform."""

    id: UUID
    tenant_id: str = DEFAULT_TENANT
    name: str
    type: str
    capabilities: dict[str, Any] = Field(default_factory=dict)
    status: AgentStatus = AgentStatus.ACTIVE
    version: int = 1
    created_at: datetime
    updated_at: datetime


class Task(_Record):
    """A unit of work, queued for (and claimed by) an agent."""

    id: UUID
    tenant_id: str = DEFAULT_TENANT
    agent_id: UUID | None = None
    type: str
    status: TaskStatus = TaskStatus.PENDING
    priority: int = 0
    data: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Embedding(_Record):
    """A vector with what it describes (``entity_type``/``entity_id``) and free metadata."""

    id: UUID
    tenant_id: str = DEFAULT_TENANT
    collection: str = "default"
    entity_type: str
    entity_id: str
    vector: list[float]
    metadata: dict[str, Any] = Field(default_factory=dict)
    content: str | None = None
    created_at: datetime


class ComponentHealth(BaseModel):
    """How one backend is doing."""

    name: str
    up: bool
    latency_ms: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class HealthStatus(BaseModel):
    """The data layer's health: ``ok``, ``degraded`` (PostgreSQL up, Redis down) or ``down``."""

    status: Literal["ok", "degraded", "down"]
    components: dict[str, ComponentHealth]
    checked_at: datetime

    @property
    def ok(self) -> bool:
        """True when every component is up."""
        return self.status == "ok"


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next (None: no more)."""

    items: list[T]
    next_cursor: str | None = None
