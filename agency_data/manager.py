"""The :class:`DataLayer`: one object that owns the connections and routes to the stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from agency_data.actor import acting_as
from agency_data.admin import Admin
from agency_data.audit import AuditTrail
from agency_data.audit.anchors import AnchorLog
from agency_data.audit.notes import AuditNotes
from agency_data.audit.sealer import Sealer
from agency_data.backup import Backups, archive_settings, prepare_archive, repository_of
from agency_data.cache.backend import CacheBackend
from agency_data.cache.store import Cache
from agency_data.config import DataLayerConfig, PostgresConfig
from agency_data.coord.locks import Lock, register_lock_scripts
from agency_data.coord.pubsub import PubSub, Streams
from agency_data.coord.sessions import SessionStore
from agency_data.dsn import database_of
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.embedded.postgres import DATABASE, SUPERUSER, holds_standby, postgres_bin_dir
from agency_data.errors import AgencyDataError, BackendUnavailable, ConfigError, ValidationError
from agency_data.events import SETTING as EVENTS_SETTING
from agency_data.events import Events
from agency_data.health import check_health, probe_redis
from agency_data.inputs import brief, check_bool, check_seconds, check_tenant, check_text
from agency_data.memory import ManagedMemory
from agency_data.migrations import BUILTIN_SOURCE, MigrationReport, MigrationRunner, MigrationSource
from agency_data.models import DEFAULT_TENANT, HealthStatus, Task, TaskSchedule
from agency_data.observability.methods import MonitoringMethods
from agency_data.observability.monitor import Monitor
from agency_data.observability.statements import enable_statement_stats
from agency_data.outbox import Relay, redis_sender
from agency_data.outbox.changes import Changes, FeedRuntime
from agency_data.postgres.agents import AgentStore
from agency_data.postgres.database import Database
from agency_data.postgres.errors import to_agency_error
from agency_data.postgres.pool import Pool, Setup, open_pool
from agency_data.postgres.replicas import Replicas, open_replicas
from agency_data.redis.client import RedisClient, close_client, make_client
from agency_data.redis.client import prepare as prepare_redis
from agency_data.redis.scripts import ScriptRegistry
from agency_data.retention import Retention
from agency_data.scope import QueryMethods, TenantScope
from agency_data.security.fields import SEALABLE, FieldCipher, cipher_from_config
from agency_data.security.keys import KeyManager
from agency_data.security.masking import install, masker_from_config, uninstall
from agency_data.security.rekey import KeyAdmin
from agency_data.security.roles import RoleNames, setup_roles, use_owner_role
from agency_data.subjects import SubjectRights
from agency_data.tasks import TaskRuntime, TaskStore
from agency_data.tasks.wakeups import POLL_INTERVAL, TaskWakeups
from agency_data.vectors.admin import allow_transient_prewarm
from agency_data.vectors.catalog import Catalog
from agency_data.vectors.prewarm import warm_start
from agency_data.vectors.store import ManagedEmbeddingStore

__all__ = ["DataLayer"]

_log = logging.getLogger("agency_data")
_MAX_HEALTH_TIMEOUT = 300.0


class DataLayer(QueryMethods, MonitoringMethods):
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

    def __init__(
        self,
        config: DataLayerConfig | None = None,
        *,
        key_manager: KeyManager | None = None,
        **overrides: Any,
    ) -> None:
        if config is not None and not isinstance(config, DataLayerConfig):
            raise ConfigError(
                f"config must be a DataLayerConfig (or None), not {type(config).__name__}; "
                "pass settings as keyword arguments: DataLayer(postgresql={'dsn': ...})",
                field="config",
            )
        if config is not None and overrides:
            # Validated like any other config (model_copy would take the overrides unchecked).
            sections = {name: getattr(config, name) for name in type(config).model_fields}
            config = DataLayerConfig(**{**sections, **overrides})
        self.config: DataLayerConfig = (
            config if config is not None else DataLayerConfig(**overrides)
        )
        self._embedded_pg: EmbeddedPostgres | None = None
        self._embedded_redis: EmbeddedValkey | None = None
        self._embedded_replicas: list[EmbeddedPostgres] = []
        self._replicas: Replicas | None = None
        self._conninfo: str | None = None
        self._admin_conninfo: str | None = None
        self._redis_url: str | None = None
        self._pool: Pool | None = None
        self._admin_pool: Pool | None = None
        self._admin: Admin | None = None
        self._embeddings: ManagedEmbeddingStore | None = None
        self._memory: ManagedMemory | None = None
        self._redis: RedisClient | None = None
        self._db: Database | None = None
        self._tasks: TaskRuntime | None = None
        self._catalog: Catalog | None = None
        self._cache_backend: CacheBackend | None = None
        self._scopes: dict[str, TenantScope] = {}
        # Residency: a DataLayer per region, and (in a region's) the tenants it serves.
        self._regions: dict[str, DataLayer] = {}
        self._residents: frozenset[str] | None = None
        self._prewarm: asyncio.Task[None] | None = None
        self._anchors: AnchorLog | None = None
        self._sealer: Sealer | None = None
        # The outbox's relay (agency_data.outbox): committed tx.publish messages to Redis.
        self._outbox: Relay | None = None
        # The change feed (agency_data.outbox.changes), shared by every tenant's view.
        self._feed: FeedRuntime
        self._changes: Changes | None = None
        self._retention: Retention | None = None
        self._subjects: SubjectRights | None = None
        # Field encryption (agency_data.security.fields): a KMS of the caller's, or the KEK
        # of encryption.kek*, wraps the tenants' data keys.
        self._key_manager = key_manager
        self._cipher = FieldCipher.off()
        # Masking of logs, error texts and exports (agency_data.security.masking).
        self._masker = masker_from_config(self.config.masking)
        self._backups: Backups | None = None
        # Metrics, traces and the slow-query log (agency_data.observability); no I/O here.
        self._monitor = Monitor(self.config.monitoring)
        self._telemetry = self._monitor.telemetry

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
        postgres = self.config.postgresql
        masking = self.config.masking
        install(self._masker, logs=masking.logs, errors_too=masking.errors)
        self._cipher = cipher_from_config(
            self.config.encryption, embedded.data_dir, self._key_manager
        )
        # Opened as they load, chosen or not (a field switched off still reads); without a
        # key, a sealed value is a DecryptionError rather than a blob passed on.
        self._cipher.tables[Task] = ("tasks", SEALABLE["tasks"], "id")
        self._cipher.tables[TaskSchedule] = ("task_schedules", SEALABLE["task_schedules"], "name")
        roles = RoleNames.from_config(postgres)
        replica_dsns = postgres.replica_conninfos()
        if postgres.is_embedded:
            self._embedded_pg = server = embedded_postgres(self.config)
            superuser = await asyncio.to_thread(server.acquire)
            prepare_archive(self.config)
            await _setup_embedded_roles(superuser, roles, self.config.migration.table_name)
            # The pool is the application role's; migrations and DDL are the owner's.
            self._conninfo = server.dsn(DATABASE, user=roles.app)
            self._admin_conninfo = server.dsn(DATABASE, user=roles.owner)
            for folder in embedded.replicas:
                if not holds_standby(folder):
                    raise ConfigError(
                        f"embedded.replicas names {folder}, which holds no standby (no "
                        "postgres/standby.signal): make one with agency-data replica create, "
                        "or remove it from the list (a promoted standby is a primary now)",
                        field="embedded.replicas",
                    )
                standby = embedded_postgres(self.config, folder)
                self._embedded_replicas.append(standby)
                await asyncio.to_thread(standby.acquire)
                replica_dsns.append(standby.dsn(DATABASE, user=roles.app))
        else:
            self._conninfo = postgres.conninfo()
            self._admin_conninfo = postgres.admin_conninfo() or self._conninfo
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
        monitor = self._monitor
        cursors = monitor.start_tracing(self._conninfo, self._redis)
        # Which stores' triggers publish events (migration 0017): every write of this layer's
        # connections, whoever makes it, the owner's sweepers included.
        announce = [(EVENTS_SETTING, ",".join(self.config.events.stores()))]
        self._pool = await open_pool(
            postgres,
            self._conninfo,
            pgbouncer=postgres.pgbouncer,
            cursor_factory=cursors,
            settings=announce,
        )
        self._db = Database(self._pool, postgres, telemetry=self._telemetry)
        # Before any view of it is made: views share the cipher they were made with.
        self._db.cipher = self._cipher
        # A commit that published (tx.publish) wakes this process's relay at once.
        self._db.outbox_wake = self._wake_outbox
        self._db.foreign = frozenset(self.config.residency.tenants)
        if replica_dsns:
            self._replicas = await open_replicas(postgres, replica_dsns, self._db, cursors)
            self._db.replicas = self._replicas
        if self._admin_conninfo == self._conninfo:
            admin_db = self._db
        else:
            as_owner = _owner_setup(roles.owner)
            self._admin_pool = await open_pool(
                postgres,
                self._admin_conninfo,
                setup=as_owner,
                # One connection at once: a wrong admin_dsn fails connect(), not a later DDL.
                min_size=1,
                max_size=2,
                name="agency-data-admin",
                cursor_factory=cursors,
                settings=announce,
            )
            admin_db = Database(
                self._admin_pool, postgres, setup=as_owner, telemetry=self._telemetry
            )
            admin_db.cipher = self._cipher
            admin_db.foreign = self._db.foreign
        audit = self.config.audit
        digest_key = audit.digest_key.get_secret_value().encode() if audit.digest_key else None
        notes = AuditNotes(
            self._db,
            admin=audit.admin,
            sessions=audit.sessions,
            reads=audit.reads,
            digest_key=digest_key,
        )
        self._db.notes = admin_db.notes = notes
        self._tasks = TaskRuntime(
            self._db, self.config.tasks, TaskWakeups(_wakeup_conninfo(postgres, self._conninfo))
        )
        self._catalog = Catalog(self._db, admin_db, self.config.vector)
        statements = None
        if self._embedded_pg is not None:
            # The embedded server keeps pg_stat_statements' view in its postgres database.
            statements = (self._embedded_pg.dsn("postgres"), DATABASE)
        self._admin = Admin(
            admin_db,
            self._db,
            self._catalog,
            keys=KeyAdmin(self._cipher, self._db, self._catalog, self._redis, admin=admin_db),
            statements=statements,
        )
        audited = self.config.audit.tables
        if "embeddings" in audited:
            self._catalog.audited = self.config.audit.detail.get("embeddings", "digest")
        for table in audited:
            await self._admin.audit(table, detail=self.config.audit.detail.get(table, "digest"))
        self._sealer = Sealer(admin_db, audit.seal_interval)
        self._sealer.start()
        self._feed = FeedRuntime(admin_db, self.config.changes, self._tasks.wakeups)
        self._changes = Changes(
            self._db.for_tenant(DEFAULT_TENANT), self._feed, lambda t: self.tenant(t).changes
        )
        for table in self.config.changes.tables:
            if table not in await self._changes.tracked():
                await self._changes.track(table)
        self._outbox = Relay(
            admin_db, redis_sender(self._redis), self.config.outbox, pruners=[self._changes.prune]
        )
        if self.config.outbox.relay:
            self._outbox.start()
            if self._tasks.wakeups is not None:
                # Commits of other processes (and trigger-written messages) wake it at once.
                self._tasks.wakeups.on_outbox(self._outbox.wake)
        self._anchors = AnchorLog(
            admin_db, audit.anchor_interval, by_tenant=self.config.monitoring.tenant_labels
        )
        self._monitor.metrics.extra.append(self._anchors.families)
        self._anchors.start()
        self._cache_backend = CacheBackend(self.config.cache, self._redis, self._telemetry)
        self._cache_backend.cipher = self._cipher
        retention = self.config.retention
        self._retention = Retention(
            admin_db,
            self._catalog,
            self._redis,
            retention,
            retention.archive_dir or embedded.data_dir / "archive",
        )
        self._retention.start()
        await self._open_regions()
        self._subjects = SubjectRights(
            self._db,
            admin_db,
            self._catalog,
            self._redis,
            self.config.subjects,
            lambda tenant: self.tenant(tenant).cache,
            digest_key=digest_key,
        )
        register_lock_scripts(self._cache_backend.scripts)
        await self._cache_backend.start_listener()
        pools = {"app": self._pool}
        if self._admin_pool is not None:
            pools["admin"] = self._admin_pool
        if self._replicas is not None:
            pools.update((r.name, r.pool) for r in self._replicas.replicas)
        monitor.attach(
            pools=pools,
            admin=admin_db,
            cache_stats=self._cache_backend.stats,
            redis_up=self._redis_up,
            collections=lambda name, tenant: self.tenant(tenant).embeddings.collection(name),
            volumes={"data": embedded.data_dir} if self._embedded_pg is not None else {},
            max_changes=self.config.changes.max_rows,
            replicas=self._replicas,
        )
        embedded_su = self._embedded_pg.dsn(DATABASE) if self._embedded_pg is not None else None
        if embedded_su is not None:
            # pg_prewarm is not a trusted extension: the embedded server's superuser loads it
            # for one transaction, so nothing of it lands in the schema or its backups.
            allow_transient_prewarm(self._admin, embedded_su)
        if self.config.vector.prewarm_on_start:
            # In the background: a start is not delayed by reading indexes from disk.
            self._prewarm = asyncio.create_task(
                warm_start(
                    self._admin.prewarm,
                    self._db,
                    self._catalog,
                    postgres.pool_min_size,
                    superuser=embedded_su,
                ),
                name="agency-data-prewarm",
            )

    async def _open_regions(self) -> None:
        residency = self.config.residency
        for name, region in residency.regions.items():
            # The same settings, on the region's servers, serving its resident tenants only.
            config = self.config.model_copy(
                update={
                    "postgresql": region.postgresql,
                    "redis": region.redis,
                    "residency": type(residency)(),
                }
            )
            child = DataLayer(config, key_manager=self._key_manager)
            child._residents = frozenset(t for t, r in residency.tenants.items() if r == name)
            self._regions[name] = child
            await child.connect()

    def region(self, name: str) -> DataLayer:
        """The DataLayer of region ``name`` (``residency.regions``): its admin, retention,
        health; it serves only the tenants pinned to it."""
        child = self._regions.get(name) if isinstance(name, str) else None
        if child is None:
            raise ValidationError(
                f"no region {brief(name)}: residency.regions names "
                f"{', '.join(sorted(self._regions)) or 'none'}",
                field="name",
            )
        return child

    async def aclose(self) -> None:
        """Close the pool and client, and release the embedded servers (the last user stops them)."""
        regions, self._regions = list(self._regions.values()), {}
        for child in regions:
            await child.aclose()
        prewarm, self._prewarm = self._prewarm, None
        if prewarm is not None:
            prewarm.cancel()
            await asyncio.gather(prewarm, return_exceptions=True)
        anchors, self._anchors = self._anchors, None
        if anchors is not None:
            await anchors.aclose()
        retention, self._retention = self._retention, None
        if retention is not None:
            await retention.aclose()
        sealer, self._sealer = self._sealer, None
        if sealer is not None:
            await sealer.aclose()
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            await outbox.aclose()
        uninstall(self._masker)
        await self._monitor.aclose()
        self._backups = None
        replicas, self._replicas = self._replicas, None
        if replicas is not None:
            await replicas.aclose()
        pool, self._pool = self._pool, None
        admin_pool, self._admin_pool = self._admin_pool, None
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.api_keys.aclose()
        embeddings, self._embeddings = self._embeddings, None
        memory, self._memory = self._memory, None
        client, self._redis = self._redis, None
        tasks, self._tasks = self._tasks, None
        self._db = None
        self._catalog = None
        scopes = list(self._scopes.values())
        self._scopes.clear()
        for scope in scopes:
            await scope.aclose()
        if embeddings is not None:
            await embeddings.aclose()
        if memory is not None:
            await memory.aclose()
        backend, self._cache_backend = self._cache_backend, None
        if backend is not None:
            await backend.aclose()
        if tasks is not None:
            await tasks.aclose()
        for open_one in (pool, admin_pool):
            if open_one is not None:
                await open_one.close()
        if client is not None:
            await close_client(client)
        stop = self.config.embedded.stop_on_close
        standbys, self._embedded_replicas = self._embedded_replicas, []
        for server in (*standbys, self._embedded_pg, self._embedded_redis):
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
    def subjects(self) -> SubjectRights:
        """Data subject rights (``subjects`` config): ``export`` and ``erase`` a subject."""
        if self._subjects is None:
            raise _not_connected()
        return self._subjects

    @property
    def retention(self) -> Retention:
        """The retention policies (``retention`` config): ``await dl.retention.run()``."""
        if self._retention is None:
            raise _not_connected()
        return self._retention

    @property
    def audit(self) -> AuditTrail:
        """The default tenant's audit trail (``dl.tenant(t).audit`` for another's)."""
        return self.tenant(DEFAULT_TENANT).audit

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
    def events(self) -> Events:
        """The default tenant's store events (``events`` config): ``dl.events.subscribe(...)``."""
        return self.tenant(DEFAULT_TENANT).events

    @property
    def scripts(self) -> ScriptRegistry:
        """Named Lua scripts on Redis (EVALSHA, reloaded after a server restart)."""
        if self._cache_backend is None:
            raise _not_connected()
        return self._cache_backend.scripts

    def export(
        self, source: str, *, masked: bool = True, batch_size: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """The default tenant's rows of ``source``, masked (see :meth:`TenantScope.export`)."""
        return self.tenant(DEFAULT_TENANT).export(source, masked=masked, batch_size=batch_size)

    def lock(
        self, name: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> Lock:
        """A distributed lock of the default tenant; ``async with dl.lock(...) as lock:``."""
        return self.tenant(DEFAULT_TENANT).lock(name, ttl=ttl, wait=wait, auto_renew=auto_renew)

    @property
    def embeddings(self) -> ManagedEmbeddingStore:
        """The default tenant's embeddings, plus collection administration (as the owner)."""
        if self._embeddings is None:
            self._embeddings = ManagedEmbeddingStore(
                self._database(), self._catalog_or_fail(), DEFAULT_TENANT, self.admin
            )
        return self._embeddings

    @property
    def memory(self) -> ManagedMemory:
        """The default tenant's agent memory, plus setting it up (as the owner)."""
        if self._memory is None:
            self._memory = ManagedMemory(
                self._database(),
                self._catalog_or_fail(),
                DEFAULT_TENANT,
                self.config.memory,
                self.tenant(DEFAULT_TENANT).changes,
                self.admin,
                self.changes,
            )
        return self._memory

    @property
    def admin(self) -> Admin:
        """Administration as the owner role: collections, indexes, role checks, raw DDL."""
        if self._admin is None:
            raise _not_connected()
        return self._admin

    def as_actor(self, actor: str) -> AbstractContextManager[str]:
        """``with dl.as_actor("svc-planner"):`` the audit trail names ``actor`` for the writes
        made inside the block (see :mod:`agency_data.actor`)."""
        return acting_as(actor)

    def tenant(self, tenant_id: str) -> TenantScope:
        """The same API, scoped to ``tenant_id``: no call through it sees another tenant's rows."""
        # Looked up before it is checked: every dl.cache / dl.agents call comes through here, and
        # only strings that passed the check are ever stored.
        scope = self._scopes.get(tenant_id) if isinstance(tenant_id, str) else None
        if scope is None:
            check_tenant(tenant_id)
            region = self.config.residency.tenants.get(tenant_id)
            if region is not None and region in self._regions:
                # Its data lives in its region: every call goes there.
                scope = self._scopes[tenant_id] = self._regions[region].tenant(tenant_id)
                return scope
            if self._residents is not None and tenant_id not in self._residents:
                raise ValidationError(
                    f"tenant {tenant_id} is not pinned to this region: its data is never read "
                    "or written here",
                    field="tenant_id",
                )
            if (
                self._db is None
                or self._catalog is None
                or self._cache_backend is None
                or self._tasks is None
            ):
                raise _not_connected()
            scope = TenantScope(
                self._db,
                tenant_id,
                self._tasks,
                self._catalog,
                self.config,
                self._cache_backend,
                self.redis,
                self._feed,
                masker=self._masker,
            )
            self._scopes[tenant_id] = scope
        return scope

    def _database(self) -> Database:
        # The unscoped data layer is the default tenant's, raw SQL included.
        return self.tenant(DEFAULT_TENANT)._database()

    def _catalog_or_fail(self) -> Catalog:
        if self._catalog is None:
            raise _not_connected()
        return self._catalog

    @property
    def redis(self) -> RedisClient:
        """The redis.asyncio client."""
        if self._redis is None:
            raise _not_connected()
        return self._redis

    @property
    def conninfo(self) -> str:
        """The pool's PostgreSQL connection string (may hold a password: do not log it)."""
        if self._conninfo is None:
            raise _not_connected()
        return self._conninfo

    @property
    def admin_conninfo(self) -> str:
        """The owner role's connection string (may hold a password: do not log it)."""
        if self._admin_conninfo is None:
            raise _not_connected()
        return self._admin_conninfo

    @property
    def redis_url(self) -> str | None:
        """The embedded Valkey's URL, or None when a configured server is used."""
        return self._redis_url

    @property
    def replica_conninfos(self) -> list[str]:
        """The read replicas' connection strings, in the order reads take them (may hold
        passwords: do not log them); empty without replicas."""
        if self._conninfo is None:
            raise _not_connected()
        if self._replicas is None:
            return []
        return [str(replica.pool.conninfo) for replica in self._replicas.replicas]

    # -- operations ----------------------------------------------------------------------------

    async def prewarmed(self) -> None:
        """Wait until the start's background warm-up (``vector.prewarm_on_start``) is done.

        Returns at once when there is none or it has finished. The warm-up never fails a
        start: its problems are logged, not raised here. Cancelling this wait leaves the
        warm-up running.
        """
        task = self._prewarm
        if task is not None and not task.done():
            await asyncio.shield(task)

    @property
    def backups(self) -> Backups:
        """Backup sets of this database (see :mod:`agency_data.backup`)."""
        if self._conninfo is None:
            raise _not_connected()
        if self._backups is None:
            self._backups = self._make_backups(self._conninfo)
        return self._backups

    def _make_backups(self, conninfo: str) -> Backups:
        config = self.config
        repository = repository_of(config)
        if self._embedded_pg is not None:
            source: str | None = self._embedded_pg.dsn("postgres")
            database = DATABASE
        else:
            dsn = config.backup.source_dsn
            source = dsn.get_secret_value() if dsn is not None else None
            database = database_of(conninfo)
        try:
            bin_dir: Path | None = postgres_bin_dir()
        except Exception:  # noqa: BLE001 - without the wheel, the error says what is missing
            bin_dir = None
        return Backups(
            repository,
            source,
            database,
            bin_dir,
            config.migration.table_name,
            keep_full=config.backup.keep_full,
            keep_days=config.backup.keep_days,
            redis_url=self._snapshot_url(),
            compress=config.backup.compress,
        )

    def _snapshot_url(self) -> str | None:
        # The one server a snapshot can be taken from; None for a cluster or Sentinel.
        if self._redis_url is not None:
            return self._redis_url
        redis = self.config.redis
        if redis.cluster or redis.sentinel is not None:
            return None
        if redis.url is not None:
            return redis.url.get_secret_value()
        password = redis.password.get_secret_value() if redis.password is not None else ""
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{redis.host}:{redis.port}/{redis.db}"

    def _wake_outbox(self) -> None:
        # With a LISTEN connection the commit's own notification wakes the relay (of every
        # process): waking it here as well would run a second, empty round.
        wakeups = self._tasks.wakeups if self._tasks is not None else None
        if wakeups is not None and not wakeups.polling:
            return
        if self._outbox is not None and self.config.outbox.relay:
            self._outbox.wake()

    @property
    def changes(self) -> Changes:
        """The change feed: ``async for change in dl.changes(["tasks"], since=...)`` (the
        default tenant's, or ``tenant=``'s); ``track``, ``consumers``, ``status``, ``prune``."""
        self._check_connected()
        assert self._changes is not None
        return self._changes

    @property
    def outbox(self) -> Relay:
        """The outbox's relay: ``await dl.outbox.relay()`` sends what can be sent now."""
        self._check_connected()
        assert self._outbox is not None
        return self._outbox

    def _check_connected(self) -> None:
        if self._pool is None:
            raise _not_connected()

    async def _redis_up(self) -> bool:
        return (await probe_redis(self.redis, timeout=2.0)).up

    async def health(self, timeout: float = 2.0) -> HealthStatus:
        """Probe PostgreSQL and Redis: ``ok``, ``degraded`` (Redis down) or ``down``.

        Also: the pool's use, the watched volumes' free space, replication, and the alerts
        firing (the rules are evaluated once more for it).
        """
        check_seconds(timeout, "timeout", low=0.001, high=_MAX_HEALTH_TIMEOUT)
        report = await check_health(self.pool, self.redis, timeout)
        if self._cache_backend is not None:
            report.components["redis"].details["cache"] = self._cache_backend.stats().model_dump()
        if report.components["postgresql"].up:
            try:
                async with asyncio.timeout(timeout):
                    report.warnings = await self.admin.role_warnings()
            except (AgencyDataError, TimeoutError):
                pass  # the probe above already reports on PostgreSQL's health
        await self._monitor.add_to_health(report, timeout)
        return report

    def migrations(self) -> MigrationRunner:
        """The migration runner (as the owner role) for our schema and ``config.migration``'s."""
        if self._admin_conninfo is None:
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
            self._admin_conninfo,
            sources,
            role=RoleNames.from_config(self.config.postgresql),
            table_name=cfg.table_name,
            lock_timeout=cfg.lock_timeout,
            backup_dir=backup_dir,
            pg_dump_path=cfg.pg_dump_path,
            keep_backups=cfg.keep_backups,
        )

    async def migrate(
        self, *, to: str | None = None, dry_run: bool | None = None
    ) -> MigrationReport:
        """Apply pending migrations; see :meth:`MigrationRunner.up`."""
        if to is not None:
            check_text(to, "to", max_length=200)
        if dry_run is not None:
            check_bool(dry_run, "dry_run")
        dry = self.config.migration.dry_run if dry_run is None else dry_run
        report = await self.migrations().up(to=to, dry_run=dry)
        if report.applied and self._pool is not None:
            # New types (pgvector's) must be registered on fresh connections.
            await self._pool.drain()
        return report


def embedded_postgres(config: DataLayerConfig, data_dir: Path | None = None) -> EmbeddedPostgres:
    """The embedded PostgreSQL server of ``config`` (or a standby of it in ``data_dir``), with
    the settings a DataLayer starts it with."""
    return EmbeddedPostgres(
        config.embedded.data_dir if data_dir is None else data_dir,
        start_timeout=config.embedded.start_timeout,
        settings=embedded_settings(config),
    )


def embedded_settings(config: DataLayerConfig) -> dict[str, str]:
    """The postgresql.conf settings the embedded server runs with, over its defaults."""
    slow_ms = config.monitoring.slow_query_ms
    return {
        # Plans of slow statements in the server's log, at the slow-query log's bound.
        "auto_explain.log_min_duration": str(int(slow_ms)) if slow_ms else "-1",
        **archive_settings(config),
        **config.embedded.postgres_settings,
    }


async def _setup_embedded_roles(superuser: str, roles: RoleNames, migrations_table: str) -> None:
    # Idempotent, and cheap when there is nothing to do; an older release's data directory
    # (everything owned by the superuser) is handed over to the owner role here.
    try:
        async with await AsyncConnection.connect(superuser, autocommit=True) as conn:
            await setup_roles(conn, roles, adopt_from=SUPERUSER, migrations_table=migrations_table)
        # pg_stat_statements' view lives in the postgres database: out of our schema's backups.
        maintenance = make_conninfo(superuser, dbname="postgres")
        async with await AsyncConnection.connect(maintenance, autocommit=True) as conn:
            await enable_statement_stats(conn, roles.owner)
    except psycopg.Error as exc:
        raise to_agency_error(exc, "setting up the embedded server's roles") from exc


def _wakeup_conninfo(postgres: PostgresConfig, conninfo: str) -> str | None:
    # LISTEN needs a session of its own, which PgBouncer's transaction pooling cannot give.
    if not postgres.pgbouncer:
        return conninfo
    direct = postgres.direct_conninfo()
    if direct is None:
        _log.info(
            "postgresql.pgbouncer is on and postgresql.direct_dsn is not set: waiting task "
            "claims look for work every %.1f s instead of being woken by LISTEN/NOTIFY, which "
            "PgBouncer's transaction pooling cannot carry; set direct_dsn (the application "
            "role's connection straight to PostgreSQL) to have them woken at once",
            POLL_INTERVAL,
        )
    return direct


def _owner_setup(owner: str) -> Setup:
    async def setup(conn: AsyncConnection[Any]) -> None:
        await use_owner_role(conn, owner)

    return setup


def _not_connected() -> AgencyDataError:
    return BackendUnavailable(
        "the DataLayer is not connected; use `async with DataLayer() as dl:` or "
        "`await dl.connect()` (agency_data.sync: `with DataLayer() as dl:` or `dl.connect()`)",
        backend="postgresql",
    )
