"""The :class:`DataLayer`: one object that owns the connections and routes to the stores."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agency_data.cache.backend import CacheBackend
from agency_data.cache.store import Cache
from agency_data.config import DataLayerConfig
from agency_data.coord.locks import Lock, register_lock_scripts
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.scripts import ScriptRegistry
from agency_data.coord.sessions import SessionStore
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.errors import AgencyDataError, BackendUnavailable
from agency_data.health import check_health
from agency_data.migrations import BUILTIN_SOURCE, MigrationReport, MigrationRunner, MigrationSource
from agency_data.models import DEFAULT_TENANT, HealthStatus
from agency_data.postgres._input import check_tenant
from agency_data.postgres.agents import AgentStore
from agency_data.postgres.database import Database
from agency_data.postgres.pool import Pool, open_pool
from agency_data.postgres.tasks import TaskStore
from agency_data.postgres.wakeups import TaskWakeups
from agency_data.redis.client import RedisClient, close_client, make_client
from agency_data.redis.client import prepare as prepare_redis
from agency_data.scope import QueryMethods, TenantScope
from agency_data.vectors.catalog import Catalog
from agency_data.vectors.store import EmbeddingStore

__all__ = ["DataLayer"]

_log = logging.getLogger("agency_data")


class DataLayer(QueryMethods):
    """The data layer of an agent platform: PostgreSQL, pgvector and Redis behind one object.

    Usage::

        async with DataLayer() as dl:             # embedded servers when nothing is configured
            print((await dl.health()).status)

        dl = DataLayer(DataLayerConfig.load("agency-data.toml"))
        await dl.connect()
        ...
        await dl.aclose()

    Keyword arguments are config overrides: ``DataLayer(postgresql={"dsn": ...})``.
    """

    def __init__(self, config: DataLayerConfig | None = None, **overrides: Any) -> None:
        if config is not None and overrides:
            config = config.model_copy(update=overrides)
        self.config = config if config is not None else DataLayerConfig(**overrides)
        self._embedded_pg: EmbeddedPostgres | None = None
        self._embedded_redis: EmbeddedValkey | None = None
        self._conninfo: str | None = None
        self._redis_url: str | None = None
        self._pool: Pool | None = None
        self._redis: RedisClient | None = None
        self._db: Database | None = None
        self._wakeups: TaskWakeups | None = None
        self._catalog: Catalog | None = None
        self._cache_backend: CacheBackend | None = None
        self._scopes: dict[str, TenantScope] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Start embedded servers if needed, open the pool and client, and migrate if configured."""
        if self._pool is not None:
            return
        try:
            await self._connect()
        except BaseException:
            await self.aclose()
            raise

    async def _connect(self) -> None:
        embedded = self.config.embedded
        if self.config.postgresql.is_embedded:
            self._embedded_pg = EmbeddedPostgres(
                embedded.data_dir,
                start_timeout=embedded.start_timeout,
                settings=embedded.postgres_settings,
            )
            self._conninfo = await asyncio.to_thread(self._embedded_pg.acquire)
        else:
            self._conninfo = self.config.postgresql.conninfo()
        if self.config.redis.is_embedded:
            self._embedded_redis = EmbeddedValkey(
                embedded.data_dir,
                start_timeout=embedded.start_timeout,
                settings=embedded.valkey_settings,
            )
            self._redis_url = await asyncio.to_thread(self._embedded_redis.acquire)
        self._redis = make_client(self.config.redis, self._redis_url)
        await prepare_redis(self._redis)
        if self.config.migration.auto_migrate:
            await self.migrate()
        self._pool = await open_pool(self.config.postgresql, self._conninfo)
        self._db = Database(self._pool, self.config.postgresql)
        self._wakeups = TaskWakeups(self._conninfo)
        self._catalog = Catalog(self._db)
        self._cache_backend = CacheBackend(self.config.cache, self._redis)
        assert self._cache_backend.scripts is not None
        register_lock_scripts(self._cache_backend.scripts)
        await self._cache_backend.start_listener()

    async def aclose(self) -> None:
        """Close the pool and client, and release the embedded servers (the last user stops them)."""
        pool, self._pool = self._pool, None
        client, self._redis = self._redis, None
        wakeups, self._wakeups = self._wakeups, None
        self._db = None
        self._catalog = None
        self._scopes.clear()
        backend, self._cache_backend = self._cache_backend, None
        if backend is not None:
            await backend.aclose()
        if wakeups is not None:
            await wakeups.aclose()
        if pool is not None:
            await pool.close()
        if client is not None:
            await close_client(client)
        stop = self.config.embedded.stop_on_close
        for server in (self._embedded_pg, self._embedded_redis):
            if server is not None:
                await asyncio.to_thread(server.release, stop_if_last=stop)
        self._embedded_pg = self._embedded_redis = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what it owns --------------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        """The PostgreSQL connection pool (psycopg_pool ``AsyncConnectionPool``)."""
        if self._pool is None:
            raise _not_connected()
        return self._pool

    @property
    def agents(self) -> AgentStore:
        """The default tenant's agents."""
        return self.tenant(DEFAULT_TENANT).agents

    @property
    def tasks(self) -> TaskStore:
        """The default tenant's tasks."""
        return self.tenant(DEFAULT_TENANT).tasks

    @property
    def cache(self) -> Cache:
        """The default tenant's cache (L1 in process, L2 in Redis)."""
        return self.tenant(DEFAULT_TENANT).cache

    @property
    def sessions(self) -> SessionStore:
        """The default tenant's sessions."""
        return self.tenant(DEFAULT_TENANT).sessions

    @property
    def pubsub(self) -> PubSub:
        """The default tenant's pub/sub channels (at-most-once)."""
        return self.tenant(DEFAULT_TENANT).pubsub

    @property
    def streams(self) -> Streams:
        """The default tenant's durable streams (at-least-once, acknowledged)."""
        return self.tenant(DEFAULT_TENANT).streams

    @property
    def scripts(self) -> ScriptRegistry:
        """Named Lua scripts on Redis (EVALSHA, reloaded after a server restart)."""
        if self._cache_backend is None or self._cache_backend.scripts is None:
            raise _not_connected()
        return self._cache_backend.scripts

    def lock(
        self, name: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lock:
        """A distributed lock of the default tenant; ``async with dl.lock(...) as lock:``."""
        return self.tenant(DEFAULT_TENANT).lock(name, ttl=ttl, wait=wait, auto_renew=auto_renew)

    @property
    def embeddings(self) -> EmbeddingStore:
        """The default tenant's embeddings (the default collection, and the others by name)."""
        return self.tenant(DEFAULT_TENANT).embeddings

    def tenant(self, tenant_id: str) -> TenantScope:
        """The same API, scoped to ``tenant_id``: no call through it sees another tenant's rows."""
        scope = self._scopes.get(tenant_id)
        if scope is None:
            check_tenant(tenant_id)
            assert self._catalog is not None
            assert self._cache_backend is not None
            scope = TenantScope(
                self._database(),
                tenant_id,
                self._wakeups,
                self._catalog,
                self.config,
                self._cache_backend,
                self.redis,
            )
            self._scopes[tenant_id] = scope
        return scope

    def _database(self) -> Database:
        if self._db is None:
            raise _not_connected()
        return self._db

    @property
    def redis(self) -> RedisClient:
        """The redis.asyncio client."""
        if self._redis is None:
            raise _not_connected()
        return self._redis

    @property
    def conninfo(self) -> str:
        """The PostgreSQL connection string in use (may hold a password: do not log it)."""
        if self._conninfo is None:
            raise _not_connected()
        return self._conninfo

    @property
    def redis_url(self) -> str | None:
        """The embedded Valkey's URL, or None when a configured server is used."""
        return self._redis_url

    # -- operations ----------------------------------------------------------------------------

    async def health(self, timeout: float = 2.0) -> HealthStatus:
        """Probe PostgreSQL and Redis: ``ok``, ``degraded`` (Redis down) or ``down``."""
        report = await check_health(self.pool, self.redis, timeout)
        if self._cache_backend is not None:
            report.components["redis"].details["cache"] = self._cache_backend.stats().model_dump()
        return report

    def migrations(self) -> MigrationRunner:
        """The migration runner for our schema and every directory in ``config.migration``."""
        if self._conninfo is None:
            raise _not_connected()
        cfg = self.config.migration
        sources = [BUILTIN_SOURCE] + [
            MigrationSource(namespace, Path(directory))
            for namespace, directory in cfg.directories.items()
        ]
        backup_dir = None
        if cfg.backup_before_migration:
            backup_dir = cfg.backup_dir or self.config.embedded.data_dir / "backups"
        return MigrationRunner(
            self._conninfo,
            sources,
            table_name=cfg.table_name,
            lock_timeout=cfg.lock_timeout,
            backup_dir=backup_dir,
            pg_dump_path=cfg.pg_dump_path,
        )

    async def migrate(
        self, *, to: str | None = None, dry_run: bool | None = None
    ) -> MigrationReport:
        """Apply pending migrations; see :meth:`MigrationRunner.up`."""
        dry = self.config.migration.dry_run if dry_run is None else dry_run
        report = await self.migrations().up(to=to, dry_run=dry)
        if report.applied and self._pool is not None:
            # New types (pgvector's) must be registered on fresh connections.
            await self._pool.drain()
        return report


def _not_connected() -> AgencyDataError:
    return BackendUnavailable(
        "the DataLayer is not connected; use `async with DataLayer() as dl:` or await dl.connect()",
        backend="postgresql",
    )
