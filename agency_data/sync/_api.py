"""The synchronous twins of the async classes (see :mod:`agency_data.sync`).

GENERATED from the async classes' source by agency_data/sync/_generate.py: do not edit;
run ``python -m agency_data.sync._generate`` after changing the async API.

Left out of the sync face: ``DataLayer.pool``, the asyncio connection pool (dl.aio.pool, from async code);
``DataLayer.redis``, the redis.asyncio client (dl.aio.redis, from async code); ``Lock.lost``,
an asyncio.Event (lock.held says the same); ``Transaction.conn``, the transaction's asyncio
connection.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterable, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, Unpack, cast, overload
from uuid import UUID

import numpy as np
from numpy import typing as npt
from psycopg import sql

from agency_data.admin import Admin as AsyncAdmin
from agency_data.audit.trail import Anchor, AuditRecord, ChainReport
from agency_data.audit.trail import AuditTrail as AsyncAuditTrail
from agency_data.backup.drill import VerifyReport
from agency_data.backup.service import Backups as AsyncBackups
from agency_data.backup.service import RecoveryWindow
from agency_data.backup.sets import BackupSet
from agency_data.cache.store import Cache as AsyncCache
from agency_data.config import (
    AlertsConfig,
    DataLayerConfig,
    MemoryWeights,
    OutboxConfig,
    RetentionConfig,
    SubjectsConfig,
)
from agency_data.coord.locks import Lock as AsyncLock
from agency_data.coord.pubsub import PubSub as AsyncPubSub
from agency_data.coord.pubsub import Streams as AsyncStreams
from agency_data.coord.sessions import SessionStore as AsyncSessionStore
from agency_data.errors import AgencyDataError
from agency_data.events.subscriber import Events as AsyncEvents
from agency_data.manager import DataLayer as AsyncDataLayer
from agency_data.memory._base import MemoryBase as AsyncMemoryBase
from agency_data.memory._base import Query as _base_Query
from agency_data.memory._graph_sql import Direction
from agency_data.memory.graph import KnowledgeGraph as AsyncKnowledgeGraph
from agency_data.memory.graph_models import Entity, EntityMatch, Neighbour, Relation
from agency_data.memory.graph_models import Path as graph_models_Path
from agency_data.memory.models import (
    MemoryChange,
    MemoryRecord,
    MemoryVersion,
    Recalled,
    Remembered,
)
from agency_data.memory.store import ManagedMemory as AsyncManagedMemory
from agency_data.memory.store import Memory as AsyncMemory
from agency_data.memory.upkeep import Upkeep as AsyncUpkeep
from agency_data.migrations import Migration, MigrationReport, MigrationSource, MigrationState
from agency_data.migrations.runner import MigrationRunner as AsyncMigrationRunner
from agency_data.models import (
    Agent,
    AgentStatus,
    CacheStats,
    CollectionInfo,
    Embedding,
    Event,
    HealthStatus,
    Message,
    OptimizeReport,
    Page,
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
from agency_data.observability.alerts import Alerts as AsyncAlerts
from agency_data.observability.methods import MonitoringMethods as AsyncMonitoringMethods
from agency_data.observability.metrics import Metrics
from agency_data.observability.sampler import Sample
from agency_data.observability.server import MetricsEndpoint as AsyncMetricsEndpoint
from agency_data.observability.statements import StatementStats
from agency_data.outbox.changes import Change, ChangeConsumer, FeedStatus
from agency_data.outbox.changes import ChangeFeed as AsyncChangeFeed
from agency_data.outbox.changes import Changes as AsyncChanges
from agency_data.outbox.relay import Relay as AsyncRelay
from agency_data.postgres.agents import _UNSET
from agency_data.postgres.agents import AgentStore as AsyncAgentStore
from agency_data.postgres.database import Isolation, Params, Query
from agency_data.postgres.database import Transaction as AsyncTransaction
from agency_data.redis.scripts import ScriptRegistry as AsyncScriptRegistry
from agency_data.redis.subscription import Lost, Resubscribed
from agency_data.retention.runner import Retention as AsyncRetention
from agency_data.retention.runner import RetentionReport
from agency_data.scope import M, T
from agency_data.scope import QueryMethods as AsyncQueryMethods
from agency_data.scope import TenantScope as AsyncTenantScope
from agency_data.security.api_keys import ApiKey, ApiKeyRole
from agency_data.security.api_keys import ApiKeys as AsyncApiKeys
from agency_data.security.keys import KeyManager
from agency_data.security.rekey import KeyAdmin as AsyncKeyAdmin
from agency_data.security.rekey import ReencryptReport
from agency_data.security.roles import RoleNames
from agency_data.subjects.rights import ErasureReport
from agency_data.subjects.rights import SubjectRights as AsyncSubjectRights
from agency_data.sync._wrapper import Wrapper, each_callback
from agency_data.sync.portal import Portal
from agency_data.tasks.policies import PolicyOps as AsyncPolicyOps
from agency_data.tasks.queue import Job as AsyncJob
from agency_data.tasks.queue import QueueOps as AsyncQueueOps
from agency_data.tasks.schedules import ScheduleOps as AsyncScheduleOps
from agency_data.tasks.store import OnConflict
from agency_data.tasks.store import TaskStore as AsyncTaskStore
from agency_data.tasks.worker import Worker as AsyncWorker
from agency_data.vectors.admin import CollectionAdmin as AsyncCollectionAdmin
from agency_data.vectors.admin import ManagedCollection as AsyncManagedCollection
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.collection import Collection as AsyncCollection
from agency_data.vectors.embedders import Embedder
from agency_data.vectors.indexes import IndexOptions
from agency_data.vectors.prewarm import PrewarmReport
from agency_data.vectors.store import EmbeddingStore as AsyncEmbeddingStore
from agency_data.vectors.store import ManagedEmbeddingStore as AsyncManagedEmbeddingStore

__all__ = [
    "Admin",
    "AgentStore",
    "Alerts",
    "ApiKeys",
    "AuditTrail",
    "Backups",
    "Cache",
    "ChangeFeed",
    "Changes",
    "Collection",
    "CollectionAdmin",
    "DataLayer",
    "EmbeddingStore",
    "Events",
    "Job",
    "KeyAdmin",
    "KnowledgeGraph",
    "Lock",
    "ManagedCollection",
    "ManagedEmbeddingStore",
    "ManagedMemory",
    "Memory",
    "MemoryBase",
    "MetricsEndpoint",
    "MigrationRunner",
    "MonitoringMethods",
    "PolicyOps",
    "PubSub",
    "QueryMethods",
    "QueueOps",
    "Relay",
    "Retention",
    "ScheduleOps",
    "ScriptRegistry",
    "SessionStore",
    "Streams",
    "SubjectRights",
    "TaskStore",
    "TenantScope",
    "Transaction",
    "Upkeep",
    "Worker",
]


class QueryMethods(Wrapper):
    """Synchronous twin of :class:`agency_data.scope.QueryMethods`.

    SQL and transactions (the design's executeQuery / executeTransaction), for any view.
    """

    __slots__ = ()
    _aio: AsyncQueryMethods
    _aio_type: ClassVar[type[Any]] = AsyncQueryMethods

    @property
    def aio(self) -> AsyncQueryMethods:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def execute(self, query: Query, params: Params = None, *, timeout: float | None = None) -> int:
        """Run a statement with bind parameters; return the number of rows it affected."""
        return self._portal.call(self._aio.execute(query, params, timeout=timeout))

    @overload
    def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[dict[str, Any]]: ...

    @overload
    def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[M]: ...

    def fetch(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> list[dict[str, Any]] | list[M]:
        """All rows of a query, as dicts or as instances of a pydantic ``model``."""
        aio: Any = self._aio
        return cast(
            "list[dict[str, Any]] | list[M]",
            self._portal.call(
                aio.fetch(
                    query,
                    params,
                    model=model,
                    timeout=timeout,
                    replica=replica,
                    consistent=consistent,
                )
            ),
        )

    @overload
    def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> dict[str, Any] | None: ...

    @overload
    def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M],
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> M | None: ...

    def fetch_one(
        self,
        query: Query,
        params: Params = None,
        *,
        model: type[M] | None = None,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> dict[str, Any] | M | None:
        """The first row of a query, or None. ``replica``, ``consistent``: as :meth:`fetch`."""
        aio: Any = self._aio
        return cast(
            "dict[str, Any] | M | None",
            self._portal.call(
                aio.fetch_one(
                    query,
                    params,
                    model=model,
                    timeout=timeout,
                    replica=replica,
                    consistent=consistent,
                )
            ),
        )

    def fetch_value(
        self,
        query: Query,
        params: Params = None,
        *,
        timeout: float | None = None,
        replica: bool = False,
        consistent: bool = False,
    ) -> Any:
        """The first column of the first row, or None. ``replica``, ``consistent``: as
        :meth:`fetch`."""
        return self._portal.call(
            self._aio.fetch_value(
                query, params, timeout=timeout, replica=replica, consistent=consistent
            )
        )

    def transaction(
        self,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        consistent: bool = False,
    ) -> AbstractContextManager[Transaction]:
        """``with dl.transaction() as tx:`` every store call inside joins it."""
        return self._portal.enter(
            self._aio.transaction(isolation=isolation, readonly=readonly, consistent=consistent),
            Transaction._of,
        )

    def run_in_transaction(
        self,
        fn: Callable[[Transaction], T],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> T:
        """Run ``fn(tx)`` in a transaction, retried with backoff on conflicts and deadlocks."""
        return self._portal.call(
            self._aio.run_in_transaction(
                self._portal.callback(fn, Transaction._of), isolation=isolation, retries=retries
            )
        )

    def execute_transaction(
        self,
        operations: Iterable[tuple[Query, Params] | Callable[[Transaction], Any]],
        *,
        isolation: Isolation | None = None,
        retries: int | None = None,
    ) -> list[Any]:
        """Run ``(sql, params)`` pairs or ``async fn(tx)`` callables atomically; return each result."""
        return self._portal.call(
            self._aio.execute_transaction(
                each_callback(operations, self._portal, Transaction._of),
                isolation=isolation,
                retries=retries,
            )
        )


class CollectionAdmin(Wrapper):
    """Synchronous twin of :class:`agency_data.vectors.admin.CollectionAdmin`.

    Collection DDL and index upkeep, by collection name, as the owner role.
    """

    __slots__ = ()
    _aio: AsyncCollectionAdmin
    _aio_type: ClassVar[type[Any]] = AsyncCollectionAdmin

    @property
    def aio(self) -> AsyncCollectionAdmin:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        storage: str = "vector",
        *,
        exist_ok: bool = False,
    ) -> None:
        """Create a collection (shared by all tenants; each sees only its own rows)."""
        return self._portal.call(
            self._aio.create_collection(name, dimension, metric, storage, exist_ok=exist_ok)
        )

    def drop_collection(self, name: str, *, sole_tenant: str | None = None) -> None:
        """Drop a collection with every embedding in it, for all tenants."""
        return self._portal.call(self._aio.drop_collection(name, sole_tenant=sole_tenant))

    def refuse_shared(self, name: str, tenant: str) -> None:
        """:class:`Conflict` when a tenant other than ``tenant`` has rows in collection
        ``name`` (before a tenant's administrator changes its index)."""
        return self._portal.call(self._aio.refuse_shared(name, tenant))

    def list_collections(self) -> list[str]:
        """The names of every collection."""
        return self._portal.call(self._aio.list_collections())

    def create_index(
        self, collection: str, kind: str = "hnsw", **options: Unpack[IndexOptions]
    ) -> None:
        """Build a collection's ANN index concurrently; see :meth:`ManagedCollection.create_index`."""
        return self._portal.call(self._aio.create_index(collection, kind, **options))

    def drop_index(self, collection: str) -> None:
        """Drop a collection's ANN index (searches become exact scans)."""
        return self._portal.call(self._aio.drop_index(collection))

    def reindex(self, collection: str) -> None:
        """Rebuild a collection's ANN index concurrently."""
        return self._portal.call(self._aio.reindex(collection))

    def optimize(self, collection: str) -> OptimizeReport:
        """ANALYZE; rebuild a bloated index; resize IVFFlat lists (rows: every tenant's);
        rebuild an IVFFlat index whose estimated recall (the recall probe's) is under
        ``monitoring.alerts.recall``."""
        return self._portal.call(self._aio.optimize(collection))

    def prewarm(self, names: Sequence[str] | None = None) -> PrewarmReport:
        """Read collections' vector indexes, then their tables, into PostgreSQL's memory."""
        return self._portal.call(self._aio.prewarm(names))


class Admin(QueryMethods, CollectionAdmin):
    """Synchronous twin of :class:`agency_data.admin.Admin`.

    What the owner role does: collections, indexes, checks; raw SQL across tenants.
    """

    __slots__ = ()
    _aio: AsyncAdmin
    _aio_type: ClassVar[type[Any]] = AsyncAdmin

    @property
    def aio(self) -> AsyncAdmin:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def keys(self) -> KeyAdmin:
        """The tenants' data keys: rotate the KEK, re-encrypt, retire, crypto-shred."""
        return self._child("keys", self._live().keys, KeyAdmin)

    @property
    def api_keys(self) -> ApiKeys:
        """The service's API keys: make, list, revoke and check them."""
        return self._child("api_keys", self._live().api_keys, ApiKeys)

    def top_statements(self, limit: int = 20, order: str = "total") -> list[StatementStats]:
        """The costliest statements of the layer's database, from ``pg_stat_statements``."""
        return self._portal.call(self._aio.top_statements(limit, order))

    def audit(self, table: str, enabled: bool = True, detail: str = "digest") -> list[str]:
        """Record every change to ``table`` in the audit trail (or stop); the tables switched."""
        return self._portal.call(self._aio.audit(table, enabled, detail))

    @property
    def system_audit(self) -> AuditTrail:
        """The system trail: the layer's own actions (collection and index DDL, auditing
        switched, migrations), chained apart from every tenant's."""
        return self._child("system_audit", self._live().system_audit, AuditTrail)

    def audit_anchors(self) -> list[Anchor]:
        """Every audit chain's head now (what ``audit.anchor_interval`` logs)."""
        return self._portal.call(self._aio.audit_anchors())

    def verify_audit(self) -> list[ChainReport]:
        """Walk every audit chain (the system trail's and each tenant's), in tenant order."""
        return self._portal.call(self._aio.verify_audit())

    def role_warnings(self) -> list[str]:
        """What is unsafe about the pool's role (superuser, BYPASSRLS, owns tables); [] if fine."""
        return self._portal.call(self._aio.role_warnings())


class AuditTrail(Wrapper):
    """Synchronous twin of :class:`agency_data.audit.trail.AuditTrail`.

    The audit trail of one tenant (``dl.tenant(t).audit``).
    """

    __slots__ = ()
    _aio: AsyncAuditTrail
    _aio_type: ClassVar[type[Any]] = AsyncAuditTrail

    @property
    def aio(self) -> AsyncAuditTrail:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def verify(self, anchors: Sequence[Anchor] = ()) -> ChainReport:
        """Walk the chain; the first broken record, if any, and the head (an anchor)."""
        return self._portal.call(self._aio.verify(anchors))

    def show(
        self,
        *,
        actor: str | None = None,
        entity_type: str | None = None,
        entity_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest records first, filtered by actor, entity and time."""
        return self._portal.call(
            self._aio.show(
                actor=actor,
                entity_type=entity_type,
                entity_id=entity_id,
                since=since,
                until=until,
                limit=limit,
            )
        )


class Backups(Wrapper):
    """Synchronous twin of :class:`agency_data.backup.service.Backups`.

    Create, list and verify backup sets in the repository (``backup.directory``).
    """

    __slots__ = ()
    _aio: AsyncBackups
    _aio_type: ClassVar[type[Any]] = AsyncBackups

    @property
    def aio(self) -> AsyncBackups:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def repository(self) -> Path:
        """The async object's ``repository``."""
        return self._aio.repository

    @property
    def keep_full(self) -> int:
        """The async object's ``keep_full``."""
        return self._aio.keep_full

    @property
    def keep_days(self) -> float | None:
        """The async object's ``keep_days``."""
        return self._aio.keep_days

    def create(self, *, incremental: bool = False) -> BackupSet:
        """Take a new set: a full base backup, or with ``incremental`` one on the latest set."""
        return self._portal.call(self._aio.create(incremental=incremental))

    def list(self) -> builtins.list[BackupSet]:
        """The sets in the repository, oldest first."""
        return self._portal.run_sync(self._aio.list)

    def window(self) -> RecoveryWindow | None:
        """The times a restore can reach: from the oldest set's end to the newest archived
        WAL segment (or to the newest set's end, without an archive); None without a set."""
        return self._portal.run_sync(self._aio.window)

    def restore(
        self,
        name: str,
        data_dir: Path,
        *,
        target_time: datetime | None = None,
        target_lsn: str | None = None,
    ) -> Path:
        """Restore set ``name`` (or ``latest``) into the empty folder ``data_dir``."""
        return self._portal.call(
            self._aio.restore(name, data_dir, target_time=target_time, target_lsn=target_lsn)
        )

    def verify(self, name: str = "latest", *, drill: bool = True) -> VerifyReport:
        """Check set ``name`` (or ``latest``): every file against its checksum
        (``pg_verifybackup``), then, with ``drill``, a restore into a throwaway cluster that
        is checked (see :mod:`agency_data.backup.drill`). ``report.ok`` says whether all held."""
        return self._portal.call(self._aio.verify(name, drill=drill))


class Cache(Wrapper):
    """Synchronous twin of :class:`agency_data.cache.store.Cache`.

    The cache of one tenant; ``namespace`` separates independent users of it.
    """

    __slots__ = ()
    _aio: AsyncCache
    _aio_type: ClassVar[type[Any]] = AsyncCache

    @property
    def aio(self) -> AsyncCache:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def namespace(self) -> str:
        """The async object's ``namespace``."""
        return self._aio.namespace

    def with_namespace(self, namespace: str) -> Cache:
        """The same tenant's cache under another namespace."""
        return Cache._of(self._live().with_namespace(namespace), self._portal)

    def stats(self) -> CacheStats:
        """The cache's counters (shared by every tenant and namespace of this DataLayer)."""
        return self._portal.run_sync(self._aio.stats)

    def peek(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` if this process's L1 holds it (counted as a hit), else
        ``default`` at once: never waits, and leaves the miss to the read that follows."""
        return self._portal.run_sync(self._aio.peek, key, default)

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default``."""
        return self._portal.call(self._aio.get(key, default))

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of ``keys`` that exist (one Redis round trip for the L1 misses)."""
        return self._portal.call(self._aio.get_many(keys))

    def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        """Cache ``value`` for ``ttl`` seconds (default ``cache.default_ttl``), labelled ``tags``."""
        return self._portal.call(self._aio.set(key, value, ttl, self._portal.feed(tags)))

    def set_many(
        self, items: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Cache several values in one Redis round trip."""
        return self._portal.call(self._aio.set_many(items, ttl, self._portal.feed(tags)))

    def delete(self, *keys: str) -> None:
        """Remove ``keys`` everywhere (retried when Redis returns, if it is down now)."""
        return self._portal.call(self._aio.delete(*keys))

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        across_processes: bool = False,
    ) -> Any:
        """The cached value, or ``loader()``'s result, cached; concurrent misses load once."""
        return self._portal.call(
            self._aio.get_or_set(
                key,
                self._portal.callback(loader),
                ttl,
                self._portal.feed(tags),
                across_processes=across_processes,
            )
        )

    def invalidate(self, pattern: str) -> int:
        """Remove every key of this namespace matching the Redis glob ``pattern``."""
        return self._portal.call(self._aio.invalidate(pattern))

    def invalidate_prefix(self, prefix: str) -> int:
        """Remove every key that starts with ``prefix`` (taken literally)."""
        return self._portal.call(self._aio.invalidate_prefix(prefix))

    def clear(self, namespace: str | None = None) -> int:
        """Remove every key of ``namespace`` (default: this cache's)."""
        return self._portal.call(self._aio.clear(namespace))

    def tagged(self, tag: str) -> list[Any]:
        """The values of every entry set with ``tag`` (of any namespace of this tenant)."""
        return self._portal.call(self._aio.tagged(tag))

    def invalidate_tags(self, *tags: str) -> int:
        """Remove every key set with any of ``tags``; returns how many Redis keys went."""
        return self._portal.call(self._aio.invalidate_tags(*tags))


class Lock(Wrapper):
    """Synchronous twin of :class:`agency_data.coord.locks.Lock`.

    A distributed lock; use it as ``with dl.lock(name, ttl=..., wait=...) as lock:``.
    """

    __slots__ = ()
    _aio: AsyncLock
    _aio_type: ClassVar[type[Any]] = AsyncLock

    @property
    def aio(self) -> AsyncLock:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def name(self) -> str:
        """The async object's ``name``."""
        return self._aio.name

    @property
    def ttl(self) -> float:
        """The async object's ``ttl``."""
        return self._aio.ttl

    @property
    def wait(self) -> float:
        """The async object's ``wait``."""
        return self._aio.wait

    @property
    def auto_renew(self) -> bool:
        """The async object's ``auto_renew``."""
        return self._aio.auto_renew

    @property
    def fencing_token(self) -> int | None:
        """The async object's ``fencing_token``."""
        return self._aio.fencing_token

    @property
    def held(self) -> bool:
        """True between a successful acquire and release (as far as this holder knows)."""
        return self._aio.held

    @property
    def holder(self) -> str:
        """The token naming this holder's grant: whoever presents it may extend or release
        the lock (``Lock(..., holder=...)``), so keep it as secret as the lock is exclusive."""
        return self._aio.holder

    @property
    def expires_at(self) -> datetime | None:
        """When the grant expires, as last seen by this handle (None: not known here)."""
        return self._aio.expires_at

    def locked(self) -> bool:
        """Whether anyone holds the lock now (asked of Redis)."""
        return self._portal.call(self._aio.locked())

    def owned(self) -> bool:
        """Whether this holder holds the lock now (asked of Redis, not remembered)."""
        return self._portal.call(self._aio.owned())

    def acquire(self) -> int:
        """Take the lock, waiting up to ``wait`` seconds; return the fencing token."""
        return self._portal.call(self._aio.acquire())

    def release(self) -> None:
        """Let go; :class:`LockNotOwned` if it expired (or was taken) meanwhile."""
        return self._portal.call(self._aio.release())

    def extend(self, additional: float | None = None, *, replace_ttl: bool = False) -> None:
        """Give the lock ``additional`` seconds more; :class:`LockNotOwned` if it was lost."""
        return self._portal.call(self._aio.extend(additional, replace_ttl=replace_ttl))

    def __enter__(self) -> Self:
        self._portal.aenter(self._aio)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._portal.aexit(self._aio, exc_type, exc, tb)


class PubSub(Wrapper):
    """Synchronous twin of :class:`agency_data.coord.pubsub.PubSub`.

    Publish and subscribe on one tenant's channels.
    """

    __slots__ = ()
    _aio: AsyncPubSub
    _aio_type: ClassVar[type[Any]] = AsyncPubSub

    @property
    def aio(self) -> AsyncPubSub:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def publish(self, channel: str, message: Any) -> int:
        """Send ``message`` (JSON-shaped) to ``channel``; return how many subscribers got it."""
        return self._portal.call(self._aio.publish(channel, message))

    def subscribe(
        self, *channels: str, patterns: Sequence[str] = (), reconnect_delay: float = 0.1
    ) -> Generator[Message, None, None]:
        """Messages on ``channels`` (and channels matching glob ``patterns``) as they arrive."""
        return self._portal.iterate(
            self._aio.subscribe(*channels, patterns=patterns, reconnect_delay=reconnect_delay)
        )

    def listen(
        self, *channels: str, patterns: Sequence[str] = (), reconnect_delay: float = 0.1
    ) -> Generator[Message | Resubscribed | Lost, None, None]:
        """What :meth:`subscribe` yields, and also when the subscription is in place
        (:class:`Resubscribed`, ``first`` False after a reconnect) and when it was lost
        (:class:`Lost`): messages published between the two were missed. A caller that must
        not publish before its subscriber listens (a relay, an HTTP stream) waits for the
        first :class:`Resubscribed`."""
        return self._portal.iterate(
            self._aio.listen(*channels, patterns=patterns, reconnect_delay=reconnect_delay)
        )


class Streams(Wrapper):
    """Synchronous twin of :class:`agency_data.coord.pubsub.Streams`.

    Durable messaging on one tenant's Redis Streams, with consumer groups.
    """

    __slots__ = ()
    _aio: AsyncStreams
    _aio_type: ClassVar[type[Any]] = AsyncStreams

    @property
    def aio(self) -> AsyncStreams:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def publish(self, stream: str, message: Any, *, max_length: int | None = 100000) -> str:
        """Append ``message``; return its id. The stream is trimmed near ``max_length`` entries."""
        return self._portal.call(self._aio.publish(stream, message, max_length=max_length))

    def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block: float = 1.0,
        claim_after: float = 30.0,
        dedupe: bool = False,
        dedupe_window: float = 3600.0,
    ) -> Generator[StreamMessage, None, None]:
        """Messages for ``consumer`` of ``group``, redelivering ones others left unacknowledged."""
        return self._portal.iterate(
            self._aio.consume(
                stream,
                group,
                consumer,
                count=count,
                block=block,
                claim_after=claim_after,
                dedupe=dedupe,
                dedupe_window=dedupe_window,
            )
        )

    def ack(self, stream: str, group: str, *message_ids: str) -> int:
        """Acknowledge handled messages; return how many were pending."""
        return self._portal.call(self._aio.ack(stream, group, *message_ids))

    def pending(self, stream: str, group: str) -> int:
        """How many delivered messages the group has not acknowledged."""
        return self._portal.call(self._aio.pending(stream, group))


class SessionStore(Wrapper):
    """Synchronous twin of :class:`agency_data.coord.sessions.SessionStore`.

    The sessions of one tenant.
    """

    __slots__ = ()
    _aio: AsyncSessionStore
    _aio_type: ClassVar[type[Any]] = AsyncSessionStore

    @property
    def aio(self) -> AsyncSessionStore:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def create(
        self, agent_id: Any, data: dict[str, Any] | None = None, ttl: float | None = None
    ) -> Session:
        """Open a session for ``agent_id`` that expires ``ttl`` seconds after its last touch."""
        return self._portal.call(self._aio.create(agent_id, data, ttl))

    def get(self, session_id: str) -> Session:
        """The live session; :class:`NotFound` once it expired or was deleted."""
        return self._portal.call(self._aio.get(session_id))

    def update(self, session_id: str, data: dict[str, Any], *, merge: bool = True) -> Session:
        """Change the data (merging top-level keys, or replacing it); also slides the expiry."""
        return self._portal.call(self._aio.update(session_id, data, merge=merge))

    def touch(self, session_id: str, ttl: float | None = None) -> Session:
        """Push the expiry out to ``ttl`` (default: the session's own) seconds from now."""
        return self._portal.call(self._aio.touch(session_id, ttl))

    def delete(self, session_id: str) -> None:
        """End a session; :class:`NotFound` if there was none."""
        return self._portal.call(self._aio.delete(session_id))

    def list_by_agent(self, agent_id: Any) -> list[Session]:
        """The agent's live sessions, oldest first; expired ids are pruned on the way."""
        return self._portal.call(self._aio.list_by_agent(agent_id))


class Events(Wrapper):
    """Synchronous twin of :class:`agency_data.events.subscriber.Events`.

    One tenant's store events (``events`` config): subscribe to them as they are relayed.
    """

    __slots__ = ()
    _aio: AsyncEvents
    _aio_type: ClassVar[type[Any]] = AsyncEvents

    @property
    def aio(self) -> AsyncEvents:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def subscribe(
        self,
        event: str,
        *,
        group: str | None = None,
        consumer: str | None = None,
        dedupe: bool = True,
        **match: Any,
    ) -> Generator[Event, None, None]:
        """The events named ``event`` whose fields equal ``match``, as they are relayed."""
        return self._portal.iterate(
            self._aio.subscribe(event, group=group, consumer=consumer, dedupe=dedupe, **match)
        )


class MonitoringMethods(Wrapper):
    """Synchronous twin of :class:`agency_data.observability.methods.MonitoringMethods`.

    Metrics, alerts and the recall probe of a :class:`~agency_data.DataLayer`.
    """

    __slots__ = ()
    _aio: AsyncMonitoringMethods
    _aio_type: ClassVar[type[Any]] = AsyncMonitoringMethods

    @property
    def aio(self) -> AsyncMonitoringMethods:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def metrics(self) -> Metrics:
        """The Prometheus registry of this DataLayer (``dl.metrics.registry``)."""
        return self._aio.metrics

    def metrics_text(self) -> str:
        """Every metric in Prometheus's text format, with the sampled gauges fresh."""
        return self._portal.call(self._aio.metrics_text())

    def serve_metrics(self, port: int = 9464, host: str = "127.0.0.1") -> MetricsEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) until ``close()``."""
        return MetricsEndpoint._of(
            self._portal.call(self._aio.serve_metrics(port, host)), self._portal
        )

    @property
    def alerts(self) -> Alerts:
        """The alert rules evaluated in process: ``dl.alerts.on(callback)``, ``.firing()``."""
        return self._child("alerts", self._live().alerts, Alerts)

    def check_alerts(self) -> list[Alert]:
        """Sample and evaluate the alert rules now (they also run every monitoring.interval)."""
        return self._portal.call(self._aio.check_alerts())

    def probe_recall(self) -> dict[str, float]:
        """Run the index-quality probe now: estimated recall by collection (see
        :mod:`agency_data.observability.recall`); it also runs every recall_interval."""
        return self._portal.call(self._aio.probe_recall())


class DataLayer(QueryMethods, MonitoringMethods):
    """Synchronous twin of :class:`agency_data.manager.DataLayer`.

    The data layer of an agent platform: PostgreSQL, pgvector and Redis behind one object.
    """

    _aio: AsyncDataLayer
    _aio_type: ClassVar[type[Any]] = AsyncDataLayer
    __slots__ = ("_owns_portal",)
    _owns_portal: bool

    def __init__(
        self,
        config: DataLayerConfig | None = None,
        *,
        key_manager: KeyManager | None = None,
        **overrides: Any,
    ) -> None:
        """Make the layer (not connected yet: ``connect()``, or ``with``) and its portal, an
        event loop of its own in a daemon thread. Arguments: as the async DataLayer's."""
        portal = Portal.start("agency-data-sync")
        try:
            aio = AsyncDataLayer(config, key_manager=key_manager, **overrides)
        except BaseException:
            portal.close()
            raise
        Wrapper.__init__(self, aio, portal)
        self._owns_portal = True

    @classmethod
    def _of(cls, aio: Any, portal: Portal) -> Self:
        made = super()._of(aio, portal)
        made._owns_portal = False
        return made

    @classmethod
    def wrap(cls, aio: AsyncDataLayer, portal: Portal) -> Self:
        """The synchronous face of ``aio``, an async DataLayer on the loop ``portal`` enters;
        closing it closes ``aio``, not the portal."""
        cls._check(aio, portal)
        return cls._of(aio, portal)

    def __enter__(self) -> Self:
        """Connect; leaving the block closes the layer and its portal."""
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool and client, and release the embedded servers (the last user stops them).

        Then the portal's loop stops (when the layer made it): any later call raises UsageError.
        """
        portal = self._portal
        if portal.closed:
            return
        try:
            portal.call(self._aio.aclose())
        finally:
            if self._owns_portal:
                portal.close()

    @property
    def aio(self) -> AsyncDataLayer:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def config(self) -> DataLayerConfig:
        """The async object's ``config``."""
        return self._aio.config

    def connect(self) -> None:
        """Start embedded servers if needed, open the pool and client, and migrate if configured."""
        return self._portal.call(self._aio.connect())

    def region(self, name: str) -> DataLayer:
        """The DataLayer of region ``name`` (``residency.regions``): its admin, retention,
        health; it serves only the tenants pinned to it."""
        return DataLayer._of(self._live().region(name), self._portal)

    @property
    def agents(self) -> AgentStore:
        """The default tenant's agents."""
        return self._child("agents", self._live().agents, AgentStore)

    @property
    def subjects(self) -> SubjectRights:
        """Data subject rights (``subjects`` config): ``export`` and ``erase`` a subject."""
        return self._child("subjects", self._live().subjects, SubjectRights)

    @property
    def retention(self) -> Retention:
        """The retention policies (``retention`` config): ``dl.retention.run()``."""
        return self._child("retention", self._live().retention, Retention)

    @property
    def audit(self) -> AuditTrail:
        """The default tenant's audit trail (``dl.tenant(t).audit`` for another's)."""
        return self._child("audit", self._live().audit, AuditTrail)

    @property
    def tasks(self) -> TaskStore:
        """The default tenant's tasks."""
        return self._child("tasks", self._live().tasks, TaskStore)

    @property
    def cache(self) -> Cache:
        """The default tenant's cache (L1 in process, L2 in Redis)."""
        return self._child("cache", self._live().cache, Cache)

    @property
    def sessions(self) -> SessionStore:
        """The default tenant's sessions."""
        return self._child("sessions", self._live().sessions, SessionStore)

    @property
    def pubsub(self) -> PubSub:
        """The default tenant's pub/sub channels (at-most-once)."""
        return self._child("pubsub", self._live().pubsub, PubSub)

    @property
    def streams(self) -> Streams:
        """The default tenant's durable streams (at-least-once, acknowledged)."""
        return self._child("streams", self._live().streams, Streams)

    @property
    def events(self) -> Events:
        """The default tenant's store events (``events`` config): ``dl.events.subscribe(...)``."""
        return self._child("events", self._live().events, Events)

    @property
    def scripts(self) -> ScriptRegistry:
        """Named Lua scripts on Redis (EVALSHA, reloaded after a server restart)."""
        return self._child("scripts", self._live().scripts, ScriptRegistry)

    def export(
        self, source: str, *, masked: bool = True, batch_size: int = 1000
    ) -> Generator[dict[str, Any], None, None]:
        """The default tenant's rows of ``source``, masked (see :meth:`TenantScope.export`)."""
        return self._portal.iterate(self._aio.export(source, masked=masked, batch_size=batch_size))

    def lock(
        self, name: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lock:
        """A distributed lock of the default tenant; ``with dl.lock(...) as lock:``."""
        return Lock._of(
            self._live().lock(name, ttl=ttl, wait=wait, auto_renew=auto_renew), self._portal
        )

    @property
    def embeddings(self) -> ManagedEmbeddingStore:
        """The default tenant's embeddings, plus collection administration (as the owner)."""
        return self._child("embeddings", self._live().embeddings, ManagedEmbeddingStore)

    @property
    def memory(self) -> ManagedMemory:
        """The default tenant's agent memory, plus setting it up (as the owner)."""
        return self._child("memory", self._live().memory, ManagedMemory)

    @property
    def admin(self) -> Admin:
        """Administration as the owner role: collections, indexes, role checks, raw DDL."""
        return self._child("admin", self._live().admin, Admin)

    def as_actor(self, actor: str) -> AbstractContextManager[str]:
        """``with dl.as_actor("svc-planner"):`` the audit trail names ``actor`` for the writes
        made inside the block (see :mod:`agency_data.actor`)."""
        return self._portal.using(self._aio.as_actor(actor))

    def tenant(self, tenant_id: str) -> TenantScope:
        """The same API, scoped to ``tenant_id``: no call through it sees another tenant's rows."""
        return TenantScope._of(self._live().tenant(tenant_id), self._portal)

    @property
    def conninfo(self) -> str:
        """The pool's PostgreSQL connection string (may hold a password: do not log it)."""
        return self._aio.conninfo

    @property
    def admin_conninfo(self) -> str:
        """The owner role's connection string (may hold a password: do not log it)."""
        return self._aio.admin_conninfo

    @property
    def redis_url(self) -> str | None:
        """The embedded Valkey's URL, or None when a configured server is used."""
        return self._aio.redis_url

    @property
    def replica_conninfos(self) -> list[str]:
        """The read replicas' connection strings, in the order reads take them (may hold
        passwords: do not log them); empty without replicas."""
        return self._aio.replica_conninfos

    def prewarmed(self) -> None:
        """Wait until the start's background warm-up (``vector.prewarm_on_start``) is done."""
        return self._portal.call(self._aio.prewarmed())

    @property
    def backups(self) -> Backups:
        """Backup sets of this database (see :mod:`agency_data.backup`)."""
        return self._child("backups", self._live().backups, Backups)

    @property
    def changes(self) -> Changes:
        """The change feed: ``for change in dl.changes(["tasks"], since=...)`` (the
        default tenant's, or ``tenant=``'s); ``track``, ``consumers``, ``status``, ``prune``."""
        return self._child("changes", self._live().changes, Changes)

    @property
    def outbox(self) -> Relay:
        """The outbox's relay: ``dl.outbox.relay()`` sends what can be sent now."""
        return self._child("outbox", self._live().outbox, Relay)

    def health(self, timeout: float = 2.0) -> HealthStatus:
        """Probe PostgreSQL and Redis: ``ok``, ``degraded`` (Redis down) or ``down``."""
        return self._portal.call(self._aio.health(timeout))

    def migrations(self) -> MigrationRunner:
        """The migration runner (as the owner role) for our schema and ``config.migration``'s."""
        return MigrationRunner._of(self._live().migrations(), self._portal)

    def migrate(self, *, to: str | None = None, dry_run: bool | None = None) -> MigrationReport:
        """Apply pending migrations; see :meth:`MigrationRunner.up`."""
        return self._portal.call(self._aio.migrate(to=to, dry_run=dry_run))


class MemoryBase(Wrapper):
    """Synchronous twin of :class:`agency_data.memory._base.MemoryBase`.

    A tenant's memories in one collection: the parts its operations share.
    """

    __slots__ = ()
    _aio: AsyncMemoryBase
    _aio_type: ClassVar[type[Any]] = AsyncMemoryBase

    @property
    def aio(self) -> AsyncMemoryBase:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    @property
    def collection(self) -> str:
        """The async object's ``collection``."""
        return self._aio.collection

    @property
    def graph(self) -> KnowledgeGraph:
        """The async object's ``graph``."""
        return self._child("graph", self._live().graph, KnowledgeGraph)

    def close(self) -> None:
        """Write the recall counts still gathered."""
        return self._portal.call(self._aio.aclose())

    @property
    def embedder(self) -> Embedder | None:
        """The text embedder of this memory (given here, or to ``setup``), if any."""
        return self._aio.embedder


class KnowledgeGraph(Wrapper):
    """Synchronous twin of :class:`agency_data.memory.graph.KnowledgeGraph`.

    A tenant's entities and the facts between them (see the module's docstring).
    """

    __slots__ = ()
    _aio: AsyncKnowledgeGraph
    _aio_type: ClassVar[type[Any]] = AsyncKnowledgeGraph

    @property
    def aio(self) -> AsyncKnowledgeGraph:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def upsert_entity(
        self,
        name: str,
        type: str,
        properties: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | None = None,
    ) -> Entity:
        """The entity of this ``type`` named ``name`` (any case: "ann" finds "Ann"), made if
        new. ``properties`` are merged into what it has (their keys win, shallowly); an
        ``embedding`` (any dimension) replaces the one it has, None keeps it."""
        return self._portal.call(self._aio.upsert_entity(name, type, properties, embedding))

    def get_entity(self, entity_id: Entity | str, *, include_vector: bool = False) -> Entity:
        """The entity with ``entity_id``, with its embedding if ``include_vector``;
        :class:`NotFound` if this tenant has none."""
        return self._portal.call(self._aio.get_entity(entity_id, include_vector=include_vector))

    def find_entities(
        self, name: str, *, type: str | None = None, limit: int = 10, min_similarity: float = 0.3
    ) -> list[EntityMatch]:
        """Entities whose name looks like ``name`` (pg_trgm's similarity of the lowered names,
        from 0 to 1: shared trigrams over all of both), best first, down to
        ``min_similarity``; of one ``type`` if given. A name of no letters or digits has no
        trigrams and finds nothing."""
        return self._portal.call(
            self._aio.find_entities(name, type=type, limit=limit, min_similarity=min_similarity)
        )

    def similar_entities(
        self, vector: Sequence[float], *, type: str | None = None, limit: int = 10
    ) -> list[EntityMatch]:
        """Entities whose embedding is nearest ``vector`` (cosine similarity, exact), among
        those with an embedding of its dimension; of one ``type`` if given."""
        return self._portal.call(self._aio.similar_entities(vector, type=type, limit=limit))

    def forget_entity(self, entity_id: Entity | str) -> None:
        """Delete the entity for good, with every version of every fact it takes part in and
        every mention of it; what those facts had ended is believed again (forgetting Paris
        gives back Ann's Berlin, open-ended, if only her move to Paris had ended it).
        :class:`NotFound` if this tenant has none."""
        return self._portal.call(self._aio.forget_entity(entity_id))

    def relate(
        self,
        source: Entity | str,
        relation: str,
        target: Entity | str,
        *,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        source_memory: str | None = None,
        properties: Mapping[str, Any] | None = None,
        exclusive: bool = False,
    ) -> Relation:
        """State the fact ``source -relation-> target``, true from ``valid_from`` (default:
        now) until ``valid_to`` (None: still), learned from the memory ``source_memory``
        (erasing that memory erases the fact). Returns the fact as now believed."""
        return self._portal.call(
            self._aio.relate(
                source,
                relation,
                target,
                valid_from=valid_from,
                valid_to=valid_to,
                source_memory=source_memory,
                properties=properties,
                exclusive=exclusive,
            )
        )

    def invalidate(self, relation_id: Relation | str, *, at: datetime | None = None) -> Relation:
        """End the fact at ``at`` (default: now): it gets a version that ends then, and the
        version believed until now is invalidated. A fact ended at or before its start is
        withdrawn (it was never true: no version of it is believed any more; the one returned
        is invalidated). A fact that had already ended by ``at`` is left as it is."""
        return self._portal.call(self._aio.invalidate(relation_id, at=at))

    def versions(self, relation_id: Relation | str) -> list[Relation]:
        """Every version of a fact, newest first: how what we believed of it changed.
        :class:`NotFound` if there is no such fact."""
        return self._portal.call(self._aio.versions(relation_id))

    def relations(
        self,
        entity: Entity | str,
        *,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 100,
    ) -> list[Relation]:
        """The facts of ``entity`` that hold: true at ``as_of`` (default: now), as believed
        at ``known_at`` (default: now); its outgoing ones, incoming ones or both
        (``direction``), of the ``relation`` names given (default: all). By relation name,
        then valid_from; the first ``limit``. :class:`NotFound` if there is no such entity."""
        return self._portal.call(
            self._aio.relations(
                entity,
                relation=relation,
                direction=direction,
                as_of=as_of,
                known_at=known_at,
                limit=limit,
            )
        )

    def neighbours(
        self,
        entity: Entity | str,
        *,
        hops: int = 1,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 100,
    ) -> list[Neighbour]:
        """The entities within ``hops`` (1 to 6) of ``entity``, each once with its distance,
        nearest first, then by name (the first ``limit``), following the facts that hold
        (``as_of``, ``known_at``, ``relation`` and ``direction`` as in :meth:`relations`).
        :class:`NotFound` if there is no such entity."""
        return self._portal.call(
            self._aio.neighbours(
                entity,
                hops=hops,
                relation=relation,
                direction=direction,
                as_of=as_of,
                known_at=known_at,
                limit=limit,
            )
        )

    def paths(
        self,
        source: Entity | str,
        target: Entity | str,
        *,
        max_hops: int = 3,
        relation: str | Sequence[str] | None = None,
        direction: Direction = "out",
        as_of: datetime | None = None,
        known_at: datetime | None = None,
        limit: int = 10,
    ) -> list[graph_models_Path]:
        """The ways from ``source`` to ``target`` of at most ``max_hops`` (1 to 6) facts that
        hold, passing no entity twice, shortest first (``limit`` of them; ``as_of``,
        ``known_at``, ``relation`` and ``direction`` as in :meth:`relations`; with
        ``direction="both"`` a path may take a fact against its direction).
        :class:`NotFound` if either entity does not exist."""
        return self._portal.call(
            self._aio.paths(
                source,
                target,
                max_hops=max_hops,
                relation=relation,
                direction=direction,
                as_of=as_of,
                known_at=known_at,
                limit=limit,
            )
        )

    def link(self, memory_id: str, entity_ids: Iterable[Entity | str]) -> int:
        """Record that the memory mentions the entities; return how many links are new.
        :class:`NotFound` (and nothing linked) if the memory or any entity does not exist."""
        return self._portal.call(self._aio.link(memory_id, self._portal.feed(entity_ids)))

    def mentions(self, memory_ids: Iterable[str]) -> dict[str, list[Entity]]:
        """The entities each memory mentions (every memory asked about is a key)."""
        return self._portal.call(self._aio.mentions(self._portal.feed(memory_ids)))

    def about(
        self,
        memory_ids: Iterable[str],
        *,
        as_of: datetime | None = None,
        known_at: datetime | None = None,
    ) -> dict[str, tuple[list[Entity], list[Relation]]]:
        """For each memory, the entities it mentions and the facts that hold (``as_of``,
        ``known_at``) among them, with the facts learned from it (as believed at
        ``known_at``, whatever their valid time): in one round trip for all the memories."""
        return self._portal.call(
            self._aio.about(self._portal.feed(memory_ids), as_of=as_of, known_at=known_at)
        )


class Upkeep(MemoryBase):
    """Synchronous twin of :class:`agency_data.memory.upkeep.Upkeep`.

    Consolidation and pruning of a tenant's memories.
    """

    __slots__ = ()
    _aio: AsyncUpkeep
    _aio_type: ClassVar[type[Any]] = AsyncUpkeep

    @property
    def aio(self) -> AsyncUpkeep:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def consolidate(
        self,
        agent_id: str | None,
        summarise: Callable[[list[MemoryRecord]], str],
        *,
        older_than: float | timedelta = 7 * 86400.0,
        max_importance: float = 0.3,
        min_group: int = 2,
        kind: str = "summary",
    ) -> list[Remembered]:
        """Replace each subject's old, unimportant memories of ``agent_id`` by one summary."""
        return self._portal.call(
            self._aio.consolidate(
                agent_id,
                self._portal.callback(summarise),
                older_than=older_than,
                max_importance=max_importance,
                min_group=min_group,
                kind=kind,
            )
        )

    def replaced(self, summary_id: str) -> list[MemoryRecord]:
        """The memories a consolidation summary replaced, oldest first, each with the text it
        had; :class:`NotFound` if there is no memory ``summary_id``."""
        return self._portal.call(self._aio.replaced(summary_id))

    def prune(
        self,
        agent_id: str | None = None,
        *,
        older_than: float | timedelta | None = None,
        below_importance: float | None = None,
        keep: int | None = None,
        hard: bool = False,
    ) -> int:
        """Forget memories by policy; return how many."""
        return self._portal.call(
            self._aio.prune(
                agent_id,
                older_than=older_than,
                below_importance=below_importance,
                keep=keep,
                hard=hard,
            )
        )


class Memory(Upkeep):
    """Synchronous twin of :class:`agency_data.memory.store.Memory`.

    A tenant's agent memory (see the module's docstring).
    """

    __slots__ = ()
    _aio: AsyncMemory
    _aio_type: ClassVar[type[Any]] = AsyncMemory

    @property
    def aio(self) -> AsyncMemory:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def with_embedder(self, embedder: Any) -> Self:
        """This memory, embedding texts with ``embedder`` (any of those
        :mod:`agency_data.vectors.embedders` takes)."""
        return type(self)._of(self._aio.with_embedder(embedder), self._portal)

    def using(self, collection: str) -> Self:
        """The memories kept in another collection (one made by ``setup(collection=...)``),
        embedded by its own embedder unless this view was given one."""
        return type(self)._of(self._aio.using(collection), self._portal)

    def remember(
        self,
        agent_id: str | None,
        content: _base_Query,
        *,
        text: str | None = None,
        kind: str = "fact",
        importance: float = 0.5,
        metadata: Mapping[str, Any] | None = None,
        subject: str | None = None,
        at: datetime | None = None,
        dedup: bool | float = True,
    ) -> Remembered:
        """Remember ``content`` (a text, embedded by the collection's embedder, or a vector
        with an optional ``text``) for ``agent_id`` (None: shared by the tenant's agents)."""
        return self._portal.call(
            self._aio.remember(
                agent_id,
                content,
                text=text,
                kind=kind,
                importance=importance,
                metadata=metadata,
                subject=subject,
                at=at,
                dedup=dedup,
            )
        )

    def recall(
        self,
        agent_id: str | Iterable[str] | None,
        query: _base_Query,
        *,
        limit: int = 5,
        filter: Mapping[str, Any] | None = None,
        kinds: Iterable[str] | None = None,
        as_of: datetime | None = None,
        weights: MemoryWeights | Mapping[str, float] | None = None,
        shared: bool = True,
        expand: bool = False,
    ) -> builtins.list[Recalled]:
        """The best ``limit`` memories for ``query`` (a text or a vector), best first."""
        return self._portal.call(
            self._aio.recall(
                self._portal.feed(agent_id),
                query,
                limit=limit,
                filter=filter,
                kinds=self._portal.feed(kinds),
                as_of=as_of,
                weights=weights,
                shared=shared,
                expand=expand,
            )
        )

    def flush(self) -> int:
        """Write the recall counts gathered so far now (they are written every
        ``memory.access_flush`` seconds and on close); return how many memories they touched."""
        return self._portal.call(self._aio.flush())

    def get(self, memory_id: str) -> MemoryRecord:
        """The memory ``memory_id`` (forgotten ones too: their ``forgotten_at`` is set)."""
        return self._portal.call(self._aio.get(memory_id))

    def list(
        self,
        agent_id: str | None = None,
        *,
        shared: bool = False,
        subject: str | None = None,
        kind: str | None = None,
        filter: Mapping[str, Any] | None = None,
        forgotten: bool = False,
        limit: int = 100,
    ) -> builtins.list[MemoryRecord]:
        """Memories newest first: of ``agent_id`` (None: every agent), only the shared ones
        (``shared=True``), of ``subject`` or ``kind``, matching ``filter`` (metadata), the
        forgotten ones too with ``forgotten=True``."""
        return self._portal.call(
            self._aio.list(
                agent_id,
                shared=shared,
                subject=subject,
                kind=kind,
                filter=filter,
                forgotten=forgotten,
                limit=limit,
            )
        )

    def history(self, memory_id: str) -> builtins.list[MemoryVersion]:
        """Every version of the memory, oldest first, with its time and actor; a forgetting
        is an entry without text."""
        return self._portal.call(self._aio.history(memory_id))

    def forget(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        agent_id: str | None = None,
        subject: str | None = None,
        filter: Mapping[str, Any] | None = None,
        hard: bool = False,
    ) -> int:
        """Forget memories by id, or all of ``agent_id``'s (and/or of ``subject``, matching
        ``filter``); return how many."""
        return self._portal.call(
            self._aio.forget(
                self._portal.feed(ids), agent_id=agent_id, subject=subject, filter=filter, hard=hard
            )
        )

    def changes(
        self,
        *,
        since: str | None = None,
        consumer: str | None = None,
        batch: int = 100,
        wait: bool = True,
    ) -> Generator[MemoryChange, None, None]:
        """Memories created, updated and forgotten, in commit order (the change feed of
        ``memories``, which ``dl.memory.setup`` tracks). ``since``, ``consumer``, ``batch``
        and ``wait`` as for ``dl.changes``. A change carries the memory's id, agent, kind and
        version, never its text: ``get`` reads it."""
        return self._portal.iterate(
            self._aio.changes(since=since, consumer=consumer, batch=batch, wait=wait)
        )


class ManagedMemory(Memory):
    """Synchronous twin of :class:`agency_data.memory.store.ManagedMemory`.

    The default tenant's agent memory, plus setting it up (as the owner).
    """

    __slots__ = ()
    _aio: AsyncManagedMemory
    _aio_type: ClassVar[type[Any]] = AsyncManagedMemory

    @property
    def aio(self) -> AsyncManagedMemory:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def setup(
        self,
        dimension: int,
        *,
        embedder: Any = None,
        collection: str | None = None,
        storage: str = "vector",
        index: bool = True,
    ) -> None:
        """Make the memory collection (cosine, ``dimension``) with an HNSW index, and track
        ``memories`` in the change feed; a collection already there is kept (its dimension
        must match). ``embedder`` embeds texts in this DataLayer (give it again, here or to
        ``with_embedder``, in the next process). Idempotent."""
        return self._portal.call(
            self._aio.setup(
                dimension, embedder=embedder, collection=collection, storage=storage, index=index
            )
        )


class MigrationRunner(Wrapper):
    """Synchronous twin of :class:`agency_data.migrations.runner.MigrationRunner`.

    Plans and runs the migrations of ``sources`` against the database of ``conninfo``.
    """

    __slots__ = ()
    _aio: AsyncMigrationRunner
    _aio_type: ClassVar[type[Any]] = AsyncMigrationRunner

    @property
    def aio(self) -> AsyncMigrationRunner:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def conninfo(self) -> str:
        """The async object's ``conninfo``."""
        return self._aio.conninfo

    @property
    def role(self) -> RoleNames | None:
        """The async object's ``role``."""
        return self._aio.role

    @property
    def sources(self) -> list[MigrationSource]:
        """The async object's ``sources``."""
        return self._aio.sources

    @property
    def table(self) -> sql.Identifier:
        """The async object's ``table``."""
        return self._aio.table

    @property
    def table_name(self) -> str:
        """The async object's ``table_name``."""
        return self._aio.table_name

    @property
    def lock_timeout(self) -> float:
        """The async object's ``lock_timeout``."""
        return self._aio.lock_timeout

    @property
    def backup_dir(self) -> Path | None:
        """The async object's ``backup_dir``."""
        return self._aio.backup_dir

    @property
    def pg_dump_path(self) -> Path | None:
        """The async object's ``pg_dump_path``."""
        return self._aio.pg_dump_path

    @property
    def keep_backups(self) -> int:
        """The async object's ``keep_backups``."""
        return self._aio.keep_backups

    def migrations(self) -> list[Migration]:
        """Every registered migration, in the order ``up`` applies them."""
        return self._portal.run_sync(self._aio.migrations)

    def status(self) -> list[MigrationState]:
        """Each migration's state: pending, applied, changed (file edited since) or missing."""
        return self._portal.call(self._aio.status())

    def up(self, *, to: str | None = None, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations (up to and including ``to``), backing up first if configured."""
        return self._portal.call(self._aio.up(to=to, dry_run=dry_run))

    def down(
        self,
        *,
        to: str | None = None,
        steps: int | None = None,
        dry_run: bool = False,
        expect: Sequence[str] | None = None,
    ) -> MigrationReport:
        """Roll back the last ``steps`` migrations, or every one applied after ``to``."""
        return self._portal.call(self._aio.down(to=to, steps=steps, dry_run=dry_run, expect=expect))


class Alerts(Wrapper):
    """Synchronous twin of :class:`agency_data.observability.alerts.Alerts`.

    The rules, their state, and where their changes go (``dl.alerts``).
    """

    __slots__ = ()
    _aio: AsyncAlerts
    _aio_type: ClassVar[type[Any]] = AsyncAlerts

    @property
    def aio(self) -> AsyncAlerts:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def config(self) -> AlertsConfig:
        """The async object's ``config``."""
        return self._aio.config

    def on(self, callback: Callable[[Alert], None]) -> Callable[[], None]:
        """Call ``callback(alert)`` (a function or coroutine function) at each change."""
        return self._portal.run_sync(self._aio.on, self._portal.callback(callback))

    def firing(self) -> list[Alert]:
        """The alerts firing now."""
        return self._portal.run_sync(self._aio.firing)

    def evaluate(self, sample: Sample | None) -> list[Alert]:
        """Judge every rule once on ``sample`` and the live counters; deliver and return changes."""
        return self._portal.call(self._aio.evaluate(sample))

    def close(self) -> None:
        """Wait for webhook deliveries still in flight."""
        return self._portal.call(self._aio.aclose())


class MetricsEndpoint(Wrapper):
    """Synchronous twin of :class:`agency_data.observability.server.MetricsEndpoint`.

    A running ``/metrics`` endpoint; :meth:`close` stops it (the DataLayer does on close).
    """

    __slots__ = ()
    _aio: AsyncMetricsEndpoint
    _aio_type: ClassVar[type[Any]] = AsyncMetricsEndpoint

    @property
    def aio(self) -> AsyncMetricsEndpoint:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def host(self) -> str:
        """The async object's ``host``."""
        return self._aio.host

    @property
    def port(self) -> int:
        """The async object's ``port``."""
        return self._aio.port

    @property
    def url(self) -> str:
        """Where to scrape."""
        return self._aio.url

    def close(self) -> None:
        """Stop serving and wait for the server's thread to end."""
        return self._portal.call(self._aio.aclose())


class ChangeFeed(Wrapper):
    """Synchronous twin of :class:`agency_data.outbox.changes.ChangeFeed`.

    One tenant's change feed (``dl.tenant(t).changes``): call it to read.
    """

    __slots__ = ()
    _aio: AsyncChangeFeed
    _aio_type: ClassVar[type[Any]] = AsyncChangeFeed

    @property
    def aio(self) -> AsyncChangeFeed:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant_id(self) -> str:
        """The async object's ``tenant_id``."""
        return self._aio.tenant_id

    def __call__(
        self,
        tables: Any,
        *,
        since: Any = None,
        consumer: str | None = None,
        batch: int = 500,
        wait: bool = True,
        tenant: str | None = None,
    ) -> Generator[Change, None, None]:
        """The changes of ``tables`` (tracked ones), in commit order; use ``for``."""
        return self._portal.iterate(
            self._aio.__call__(
                tables, since=since, consumer=consumer, batch=batch, wait=wait, tenant=tenant
            )
        )

    def position(self) -> str:
        """The cursor of now: reading from it gives the changes committed after this call.
        Take it before reading the tables whole, then read from it: nothing is missed between
        the two."""
        return self._portal.call(self._aio.position())

    def consumers(self) -> list[ChangeConsumer]:
        """This tenant's named consumers and how far behind each is."""
        return self._portal.call(self._aio.consumers())

    def drop(self, consumer: str) -> None:
        """Forget a named consumer (its cursor, and the changes kept for it)."""
        return self._portal.call(self._aio.drop(consumer))


class Changes(ChangeFeed):
    """Synchronous twin of :class:`agency_data.outbox.changes.Changes`.

    ``dl.changes``: the default tenant's feed (``tenant=`` for another's), and what the
    owner manages: which tables are captured, pruning, the feed's fill.
    """

    __slots__ = ()
    _aio: AsyncChanges
    _aio_type: ClassVar[type[Any]] = AsyncChanges

    @property
    def aio(self) -> AsyncChanges:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def track(self, table: str, columns: Any = None) -> list[str]:
        """Capture ``table``'s changes from now on, with ``columns``' values (default: every
        column but vectors and bytes); the columns captured. Tracking again replaces them.
        Columns the table gains later are captured too, until it is tracked again."""
        return self._portal.call(self._aio.track(table, columns))

    def untrack(self, table: str) -> bool:
        """Stop capturing ``table``'s changes (kept ones stay until pruned); whether it was."""
        return self._portal.call(self._aio.untrack(table))

    def tracked(self) -> dict[str, list[str]]:
        """Each captured table and the columns whose values its changes carry."""
        return self._portal.call(self._aio.tracked())

    def consumers(self) -> list[ChangeConsumer]:
        """Every tenant's named consumers and how far behind each is."""
        return self._portal.call(self._aio.consumers())

    def status(self) -> FeedStatus:
        """How many changes the feed keeps against its cap, and who holds them back."""
        return self._portal.call(self._aio.status())

    def prune(self) -> int:
        """Delete the changes no one needs (older than ``keep`` and read by every named
        consumer) and, past ``max_rows``, the oldest whatever; how many went."""
        return self._portal.call(self._aio.prune())


class Relay(Wrapper):
    """Synchronous twin of :class:`agency_data.outbox.relay.Relay`.

    Moves committed outbox messages to Redis (see the module's docstring).
    """

    __slots__ = ()
    _aio: AsyncRelay
    _aio_type: ClassVar[type[Any]] = AsyncRelay

    @property
    def aio(self) -> AsyncRelay:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def config(self) -> OutboxConfig:
        """The async object's ``config``."""
        return self._aio.config

    def wake(self) -> None:
        """Start the next round now (a transaction that published has committed)."""
        return self._portal.run_sync(self._aio.wake)

    def relay(self) -> int:
        """Send every message that can be sent now; how many were sent."""
        return self._portal.call(self._aio.relay())

    def prune(self) -> int:
        """Delete sent messages older than ``keep_sent`` (and what the change feed no longer
        needs); how many messages went."""
        return self._portal.call(self._aio.prune())

    def start(self) -> None:
        """Relay in the background: at once when woken, else every ``interval`` seconds."""
        return self._portal.run_sync(self._aio.start)

    def close(self) -> None:
        """Stop relaying, after a last round (at most 5 seconds) for what this
        process committed just before; what is still unsent waits for the next relay, here
        or elsewhere."""
        return self._portal.call(self._aio.aclose())


class AgentStore(Wrapper):
    """Synchronous twin of :class:`agency_data.postgres.agents.AgentStore`.

    The agents of one tenant.
    """

    __slots__ = ()
    _aio: AsyncAgentStore
    _aio_type: ClassVar[type[Any]] = AsyncAgentStore

    @property
    def aio(self) -> AsyncAgentStore:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def create(
        self,
        name: str,
        type: str,
        capabilities: dict[str, Any] | None = None,
        status: AgentStatus | str = AgentStatus.ACTIVE,
    ) -> Agent:
        """Register an agent and return it."""
        return self._portal.call(self._aio.create(name, type, capabilities, status))

    def close(self) -> None:
        """Wait for the reads and creates gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        return self._portal.call(self._aio.aclose())

    def get(
        self, agent_id: UUID | str, *, cached: bool | None = None, consistent: bool = False
    ) -> Agent:
        """The agent with ``agent_id``; :class:`NotFound` if this tenant has none."""
        return self._portal.call(self._aio.get(agent_id, cached=cached, consistent=consistent))

    def get_many(
        self, agent_ids: Iterable[UUID | str], *, consistent: bool = False
    ) -> builtins.list[Agent]:
        """The agents that exist among ``agent_ids`` (one round trip), in no particular order."""
        return self._portal.call(
            self._aio.get_many(self._portal.feed(agent_ids), consistent=consistent)
        )

    def update(
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
        """Change the given fields only."""
        return self._portal.call(
            self._aio.update(
                agent_id,
                name=name,
                type=type,
                capabilities=capabilities,
                status=status,
                expected_version=expected_version,
                expected_updated_at=expected_updated_at,
            )
        )

    def delete(self, agent_id: UUID | str) -> None:
        """Delete the agent; its tasks stay, with no agent. :class:`NotFound` if absent."""
        return self._portal.call(self._aio.delete(agent_id))

    def list(
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
        """Agents in creation order, filtered; follow ``next_cursor`` for the next page."""
        return self._portal.call(
            self._aio.list(
                type=type,
                status=status,
                capabilities=capabilities,
                has_capabilities=has_capabilities,
                name_contains=name_contains,
                limit=limit,
                cursor=cursor,
                consistent=consistent,
            )
        )

    def count(
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
        return self._portal.call(
            self._aio.count(
                type=type,
                status=status,
                capabilities=capabilities,
                has_capabilities=has_capabilities,
                name_contains=name_contains,
                consistent=consistent,
            )
        )


class Transaction(Wrapper):
    """Synchronous twin of :class:`agency_data.postgres.database.Transaction`.

    An open transaction (or savepoint, when nested): its connection and on-commit hooks.
    """

    __slots__ = ()
    _aio: AsyncTransaction
    _aio_type: ClassVar[type[Any]] = AsyncTransaction

    @property
    def aio(self) -> AsyncTransaction:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def parent(self) -> Transaction | None:
        """The async object's ``parent``."""
        value = self._aio.parent
        return None if value is None else Transaction._of(value, self._portal)

    @property
    def consistent(self) -> bool:
        """The async object's ``consistent``."""
        return self._aio.consistent

    @property
    def nested(self) -> bool:
        """True for a savepoint inside another transaction."""
        return self._aio.nested

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (sync or async) after the outermost transaction commits; never on rollback."""
        return self._portal.run_sync(self._aio.on_commit, self._portal.callback(hook))

    def publish(self, destination: str, message: Any, *, kind: str = "stream") -> UUID:
        """Publish ``message`` (JSON-shaped) to a Redis stream (or, ``kind="channel"``, a
        pub/sub channel) of this transaction's tenant if and only if the transaction commits;
        return the id consumers deduplicate on."""
        return self._portal.call(self._aio.publish(destination, message, kind=kind))


class ScriptRegistry(Wrapper):
    """Synchronous twin of :class:`agency_data.redis.scripts.ScriptRegistry`.

    Named Lua scripts on one Redis client.
    """

    __slots__ = ()
    _aio: AsyncScriptRegistry
    _aio_type: ClassVar[type[Any]] = AsyncScriptRegistry

    @property
    def aio(self) -> AsyncScriptRegistry:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def register(self, name: str, source: str) -> None:
        """Register ``source`` as ``name`` (replacing any earlier script of that name)."""
        return self._portal.run_sync(self._aio.register, name, source)

    @property
    def names(self) -> list[str]:
        """The registered scripts' names."""
        return self._aio.names

    def sha(self, name: str) -> str:
        """The SHA1 digest Redis knows the script by."""
        return self._portal.run_sync(self._aio.sha, name)

    def run(self, name: str, *, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        """Run script ``name`` with ``keys`` (KEYS) and ``args`` (ARGV); return its result."""
        return self._portal.call(self._aio.run(name, keys=keys, args=args))


class Retention(Wrapper):
    """Synchronous twin of :class:`agency_data.retention.runner.Retention`.

    Applies the retention policies as the owner role.
    """

    __slots__ = ()
    _aio: AsyncRetention
    _aio_type: ClassVar[type[Any]] = AsyncRetention

    @property
    def aio(self) -> AsyncRetention:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def config(self) -> RetentionConfig:
        """The async object's ``config``."""
        return self._aio.config

    @property
    def archive_dir(self) -> Path:
        """The async object's ``archive_dir``."""
        return self._aio.archive_dir

    def run(self) -> RetentionReport:
        """Apply every policy once, now."""
        return self._portal.call(self._aio.run())

    def start(self) -> None:
        """Run every ``retention.interval`` seconds in the background (when it is set)."""
        return self._portal.run_sync(self._aio.start)

    def close(self) -> None:
        """Stop the background runs."""
        return self._portal.call(self._aio.aclose())


class TenantScope(QueryMethods):
    """Synchronous twin of :class:`agency_data.scope.TenantScope`.

    The data layer as one tenant sees it: the same API, scoped to ``tenant_id``.
    """

    __slots__ = ()
    _aio: AsyncTenantScope
    _aio_type: ClassVar[type[Any]] = AsyncTenantScope

    @property
    def aio(self) -> AsyncTenantScope:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant_id(self) -> str:
        """The async object's ``tenant_id``."""
        return self._aio.tenant_id

    @property
    def cache(self) -> Cache:
        """The async object's ``cache``."""
        return self._child("cache", self._live().cache, Cache)

    @property
    def agents(self) -> AgentStore:
        """The async object's ``agents``."""
        return self._child("agents", self._live().agents, AgentStore)

    @property
    def tasks(self) -> TaskStore:
        """The async object's ``tasks``."""
        return self._child("tasks", self._live().tasks, TaskStore)

    @property
    def audit(self) -> AuditTrail:
        """The async object's ``audit``."""
        return self._child("audit", self._live().audit, AuditTrail)

    @property
    def embeddings(self) -> EmbeddingStore:
        """The async object's ``embeddings``."""
        return self._child("embeddings", self._live().embeddings, EmbeddingStore)

    @property
    def sessions(self) -> SessionStore:
        """The async object's ``sessions``."""
        return self._child("sessions", self._live().sessions, SessionStore)

    @property
    def pubsub(self) -> PubSub:
        """The async object's ``pubsub``."""
        return self._child("pubsub", self._live().pubsub, PubSub)

    @property
    def streams(self) -> Streams:
        """The async object's ``streams``."""
        return self._child("streams", self._live().streams, Streams)

    @property
    def changes(self) -> ChangeFeed:
        """The async object's ``changes``."""
        return self._child("changes", self._live().changes, ChangeFeed)

    @property
    def memory(self) -> Memory:
        """The async object's ``memory``."""
        return self._child("memory", self._live().memory, Memory)

    @property
    def events(self) -> Events:
        """The async object's ``events``."""
        return self._child("events", self._live().events, Events)

    def close(self) -> None:
        """Wait for this tenant's reads and writes still gathered with other callers'."""
        return self._portal.call(self._aio.aclose())

    def lock(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        auto_renew: bool = False,
        holder: str | None = None,
    ) -> Lock:
        """A distributed lock (see :mod:`agency_data.coord.locks`); use ``with``."""
        return Lock._of(
            self._live().lock(name, ttl=ttl, wait=wait, auto_renew=auto_renew, holder=holder),
            self._portal,
        )

    def export(
        self, source: str, *, masked: bool = True, batch_size: int = 1000
    ) -> Generator[dict[str, Any], None, None]:
        """Every row of ``source`` (``agents``, ``tasks`` or a collection's name) of this
        tenant, oldest first, as JSON-ready dicts; ``masked`` (the default) hides the values
        under ``masking.paths`` and masks every string by ``masking.rules``. Use ``for``;
        see :mod:`agency_data.security.export`."""
        return self._portal.iterate(self._aio.export(source, masked=masked, batch_size=batch_size))


class ApiKeys(Wrapper):
    """Synchronous twin of :class:`agency_data.security.api_keys.ApiKeys`.

    Make, list, revoke and check API keys (``dl.admin.api_keys``).
    """

    __slots__ = ()
    _aio: AsyncApiKeys
    _aio_type: ClassVar[type[Any]] = AsyncApiKeys

    @property
    def aio(self) -> AsyncApiKeys:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def close(self) -> None:
        """Wait for the key lookups still running."""
        return self._portal.call(self._aio.aclose())

    def create(
        self,
        tenant: str,
        role: ApiKeyRole | str,
        *,
        name: str | None = None,
        expires_in: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key for ``tenant`` with ``role``; return it and its text, which is never
        shown again. ``name`` (default: the key's id) is the audit trail's actor for what
        the key does; ``expires_in`` (seconds) ends it by itself."""
        return self._portal.call(self._aio.create(tenant, role, name=name, expires_in=expires_in))

    def list(self, tenant: str | None = None, *, revoked: bool = False) -> builtins.list[ApiKey]:
        """The keys of ``tenant`` (of every tenant when None, as the owner sees them), oldest
        first; revoked ones too with ``revoked=True``."""
        return self._portal.call(self._aio.list(tenant, revoked=revoked))

    def revoke(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke the key with ``key_id``: requests carrying it are refused from now on.
        :class:`NotFound` if there is no such key (of ``tenant``, when given)."""
        return self._portal.call(self._aio.revoke(key_id, tenant=tenant))

    def verify(self, text: Any) -> ApiKey:
        """The live key ``text`` is; :class:`AuthenticationFailed` if it is malformed, unknown,
        revoked or expired (the error does not say which)."""
        return self._portal.call(self._aio.verify(text))


class KeyAdmin(Wrapper):
    """Synchronous twin of :class:`agency_data.security.rekey.KeyAdmin`.

    Data keys of every tenant: rotate the KEK, re-encrypt, destroy.
    """

    __slots__ = ()
    _aio: AsyncKeyAdmin
    _aio_type: ClassVar[type[Any]] = AsyncKeyAdmin

    @property
    def aio(self) -> AsyncKeyAdmin:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def tenants(self) -> list[str]:
        """Every tenant with data keys in the key store."""
        return self._portal.run_sync(self._aio.tenants)

    def rotate(self) -> int:
        """Re-wrap every tenant's data keys under the current KEK; how many keys."""
        return self._portal.call(self._aio.rotate())

    def destroy(self, tenant: str) -> bool:
        """Crypto-shred ``tenant``: its data keys removed, so that every value sealed for it,
        in PostgreSQL, Redis and every backup, can never be read again. False if it had none."""
        return self._portal.call(self._aio.destroy(tenant))

    def reencrypt(self, tenant: str, *, batch_size: int = 500) -> ReencryptReport:
        """Rewrite ``tenant``'s sealed values (and plain ones of chosen fields) under a new
        data key, online. The older keys stay, able to decrypt what a transaction still open
        sealed with them; :meth:`retire` removes them once nothing uses them."""
        return self._portal.call(self._aio.reencrypt(tenant, batch_size=batch_size))

    def retire(self, tenant: str, *, grace: float = 3600.0) -> list[str]:
        """Remove ``tenant``'s older keys that no stored value uses and that stopped being
        active at least ``grace`` seconds ago (a transaction still open could otherwise hold
        a value sealed with one); the keys removed."""
        return self._portal.call(self._aio.retire(tenant, grace=grace))


class SubjectRights(Wrapper):
    """Synchronous twin of :class:`agency_data.subjects.rights.SubjectRights`.

    ``dl.subjects``: export and erase what a tenant holds about a subject.
    """

    __slots__ = ()
    _aio: AsyncSubjectRights
    _aio_type: ClassVar[type[Any]] = AsyncSubjectRights

    @property
    def aio(self) -> AsyncSubjectRights:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def config(self) -> SubjectsConfig:
        """The async object's ``config``."""
        return self._aio.config

    def export(self, tenant: str, subject: str) -> dict[str, Any]:
        """Everything ``tenant`` holds about ``subject``, as one JSON-ready document."""
        return self._portal.call(self._aio.export(tenant, subject))

    def erase(self, tenant: str, subject: str) -> ErasureReport:
        """Remove everything ``tenant`` holds about ``subject`` from every store; the counts."""
        return self._portal.call(self._aio.erase(tenant, subject))

    def erase_tenant(self, tenant: str) -> ErasureReport:
        """Remove everything of ``tenant`` from every store: its rows in every table, every
        Redis key of it (sessions, streams, locks, cache, from every process's L1 too) and its
        data keys (so that its sealed values in backups are unreadable as well). Its audit
        trail stays (records hold digests, not values) and records the erasure."""
        return self._portal.call(self._aio.erase_tenant(tenant))


class PolicyOps(Wrapper):
    """Synchronous twin of :class:`agency_data.tasks.policies.PolicyOps`.

    The policy part of :class:`~agency_data.tasks.TaskStore`.
    """

    __slots__ = ()
    _aio: AsyncPolicyOps
    _aio_type: ClassVar[type[Any]] = AsyncPolicyOps

    @property
    def aio(self) -> AsyncPolicyOps:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def set_policy(
        self,
        type: str,
        *,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        retry_first: float | None = None,
        retry_most: float | None = None,
    ) -> TaskTypePolicy:
        """Set one type's lease length, attempts and backoff, shared by every process."""
        return self._portal.call(
            self._aio.set_policy(
                type,
                lease_seconds=lease_seconds,
                max_attempts=max_attempts,
                retry_first=retry_first,
                retry_most=retry_most,
            )
        )

    def policy(self, type: str) -> TaskTypePolicy:
        """One type's policy (all defaults if it has none of its own)."""
        return self._portal.call(self._aio.policy(type))

    def policies(self) -> builtins.list[TaskTypePolicy]:
        """The types with a policy of their own (paused, or with settings)."""
        return self._portal.call(self._aio.policies())

    def pause(self, type: str) -> TaskTypePolicy:
        """Stop claims of ``type`` (in every process) until :meth:`resume`; running tasks go on."""
        return self._portal.call(self._aio.pause(type))

    def resume(self, type: str) -> TaskTypePolicy:
        """Let ``type`` be claimed again, waking workers that wait for it."""
        return self._portal.call(self._aio.resume(type))


class Job(Wrapper):
    """Synchronous twin of :class:`agency_data.tasks.queue.Job`.

    A claimed task inside :meth:`QueueOps.working`: its lease is kept while the block runs.
    """

    __slots__ = ()
    _aio: AsyncJob
    _aio_type: ClassVar[type[Any]] = AsyncJob

    @property
    def aio(self) -> AsyncJob:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def task(self) -> Task:
        """The async object's ``task``."""
        return self._aio.task

    @property
    def result(self) -> Any:
        """What the task completes with when the block ends cleanly."""
        return self._aio.result

    @result.setter
    def result(self, value: Any) -> None:
        self._aio.result = value

    @property
    def finished(self) -> Task | None:
        """The task as finished by :meth:`complete` or :meth:`fail`, if the block called one."""
        return self._aio.finished

    @property
    def lost(self) -> AgencyDataError | None:
        """Why the lease is gone (LeaseLost or TaskCancelled), once a heartbeat found out."""
        return self._aio.lost

    def check(self) -> None:
        """Raise :attr:`lost` if a heartbeat found the lease gone (no round trip)."""
        return self._portal.run_sync(self._aio.check)

    def heartbeat(self) -> datetime:
        """Extend the lease now (the background heartbeats do this anyway)."""
        return self._portal.call(self._aio.heartbeat())

    def complete(self, result: Any = None) -> Task:
        """Complete the task with ``result`` now."""
        return self._portal.call(self._aio.complete(result))

    def fail(self, error: str | BaseException, *, retry: bool = True) -> Task:
        """Record a failed attempt now (see :meth:`QueueOps.fail`)."""
        return self._portal.call(self._aio.fail(error, retry=retry))


class QueueOps(Wrapper):
    """Synchronous twin of :class:`agency_data.tasks.queue.QueueOps`.

    The queue half of :class:`~agency_data.tasks.TaskStore` (shares its database and tenant).
    """

    __slots__ = ()
    _aio: AsyncQueueOps
    _aio_type: ClassVar[type[Any]] = AsyncQueueOps

    @property
    def aio(self) -> AsyncQueueOps:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def claim(
        self,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        n: int = 1,
        *,
        wait: float | None = None,
        lease_seconds: float | None = None,
        auto_heartbeat: bool = False,
    ) -> builtins.list[Task]:
        """Take up to ``n`` due tasks for ``agent_id``: highest priority first, then oldest."""
        return self._portal.call(
            self._aio.claim(
                agent_id,
                types,
                n,
                wait=wait,
                lease_seconds=lease_seconds,
                auto_heartbeat=auto_heartbeat,
            )
        )

    def unclaim(self, tasks: Iterable[Task]) -> builtins.list[UUID]:
        """Hand tasks a claim returned back to the queue as if never claimed: pending at
        their place in the queue, the attempt not counted, the lease token void."""
        return self._portal.call(self._aio.unclaim(self._portal.feed(tasks)))

    def heartbeat(
        self,
        task: Task | UUID | str,
        *,
        lease_seconds: float | None = None,
        lease_token: UUID | str | None = None,
    ) -> datetime:
        """Extend a held task's lease (by ``lease_seconds`` from now); the new expiry."""
        return self._portal.call(
            self._aio.heartbeat(task, lease_seconds=lease_seconds, lease_token=lease_token)
        )

    def check(self, task: Task | UUID | str, *, lease_token: UUID | str | None = None) -> None:
        """Raise if the worker should stop: the task was cancelled or its lease is gone."""
        return self._portal.call(self._aio.check(task, lease_token=lease_token))

    def working(
        self, task: Task, *, lease_seconds: float | None = None
    ) -> AbstractContextManager[Job]:
        """Work on a claimed task with its lease kept alive in the background."""
        return self._portal.enter(self._aio.working(task, lease_seconds=lease_seconds), Job._of)

    def complete(
        self,
        task: Task | UUID | str,
        result: Any = None,
        *,
        lease_token: UUID | str | None = None,
        override: bool = False,
    ) -> Task:
        """Mark a running task completed, recording ``result`` (any JSON value)."""
        return self._portal.call(
            self._aio.complete(task, result, lease_token=lease_token, override=override)
        )

    def fail(
        self,
        task: Task | UUID | str,
        error: str | BaseException,
        *,
        retry: bool = True,
        traceback: str | None = None,
        lease_token: UUID | str | None = None,
        override: bool = False,
    ) -> Task:
        """Record a failed attempt of a running task."""
        return self._portal.call(
            self._aio.fail(
                task,
                error,
                retry=retry,
                traceback=traceback,
                lease_token=lease_token,
                override=override,
            )
        )

    def cancel(self, task: Task | UUID | str, reason: str | None = None) -> Task:
        """Cancel a pending or running task (its worker learns at its next heartbeat)."""
        return self._portal.call(self._aio.cancel(task, reason))

    def retry(self, task: Task | UUID | str) -> Task:
        """Put a failed or dead task back in the queue; its next claim counts another attempt."""
        return self._portal.call(self._aio.retry(task))

    def requeue_dead(
        self,
        task_ids: Iterable[UUID | str] | None = None,
        *,
        type: str | Sequence[str] | None = None,
        limit: int = 1000,
    ) -> builtins.list[Task]:
        """Send dead tasks (these ids, these types, or all) back to the queue, oldest first."""
        return self._portal.call(
            self._aio.requeue_dead(self._portal.feed(task_ids), type=type, limit=limit)
        )

    def sweep(self) -> dict[str, int]:
        """Rescue tasks whose lease ran out now: how many went back to pending, how many died."""
        return self._portal.call(self._aio.sweep())

    def stats(self) -> TaskStats:
        """Counts by status and type, the oldest due task's wait, scheduled, blocked and
        expired-lease counts, the next lease expiry and the paused types."""
        return self._portal.call(self._aio.stats())


class ScheduleOps(Wrapper):
    """Synchronous twin of :class:`agency_data.tasks.schedules.ScheduleOps`.

    The schedules half of :class:`~agency_data.tasks.TaskStore`.
    """

    __slots__ = ()
    _aio: AsyncScheduleOps
    _aio_type: ClassVar[type[Any]] = AsyncScheduleOps

    @property
    def aio(self) -> AsyncScheduleOps:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def schedule(
        self,
        name: str,
        *,
        type: str,
        cron: str | None = None,
        every: float | None = None,
        data: dict[str, Any] | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timezone: str = "UTC",
    ) -> TaskSchedule:
        """Create or change the schedule ``name``: a task of ``type`` per tick of its rule."""
        return self._portal.call(
            self._aio.schedule(
                name,
                type=type,
                cron=cron,
                every=every,
                data=data,
                priority=priority,
                max_attempts=max_attempts,
                timezone=timezone,
            )
        )

    def unschedule(self, name: str) -> None:
        """Remove the schedule ``name`` (tasks it already enqueued stay)."""
        return self._portal.call(self._aio.unschedule(name))

    def schedules(self) -> builtins.list[TaskSchedule]:
        """Every schedule of this tenant, by name."""
        return self._portal.call(self._aio.schedules())

    def run_due_schedules(self) -> builtins.list[Task]:
        """Enqueue the task of every schedule that is due now; the tasks enqueued."""
        return self._portal.call(self._aio.run_due_schedules())


class TaskStore(QueueOps, PolicyOps, ScheduleOps):
    """Synchronous twin of :class:`agency_data.tasks.store.TaskStore`.

    The tasks of one tenant: records here, the queue in :class:`QueueOps`.
    """

    __slots__ = ()
    _aio: AsyncTaskStore
    _aio_type: ClassVar[type[Any]] = AsyncTaskStore

    @property
    def aio(self) -> AsyncTaskStore:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    def close(self) -> None:
        """Wait for the reads and creates gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        return self._portal.call(self._aio.aclose())

    def create(
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
        """Queue one task and return it."""
        return self._portal.call(
            self._aio.create(
                type,
                data,
                priority,
                agent_id,
                run_at=run_at,
                delay=delay,
                max_attempts=max_attempts,
                key=key,
                on_conflict=on_conflict,
                depends_on=self._portal.feed(depends_on),
            )
        )

    def create_many(
        self, items: Iterable[Mapping[str, Any]], *, on_conflict: OnConflict = "return"
    ) -> builtins.list[Task]:
        """Queue many tasks at once, all or none; returned in the order given."""
        return self._portal.call(
            self._aio.create_many(self._portal.feed(items), on_conflict=on_conflict)
        )

    def worker(
        self,
        handler: Callable[[Task], Any],
        *,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        concurrency: int = 1,
        lease_seconds: float | None = None,
    ) -> Worker:
        """A :class:`~agency_data.tasks.Worker` running ``handler`` on this tenant's tasks."""
        return Worker._of(
            self._live().worker(
                self._portal.callback(handler),
                agent_id=agent_id,
                types=types,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
            ),
            self._portal,
        )

    def run_scheduler(self, *, sweep: bool = True) -> None:
        """Enqueue due schedules (and, with ``sweep``, rescue expired leases) until cancelled."""
        return self._portal.call(self._aio.run_scheduler(sweep=sweep))

    def get(self, task_id: UUID | str, *, consistent: bool = False) -> Task:
        """The task with ``task_id``; :class:`NotFound` if this tenant has none."""
        return self._portal.call(self._aio.get(task_id, consistent=consistent))

    def get_many(
        self, task_ids: Iterable[UUID | str], *, consistent: bool = False
    ) -> builtins.list[Task]:
        """The tasks that exist among ``task_ids`` (one round trip), in no particular order."""
        return self._portal.call(
            self._aio.get_many(self._portal.feed(task_ids), consistent=consistent)
        )

    def dependencies(self, task_id: UUID | str) -> builtins.list[UUID]:
        """The ids of the tasks ``task_id`` depends on (sorted)."""
        return self._portal.call(self._aio.dependencies(task_id))

    def list(
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
        """Tasks in creation order, filtered; follow ``next_cursor`` for the next page."""
        return self._portal.call(
            self._aio.list(
                agent_id=agent_id,
                status=status,
                type=type,
                priority_min=priority_min,
                priority_max=priority_max,
                created_after=created_after,
                created_before=created_before,
                data_contains=data_contains,
                limit=limit,
                cursor=cursor,
                consistent=consistent,
            )
        )

    def count(
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
        return self._portal.call(
            self._aio.count(
                agent_id=agent_id,
                status=status,
                type=type,
                priority_min=priority_min,
                priority_max=priority_max,
                created_after=created_after,
                created_before=created_before,
                data_contains=data_contains,
                consistent=consistent,
            )
        )

    def search(
        self,
        text: str,
        *,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        type: str | Sequence[str] | None = None,
        limit: int = 20,
        consistent: bool = False,
    ) -> builtins.list[Task]:
        """Full-text search over task type and data, best match first."""
        return self._portal.call(
            self._aio.search(text, status=status, type=type, limit=limit, consistent=consistent)
        )

    def delete(self, task_id: UUID | str) -> None:
        """Delete a task; :class:`NotFound` if this tenant has none with that id."""
        return self._portal.call(self._aio.delete(task_id))


class Worker(Wrapper):
    """Synchronous twin of :class:`agency_data.tasks.worker.Worker`.

    Runs ``handler`` on claimed tasks, up to ``concurrency`` at once, until stopped.
    """

    __slots__ = ()
    _aio: AsyncWorker
    _aio_type: ClassVar[type[Any]] = AsyncWorker

    @property
    def aio(self) -> AsyncWorker:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def completed(self) -> int:
        """How many tasks this worker completed, failed, and lost (lease or cancellation)."""
        return self._aio.completed

    @property
    def failed(self) -> int:
        """The async object's ``failed``."""
        return self._aio.failed

    @property
    def lost(self) -> int:
        """The async object's ``lost``."""
        return self._aio.lost

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once the running handlers finish."""
        return self._portal.run_sync(self._aio.stop)

    def run(self, *, max_tasks: int | None = None) -> int:
        """Work until :meth:`stop` (or ``max_tasks`` tasks taken); how many were taken."""
        return self._portal.call(self._aio.run(max_tasks=max_tasks))


class Collection(Wrapper):
    """Synchronous twin of :class:`agency_data.vectors.collection.Collection`.

    A named collection of embeddings, scoped to one tenant.
    """

    __slots__ = ()
    _aio: AsyncCollection
    _aio_type: ClassVar[type[Any]] = AsyncCollection

    @property
    def aio(self) -> AsyncCollection:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    @property
    def tenant(self) -> str:
        """The async object's ``tenant``."""
        return self._aio.tenant

    @property
    def name(self) -> str:
        """The async object's ``name``."""
        return self._aio.name

    def close(self) -> None:
        """Wait for the reads and stores gathered with other callers' that are still running
        (``DataLayer.aclose`` does this before closing the pool)."""
        return self._portal.call(self._aio.aclose())

    def spec(self) -> CollectionSpec:
        """The collection's shape: dimension, metric, storage and index (cached)."""
        return self._portal.call(self._aio.spec())

    def with_embedder(self, embedder: Any) -> Self:
        """This collection, embedding texts with ``embedder`` (see
        :mod:`agency_data.vectors.embedders`); reads and writes still share round trips with
        the other views of it."""
        return type(self)._of(self._aio.with_embedder(embedder), self._portal)

    @property
    def embedder(self) -> Embedder | None:
        """The text embedder used by :meth:`store_texts` and :meth:`search_text`, if any."""
        return self._aio.embedder

    def store(self, item: Embedding | Mapping[str, Any]) -> str:
        """Store one embedding (replacing the one with its ``id``, if given); return its id."""
        return self._portal.call(self._aio.store(item))

    def store_many(self, items: Iterable[Embedding | Mapping[str, Any]]) -> builtins.list[str]:
        """Store embeddings in one transaction, all or none; return their ids in order."""
        return self._portal.call(self._aio.store_many(self._portal.feed(items)))

    def store_texts(
        self,
        texts: Iterable[str],
        metadatas: Iterable[Mapping[str, Any] | None] | None = None,
        ids: Iterable[str | uuid.UUID | None] | None = None,
        *,
        entity_type: str = "document",
        entity_ids: Iterable[str] | None = None,
    ) -> builtins.list[str]:
        """Embed ``texts`` with the collection's embedder and store them (as ``content``) in
        one transaction, all or none; return their ids in order."""
        return self._portal.call(
            self._aio.store_texts(
                self._portal.feed(texts),
                self._portal.feed(metadatas),
                self._portal.feed(ids),
                entity_type=entity_type,
                entity_ids=self._portal.feed(entity_ids),
            )
        )

    def stream_store(
        self,
        items: AsyncIterable[Embedding | Mapping[str, Any]]
        | Iterable[Embedding | Mapping[str, Any]],
        *,
        batch_size: int = 1000,
    ) -> int:
        """Store an unbounded stream in batches of ``batch_size``; return how many were stored."""
        return self._portal.call(
            self._aio.stream_store(self._portal.feed_stream(items), batch_size=batch_size)
        )

    def get(self, embedding_id: str | uuid.UUID, *, consistent: bool = False) -> Embedding:
        """The embedding with ``embedding_id``; :class:`NotFound` if this tenant has none."""
        return self._portal.call(self._aio.get(embedding_id, consistent=consistent))

    def get_many(
        self, embedding_ids: Iterable[str | uuid.UUID], *, consistent: bool = False
    ) -> builtins.list[Embedding]:
        """The embeddings that exist among ``embedding_ids``, in no particular order."""
        return self._portal.call(
            self._aio.get_many(self._portal.feed(embedding_ids), consistent=consistent)
        )

    def count(self, filter: Mapping[str, Any] | None = None, *, consistent: bool = False) -> int:
        """How many of this tenant's embeddings match ``filter`` (all, without one)."""
        return self._portal.call(self._aio.count(filter, consistent=consistent))

    def delete(
        self,
        ids: Iterable[str | uuid.UUID] | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
    ) -> int:
        """Delete by ids, or every embedding matching ``filter``; return how many went (ids
        this tenant does not have are skipped)."""
        return self._portal.call(self._aio.delete(self._portal.feed(ids), filter=filter))

    def update_metadata(
        self, embedding_id: str | uuid.UUID, metadata: dict[str, Any], *, merge: bool = True
    ) -> Embedding:
        """Replace the metadata, or (``merge=True``) add and overwrite top-level keys."""
        return self._portal.call(self._aio.update_metadata(embedding_id, metadata, merge=merge))

    def find_similar(
        self,
        vector: Any,
        limit: int = 10,
        *,
        threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """The ``limit`` nearest embeddings to ``vector``, best first."""
        return self._portal.call(
            self._aio.find_similar(
                vector,
                limit,
                threshold=threshold,
                filter=filter,
                include_vectors=include_vectors,
                ef_search=ef_search,
                probes=probes,
                exact=exact,
                rerank=rerank,
                consistent=consistent,
            )
        )

    def measure_recall(
        self,
        queries: Iterable[SimilarityQuery | Mapping[str, Any]],
        *,
        ef_search: int | None = None,
        probes: int | None = None,
    ) -> float | None:
        """The recall of this collection's index for ``queries``: the share of each query's
        true ``limit`` nearest neighbours that the index search returns, averaged."""
        return self._portal.call(
            self._aio.measure_recall(self._portal.feed(queries), ef_search=ef_search, probes=probes)
        )

    def batch_search(
        self,
        queries: Iterable[SimilarityQuery | Mapping[str, Any]],
        *,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[builtins.list[SimilarityResult]]:
        """Run many searches in one round trip (a pipeline); one result list per query."""
        return self._portal.call(
            self._aio.batch_search(
                self._portal.feed(queries),
                include_vectors=include_vectors,
                ef_search=ef_search,
                probes=probes,
                exact=exact,
                rerank=rerank,
                consistent=consistent,
            )
        )

    @property
    def span_collection(self) -> str:
        """The name spans give this collection (``db.collection.name``)."""
        return self._aio.span_collection

    def search_stream(
        self,
        vector: Any,
        *,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
        include_vectors: bool = False,
        batch_size: int = 500,
    ) -> Generator[SimilarityResult, None, None]:
        """Every matching embedding, nearest first, fetched ``batch_size`` at a time."""
        return self._portal.iterate(
            self._aio.search_stream(
                vector,
                filter=filter,
                threshold=threshold,
                include_vectors=include_vectors,
                batch_size=batch_size,
            )
        )

    def search_text(
        self,
        query: str,
        limit: int = 10,
        *,
        threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        ef_search: int | None = None,
        probes: int | None = None,
        exact: bool = False,
        rerank: int = 10,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """The ``limit`` embeddings nearest to ``query``'s vector (made by the collection's
        embedder), best first; the other arguments are :meth:`find_similar`'s."""
        return self._portal.call(
            self._aio.search_text(
                query,
                limit,
                threshold=threshold,
                filter=filter,
                include_vectors=include_vectors,
                ef_search=ef_search,
                probes=probes,
                exact=exact,
                rerank=rerank,
                consistent=consistent,
            )
        )

    def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        """The vector the collection's embedder makes of a search query."""
        return self._portal.call(self._aio.embed_query(query))

    def hybrid_search(
        self,
        text: str,
        vector: Any = None,
        limit: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        k: int = 60,
        candidates: int | None = None,
        consistent: bool = False,
    ) -> builtins.list[SimilarityResult]:
        """Full-text and vector results fused by reciprocal rank fusion, best first."""
        return self._portal.call(
            self._aio.hybrid_search(
                text,
                vector,
                limit,
                filter=filter,
                k=k,
                candidates=candidates,
                consistent=consistent,
            )
        )

    def describe(self) -> CollectionInfo:
        """Rows (this tenant's), sizes, bytes per vector, and the index with its validity."""
        return self._portal.call(self._aio.describe())


class ManagedCollection(Collection):
    """Synchronous twin of :class:`agency_data.vectors.admin.ManagedCollection`.

    A collection as the unscoped data layer sees it: its default tenant's rows, plus upkeep.
    """

    __slots__ = ()
    _aio: AsyncManagedCollection
    _aio_type: ClassVar[type[Any]] = AsyncManagedCollection

    @property
    def aio(self) -> AsyncManagedCollection:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def create_index(self, kind: str = "hnsw", **options: Unpack[IndexOptions]) -> CollectionInfo:
        """Build the collection's ANN index concurrently (writes go on meanwhile)."""
        return self._portal.call(self._aio.create_index(kind, **options))

    def drop_index(self) -> None:
        """Drop the ANN index (searches become exact scans)."""
        return self._portal.call(self._aio.drop_index())

    def reindex(self) -> None:
        """Rebuild the ANN index concurrently."""
        return self._portal.call(self._aio.reindex())

    def optimize(self) -> OptimizeReport:
        """ANALYZE; rebuild a bloated index; resize IVFFlat lists that no longer fit the rows."""
        return self._portal.call(self._aio.optimize())


class EmbeddingStore(Collection):
    """Synchronous twin of :class:`agency_data.vectors.store.EmbeddingStore`.

    A tenant's embeddings: the default collection (made on first use) and the others.
    """

    __slots__ = ()
    _aio: AsyncEmbeddingStore
    _aio_type: ClassVar[type[Any]] = AsyncEmbeddingStore

    @property
    def aio(self) -> AsyncEmbeddingStore:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def close(self) -> None:
        """Wait for the gathered reads and stores of this store and its collections."""
        return self._portal.call(self._aio.aclose())

    def collection(self, name: str, *, embedder: Any = None) -> Collection:
        """The collection ``name`` (it must exist by the time it is used), embedding texts
        with ``embedder`` if given (else with the one it was created with, if any)."""
        return Collection._of(self._live().collection(name, embedder=embedder), self._portal)


class ManagedEmbeddingStore(ManagedCollection):
    """Synchronous twin of :class:`agency_data.vectors.store.ManagedEmbeddingStore`.

    The default tenant's embeddings, plus creating, listing and dropping collections.
    """

    __slots__ = ()
    _aio: AsyncManagedEmbeddingStore
    _aio_type: ClassVar[type[Any]] = AsyncManagedEmbeddingStore

    @property
    def aio(self) -> AsyncManagedEmbeddingStore:
        """The async object this one stands for (for async code, on the portal's loop)."""
        return self._aio

    def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        storage: str = "vector",
        *,
        exist_ok: bool = False,
        embedder: Any = None,
    ) -> ManagedCollection:
        """Create a collection (shared by all tenants; each sees only its own rows)."""
        return ManagedCollection._of(
            self._portal.call(
                self._aio.create_collection(
                    name, dimension, metric, storage, exist_ok=exist_ok, embedder=embedder
                )
            ),
            self._portal,
        )

    def close(self) -> None:
        """Wait for the gathered reads and stores of this store and its collections."""
        return self._portal.call(self._aio.aclose())

    def collection(self, name: str, *, embedder: Any = None) -> ManagedCollection:
        """The collection ``name`` (it must exist by the time it is used), embedding texts
        with ``embedder`` if given (else with the one it was created with, if any)."""
        return ManagedCollection._of(self._live().collection(name, embedder=embedder), self._portal)

    def list_collections(self) -> list[str]:
        """The names of every collection."""
        return self._portal.call(self._aio.list_collections())

    def drop_collection(self, name: str) -> None:
        """Drop a collection with every embedding in it, for all tenants."""
        return self._portal.call(self._aio.drop_collection(name))
