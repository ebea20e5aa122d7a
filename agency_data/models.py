"""The platform's records as pydantic models: agents, tasks, embeddings, and health reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "DEFAULT_TENANT",
    "Agent",
    "AgentStatus",
    "CacheStats",
    "CollectionInfo",
    "ComponentHealth",
    "Embedding",
    "Event",
    "HealthStatus",
    "IndexInfo",
    "IndexProgress",
    "Message",
    "OptimizeReport",
    "Page",
    "Session",
    "SimilarityQuery",
    "SimilarityResult",
    "StreamMessage",
    "Task",
    "TaskSchedule",
    "TaskStats",
    "TaskStatus",
    "TaskTypePolicy",
]

DEFAULT_TENANT = "default"
T = TypeVar("T")


def _id_text(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value


# An embedding's id: a string (agency_data.vectors.ids); a UUID given is taken as its text.
EmbeddingId = Annotated[str, BeforeValidator(_id_text)]


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
    DEAD = "dead"


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
    max_attempts: int = 5
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_at: datetime | None = None
    key: str | None = None
    lease_token: UUID | None = None
    lease_expires_at: datetime | None = None
    blocked_by: int = 0
    traceback: str | None = None


class Embedding(_Record):
    """A vector with what it describes (``entity_type``/``entity_id``) and free metadata."""

    id: EmbeddingId
    tenant_id: str = DEFAULT_TENANT
    entity_type: str
    entity_id: str
    vector: list[float]
    metadata: dict[str, Any] = Field(default_factory=dict)
    content: str | None = None
    created_at: datetime


class Session(BaseModel):
    """An agent's session: free data, expiring ``ttl`` seconds after its last touch."""

    id: str
    agent_id: str
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    ttl: float


class Message(BaseModel):
    """A pub/sub message as a subscriber receives it."""

    channel: str
    data: Any
    pattern: str | None = None


class StreamMessage(BaseModel):
    """A message of a durable stream; ``attempts`` counts deliveries (more than 1: redelivered);
    ``outbox_id`` names a message published through the outbox (see ``consume(dedupe=...)``)."""

    id: str
    stream: str
    data: Any
    attempts: int = 1
    # The outbox message it carries (tx.publish), the same however often it was relayed.
    outbox_id: str | None = None


class Event(BaseModel):
    """A store event (``dl.events.subscribe``): what changed, as its trigger described it.

    ``fields`` is the whole message: a task's ``type``, ``status``, ``previous`` (status),
    ``agent``, ``priority`` and ``attempts``; an agent's ``type``, ``name``, ``status`` and
    ``previous``; an embedding write's ``collection``, ``count`` and up to 1,000 ``ids``.
    """

    event: str
    # The task's or agent's id; None for embedding events (their ids are in fields["ids"]).
    id: str | None = None
    fields: dict[str, Any]
    # When the change was made (the row's updated_at; a deletion's clock time), UTC.
    at: datetime | None = None
    # The outbox message it came in: the same however often the relay sent it.
    outbox_id: str | None = None
    # The Redis stream entry it was read from.
    entry: str


class SimilarityQuery(BaseModel):
    """One query of a batch search (a mapping with the same keys does as well)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    vector: Any
    limit: int = 10
    threshold: float | None = None
    filter: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SimilarityResult:
    """One hit of a similarity search, best first.

    ``score`` is cosine similarity for cosine, the inner product for inner_product, and the
    distance itself for euclidean and manhattan; ``distance`` is pgvector's raw distance.
    A plain dataclass rather than a pydantic model: searches build many of them, and this
    costs a tenth as much (``dataclasses.asdict`` gives a dict).
    """

    id: str
    score: float
    distance: float
    entity_type: str
    entity_id: str
    metadata: dict[str, Any]
    content: str | None
    created_at: datetime
    vector: list[float] | None = None


class IndexInfo(BaseModel):
    """A collection's approximate-nearest-neighbour index."""

    name: str
    kind: Literal["hnsw", "ivfflat"]
    quantization: Literal["none", "binary"] = "none"
    options: dict[str, Any] = Field(default_factory=dict)
    valid: bool
    size_bytes: int


class CollectionInfo(BaseModel):
    """What ``describe`` reports: shape, size, storage cost and the index.

    ``bytes_per_vector`` is pgvector's format size (8 + 4 bytes a dimension for vector, 8 + 2
    for halfvec); ``table_bytes`` and the index's ``size_bytes`` are measured on disk.
    """

    name: str
    dimension: int
    metric: str
    storage: Literal["vector", "halfvec"]
    rows: int
    table_bytes: int
    bytes_per_vector: int
    index: IndexInfo | None = None


class IndexProgress(BaseModel):
    """A snapshot of an index build (from ``pg_stat_progress_create_index``)."""

    phase: str
    blocks_done: int = 0
    blocks_total: int = 0
    tuples_done: int = 0
    tuples_total: int = 0


class OptimizeReport(BaseModel):
    """What ``optimize`` looked at, did and suggests."""

    rows: int
    dead_fraction: float
    actions: list[str] = Field(default_factory=list)
    suggested_lists: int | None = None


class CacheStats(BaseModel):
    """The cache's counters since the DataLayer connected."""

    l1_hits: int
    l1_misses: int
    l2_hits: int
    l2_misses: int
    sets: int
    l1_evictions: int
    l1_entries: int
    l1_bytes: int
    degraded_reads: int
    degraded_writes: int
    invalidations_sent: int
    invalidations_received: int
    lock_waits: int
    lock_wait_seconds: float
    redis_available: bool
    l1_serving: bool = Field(
        description="whether L1 serves reads: off while the invalidation listener is down"
    )

    @property
    def l1_hit_rate(self) -> float:
        """L1 hits over L1 lookups (0 when none)."""
        total = self.l1_hits + self.l1_misses
        return self.l1_hits / total if total else 0.0

    @property
    def l2_hit_rate(self) -> float:
        """L2 hits over L2 lookups (0 when none)."""
        total = self.l2_hits + self.l2_misses
        return self.l2_hits / total if total else 0.0

    @property
    def hit_rate(self) -> float:
        """Lookups answered by any level, over lookups."""
        # Every lookup goes through L1 first when there is one; otherwise straight to L2.
        lookups = (self.l1_hits + self.l1_misses) or (self.l2_hits + self.l2_misses)
        return (self.l1_hits + self.l2_hits) / lookups if lookups else 0.0


class ComponentHealth(BaseModel):
    """How one backend is doing."""

    name: str
    up: bool
    latency_ms: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class DiskSpace(BaseModel):
    """Free and total space of a watched volume."""

    free_bytes: int
    total_bytes: int

    @property
    def free_ratio(self) -> float:
        """Free over total (1 for an empty volume)."""
        return self.free_bytes / self.total_bytes if self.total_bytes else 1.0


class ReplicationStatus(BaseModel):
    """Streaming replication as the primary sees it, or this server's lag as a replica."""

    standby: bool
    lag_seconds: float | None = Field(None, description="a replica's lag behind its primary")
    replicas: dict[str, float | None] = Field(
        default_factory=dict, description="each replica's replay lag in seconds"
    )


class HealthStatus(BaseModel):
    """The data layer's health: ``ok``, ``degraded`` (PostgreSQL up, Redis down) or ``down``."""

    status: Literal["ok", "degraded", "down"]
    components: dict[str, ComponentHealth]
    checked_at: datetime
    warnings: list[str] = Field(
        default_factory=list, description="unsafe settings, such as a superuser pool role"
    )
    disk: dict[str, DiskSpace] = Field(
        default_factory=dict, description="watched volumes (the embedded data directory's)"
    )
    replication: ReplicationStatus | None = None
    alerts: list[dict[str, Any]] = Field(
        default_factory=list, description="the layer's alerts firing now (Alert.as_dict())"
    )

    @property
    def ok(self) -> bool:
        """True when every component is up."""
        return self.status == "ok"


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next (None: no more)."""

    items: list[T]
    next_cursor: str | None = None


class TaskTypePolicy(_Record):
    """What one task type gets when a call does not say: None means the configured default."""

    type: str
    paused: bool = False
    lease_seconds: float | None = None
    max_attempts: int | None = None
    retry_first: float | None = None
    retry_most: float | None = None


class TaskSchedule(_Record):
    """A periodic task: ``cron`` or ``every_seconds``, and the task each tick enqueues."""

    name: str
    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    max_attempts: int | None = None
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_task_id: UUID | None = None


@dataclass(frozen=True)
class TaskStats:
    """The queue at a glance (one tenant).

    ``counts`` maps status -> type -> number of tasks. ``oldest_pending_age`` is how long the
    oldest task that is due and not waiting on another has waited (seconds; None when none
    is). ``expired_leases`` counts running tasks whose lease has run out and that the next
    claim or sweep will rescue; ``next_lease_expiry`` is the earliest lease still running.
    """

    counts: dict[str, dict[str, int]]
    oldest_pending_age: float | None
    scheduled: int
    blocked: int
    expired_leases: int
    next_lease_expiry: datetime | None
    paused_types: list[str]

    def total(self, status: str) -> int:
        """How many tasks have ``status``, over all types."""
        return sum(self.counts.get(status, {}).values())
