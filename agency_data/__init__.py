"""agency-data: the data layer for multi-agent AI systems.

PostgreSQL (records), pgvector (embeddings) and Redis (cache and coordination) behind one async
object::

    from agency_data import DataLayer

    async with DataLayer() as dl:
        print(await dl.health())
"""

from agency_data.admin import Admin
from agency_data.cache import Cache, escape_glob
from agency_data.config import (
    AlertsConfig,
    CacheConfig,
    DataLayerConfig,
    EmbeddedConfig,
    MigrationConfig,
    MonitoringConfig,
    PostgresConfig,
    RedisConfig,
    SentinelConfig,
    TasksConfig,
    VectorConfig,
)
from agency_data.coord import Lock, PubSub, ScriptRegistry, SessionStore, Streams
from agency_data.errors import (
    AgencyDataError,
    BackendUnavailable,
    BackupError,
    ChangesLost,
    ConfigError,
    Conflict,
    EmbeddedServerError,
    EmbedderError,
    LeaseLost,
    LockNotAcquired,
    LockNotOwned,
    MigrationChecksumMismatch,
    MigrationError,
    NotFound,
    PermissionDenied,
    PoolTimeout,
    QueryError,
    QueryTimeout,
    SerializationFailure,
    StorageFull,
    TaskCancelled,
    UsageError,
    ValidationError,
)
from agency_data.events import Events
from agency_data.manager import DataLayer
from agency_data.migrations import MigrationReport, MigrationRunner, MigrationSource, MigrationState
from agency_data.models import (
    DEFAULT_TENANT,
    Agent,
    AgentStatus,
    CacheStats,
    CollectionInfo,
    ComponentHealth,
    DiskSpace,
    Embedding,
    Event,
    HealthStatus,
    IndexInfo,
    IndexProgress,
    Message,
    OptimizeReport,
    Page,
    ReplicationStatus,
    Session,
    SimilarityQuery,
    SimilarityResult,
    StreamMessage,
    Task,
    TaskSchedule,
    TaskStats,
    TaskStatus,
    TaskTypePolicy,
)
from agency_data.observability.alerts import Alert
from agency_data.observability.statements import StatementStats
from agency_data.postgres.agents import AgentStore
from agency_data.postgres.database import Transaction
from agency_data.scope import TenantScope
from agency_data.security.roles import RoleNames
from agency_data.tasks import Job, TaskStore, Worker
from agency_data.vectors import (
    Collection,
    Embedder,
    EmbeddingStore,
    ManagedCollection,
    ManagedEmbeddingStore,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TENANT",
    "Admin",
    "AgencyDataError",
    "Agent",
    "AgentStatus",
    "AgentStore",
    "Alert",
    "AlertsConfig",
    "BackendUnavailable",
    "BackupError",
    "Cache",
    "CacheConfig",
    "CacheStats",
    "ChangesLost",
    "Collection",
    "CollectionInfo",
    "ComponentHealth",
    "ConfigError",
    "Conflict",
    "DataLayer",
    "DataLayerConfig",
    "DiskSpace",
    "EmbeddedConfig",
    "EmbeddedServerError",
    "Embedder",
    "EmbedderError",
    "Embedding",
    "EmbeddingStore",
    "Event",
    "Events",
    "HealthStatus",
    "IndexInfo",
    "IndexProgress",
    "Job",
    "LeaseLost",
    "Lock",
    "LockNotAcquired",
    "LockNotOwned",
    "ManagedCollection",
    "ManagedEmbeddingStore",
    "Message",
    "MigrationChecksumMismatch",
    "MigrationConfig",
    "MigrationError",
    "MigrationReport",
    "MigrationRunner",
    "MigrationSource",
    "MigrationState",
    "MonitoringConfig",
    "NotFound",
    "OptimizeReport",
    "Page",
    "PermissionDenied",
    "PoolTimeout",
    "PostgresConfig",
    "PubSub",
    "QueryError",
    "QueryTimeout",
    "RedisConfig",
    "ReplicationStatus",
    "RoleNames",
    "ScriptRegistry",
    "SentinelConfig",
    "SerializationFailure",
    "Session",
    "SessionStore",
    "SimilarityQuery",
    "SimilarityResult",
    "StatementStats",
    "StorageFull",
    "StreamMessage",
    "Streams",
    "Task",
    "TaskCancelled",
    "TaskSchedule",
    "TaskStats",
    "TaskStatus",
    "TaskStore",
    "TaskTypePolicy",
    "TasksConfig",
    "TenantScope",
    "Transaction",
    "UsageError",
    "ValidationError",
    "VectorConfig",
    "Worker",
    "__version__",
    "escape_glob",
]
