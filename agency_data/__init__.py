"""agency-data: the data layer for multi-agent AI systems.

PostgreSQL (records), pgvector (embeddings) and Redis (cache and coordination) behind one async
object::

    from agency_data import DataLayer

    async with DataLayer() as dl:
        print(await dl.health())
"""

from agency_data.config import (
    CacheConfig,
    DataLayerConfig,
    EmbeddedConfig,
    MigrationConfig,
    PostgresConfig,
    RedisConfig,
    SentinelConfig,
    VectorConfig,
)
from agency_data.errors import (
    AgencyDataError,
    BackendUnavailable,
    BackupError,
    ConfigError,
    Conflict,
    EmbeddedServerError,
    LockNotAcquired,
    LockNotOwned,
    MigrationChecksumMismatch,
    MigrationError,
    NotFound,
    PoolTimeout,
    QueryError,
    QueryTimeout,
    SerializationFailure,
    ValidationError,
)
from agency_data.manager import DataLayer
from agency_data.migrations import MigrationReport, MigrationRunner, MigrationSource, MigrationState
from agency_data.models import (
    DEFAULT_TENANT,
    Agent,
    AgentStatus,
    ComponentHealth,
    Embedding,
    HealthStatus,
    Task,
    TaskStatus,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TENANT",
    "AgencyDataError",
    "Agent",
    "AgentStatus",
    "BackendUnavailable",
    "BackupError",
    "CacheConfig",
    "ComponentHealth",
    "ConfigError",
    "Conflict",
    "DataLayer",
    "DataLayerConfig",
    "EmbeddedConfig",
    "EmbeddedServerError",
    "Embedding",
    "HealthStatus",
    "LockNotAcquired",
    "LockNotOwned",
    "MigrationChecksumMismatch",
    "MigrationConfig",
    "MigrationError",
    "MigrationReport",
    "MigrationRunner",
    "MigrationSource",
    "MigrationState",
    "NotFound",
    "PoolTimeout",
    "PostgresConfig",
    "QueryError",
    "QueryTimeout",
    "RedisConfig",
    "SentinelConfig",
    "SerializationFailure",
    "Task",
    "TaskStatus",
    "ValidationError",
    "VectorConfig",
    "__version__",
]
