"""Configuration: one validated :class:`DataLayerConfig`, loaded once.

Usage forms, highest precedence first::

    DataLayerConfig(postgresql={"dsn": "postgresql://app@db/agents"})   # keyword arguments
    # AGENCY_DATA_POSTGRESQL__DSN=postgresql://...  AGENCY_DATA_CACHE__DEFAULT_TTL=600
    DataLayerConfig.load("agency-data.toml")       # a TOML file (or AGENCY_DATA_CONFIG_FILE)
    DataLayerConfig()                               # defaults: embedded servers in the data dir

Nested fields are reached from the environment with a double underscore; a variable that names
no section (``AGENCY_DATA_POSTGRES__DSN``) is ignored with a :class:`ConfigWarning`. Relative
paths in a TOML file are relative to that file. Invalid values raise
:class:`~agency_data.errors.ConfigError` naming the field; secrets (passwords, DSNs, URLs) are
``SecretStr`` and never appear in a repr, a log line or an error. DSNs and Redis URLs are parsed
when the config is built, and :func:`redact_dsn` hides the passwords in any other text.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Literal

import platformdirs
import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agency_data.dsn import postgres_dsn_problem, redact_dsn, redact_url, redis_url_problem
from agency_data.errors import ConfigError

__all__ = [
    "AUDITABLE",
    "AUDIT_DETAILS",
    "AlertsConfig",
    "AuditConfig",
    "BackupConfig",
    "CacheConfig",
    "ConfigWarning",
    "DataLayerConfig",
    "EmbeddedConfig",
    "EventsConfig",
    "MemoryConfig",
    "MemoryWeights",
    "MigrationConfig",
    "MonitoringConfig",
    "OutboxConfig",
    "PostgresConfig",
    "RedisConfig",
    "SentinelConfig",
    "ServiceConfig",
    "TasksConfig",
    "VectorConfig",
    "default_data_dir",
    "redact_dsn",
    "redact_url",
]

_CONFIG_FILE_ENV = "AGENCY_DATA_CONFIG_FILE"
_ENV_PREFIX = "AGENCY_DATA_"
_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "agency_data_toml_file", default=None
)


class _Section(BaseModel):
    # hide_input_in_errors: a section built on its own must not show a DSN in its errors.
    model_config = ConfigDict(
        extra="forbid", validate_default=True, frozen=True, hide_input_in_errors=True
    )


# A PostgreSQL name the layer writes unquoted-safe: lower case, at most 63 bytes.
SQL_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresConfig(_Section):
    """PostgreSQL connection and pool settings. No ``dsn`` and no ``host``: embedded server.

    ``dsn`` and ``admin_dsn`` are ``postgresql://`` URLs or libpq ``key=value`` strings,
    checked when the config is built (a bad one raises :class:`ConfigError` without quoting it).

    Behind PgBouncer in transaction mode, ``dsn`` names PgBouncer and ``pgbouncer = true``; the
    pool then prepares no statements server-side and sends its settings with each transaction.
    ``admin_dsn`` must then reach PostgreSQL directly (migrations hold session-level locks),
    and so should ``direct_dsn`` (LISTEN/NOTIFY wake-ups of waiting claims), without which
    waiting claims look for work twice a second instead::

        PostgresConfig(
            dsn="postgresql://agency_app:...@pgbouncer:6432/agents",
            pgbouncer=True,
            admin_dsn="postgresql://agency_owner:...@db:5432/agents",
            direct_dsn="postgresql://agency_app:...@db:5432/agents",
        )
    """

    dsn: SecretStr | None = Field(None, description="the application's connection string")
    admin_dsn: SecretStr | None = Field(
        None,
        description="the owner role's connection string, for migrations and administration",
    )
    host: str | None = None
    port: int = Field(5432, ge=1, le=65535)
    database: str = "postgres"
    user: str = "postgres"
    password: SecretStr | None = None
    ssl: bool = Field(False, description="with host: sslmode=require (sslmode says more)")
    sslmode: SslMode | None = Field(
        None,
        description="TLS for every connection to PostgreSQL (dsn, admin_dsn, direct_dsn, "
        "replicas), overriding what they say: verify-full checks the server's certificate "
        "against sslrootcert and its name against the host; None: as the DSN says",
    )
    sslrootcert: Path | None = Field(
        None, description="the CA certificate(s) that signed the server's (PEM file)"
    )
    sslcert: Path | None = Field(None, description="a client certificate (PEM), if asked for")
    sslkey: Path | None = Field(
        None, description="the client certificate's private key (PEM, mode 0600 or stricter)"
    )
    owner_role: str = Field(
        "agency_owner", pattern=SQL_NAME, description="owns the schema; runs migrations"
    )
    app_role: str = Field(
        "agency_app", pattern=SQL_NAME, description="reads and writes data, no DDL"
    )
    readonly_role: str = Field("agency_readonly", pattern=SQL_NAME, description="reads data only")
    pool_min_size: int = Field(2, ge=0)
    pool_max_size: int = Field(10, ge=1, le=1000)
    pool_timeout: float = Field(5.0, gt=0, description="seconds to wait for a free connection")
    max_waiting: int = Field(0, ge=0, description="queued requests before refusing; 0 = no bound")
    statement_timeout: float = Field(30.0, ge=0, description="seconds; 0 disables")
    max_retries: int = Field(3, ge=0, le=20, description="retries of serialization conflicts")
    max_json_bytes: int = Field(1 << 20, ge=1, description="largest JSON document accepted")
    pgbouncer: bool = Field(
        False,
        description="dsn goes through PgBouncer in transaction mode: no server-side prepared "
        "statements, settings sent with each transaction; needs a direct admin_dsn",
    )
    direct_dsn: SecretStr | None = Field(
        None,
        description="with pgbouncer: the application's connection string straight to "
        "PostgreSQL, for LISTEN/NOTIFY wake-ups of waiting claims (without it they poll)",
    )

    replicas: list[SecretStr] = Field(
        default_factory=list,
        description="read replicas' connection strings (the application role's): reads that "
        "tolerate lag go there",
    )
    max_replica_lag: float = Field(
        5.0, gt=0, description="seconds; a replica further behind than this is not read"
    )
    replica_check_interval: float = Field(
        1.0, gt=0, description="seconds between measurements of each replica's lag"
    )
    replica_wait: float = Field(
        0.1,
        ge=0,
        le=60,
        description="consistent reads: seconds to wait for a replica to replay the commits "
        "acknowledged so far before reading the primary instead",
    )

    @field_validator("dsn", "admin_dsn", "direct_dsn")
    @classmethod
    def _valid_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := postgres_dsn_problem(value.get_secret_value())):
            raise ValueError(problem)
        return value

    @field_validator("replicas")
    @classmethod
    def _valid_replicas(cls, values: list[SecretStr]) -> list[SecretStr]:
        for index, value in enumerate(values):
            if problem := postgres_dsn_problem(value.get_secret_value()):
                raise ValueError(f"replicas[{index}]: {problem}")
        return values

    @model_validator(mode="after")
    def _pool_bounds(self) -> PostgresConfig:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than pool_max_size "
                f"({self.pool_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _pgbouncer_needs(self) -> PostgresConfig:
        # Messages name the fields, never their values: a DSN may hold a password.
        if self.direct_dsn is not None and not self.pgbouncer:
            raise ValueError(
                "direct_dsn is set but pgbouncer is false: without PgBouncer the pool's own "
                "connections are direct; remove direct_dsn or set pgbouncer = true"
            )
        if not self.pgbouncer:
            return self
        if self.is_embedded:
            raise ValueError(
                "pgbouncer = true needs dsn (or host) naming the PgBouncer in front of your "
                "server; the embedded server is always reached directly"
            )
        if self.admin_dsn is None:
            raise ValueError(
                "pgbouncer = true needs admin_dsn: the owner role's connection straight to "
                "PostgreSQL, for migrations and administration (session-level locks and "
                "settings, which transaction pooling cannot keep)"
            )
        for name, value in (("admin_dsn", self.admin_dsn), ("direct_dsn", self.direct_dsn)):
            if value is not None and self.dsn is not None and value == self.dsn:
                raise ValueError(
                    f"{name} is the same as dsn, which goes through PgBouncer; with "
                    f"pgbouncer = true, {name} must reach PostgreSQL directly"
                )
        return self

    @model_validator(mode="after")
    def _distinct_roles(self) -> PostgresConfig:
        roles = {self.owner_role, self.app_role, self.readonly_role}
        if len(roles) != 3:
            raise ValueError("owner_role, app_role and readonly_role must be three different roles")
        return self

    @property
    def is_embedded(self) -> bool:
        """True when no server is configured, so the embedded one is used."""
        return self.dsn is None and self.host is None

    @model_validator(mode="after")
    def _tls_files(self) -> PostgresConfig:
        if (self.sslcert is None) != (self.sslkey is None):
            raise ValueError("sslcert and sslkey go together: give both or neither")
        for name in ("sslrootcert", "sslcert", "sslkey"):
            path = getattr(self, name)
            if path is not None and (problem := _file_problem(path, key=name == "sslkey")):
                raise ValueError(f"{name}: {problem}")
        if self.sslmode in ("verify-ca", "verify-full") and self.sslrootcert is None:
            # libpq would fall back to ~/.postgresql/root.crt; say so rather than fail later.
            default = Path.home() / ".postgresql" / "root.crt"
            if not default.is_file():
                raise ValueError(
                    f"sslmode {self.sslmode} checks the server's certificate: set sslrootcert "
                    "to the CA that signed it"
                )
        return self

    def with_tls(self, conninfo: str) -> str:
        """``conninfo`` with the configured TLS settings in place of its own."""
        tls = {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
        }
        given = {key: str(value) for key, value in tls.items() if value is not None}
        if not given:
            return conninfo
        from psycopg.conninfo import make_conninfo

        return make_conninfo(conninfo, **given)

    def conninfo(self) -> str:
        """The libpq connection string for a configured server (secret: do not log it)."""
        if self.dsn is not None:
            return self.with_tls(self.dsn.get_secret_value())
        if self.host is None:
            raise ConfigError(
                "postgresql has neither dsn nor host; the embedded server provides the DSN",
                field="postgresql.dsn",
            )
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            dbname=self.database,
            user=self.user,
            password=self.password.get_secret_value() if self.password else None,
            sslmode=self.sslmode or ("require" if self.ssl else "prefer"),
            **{
                key: str(value)
                for key, value in (
                    ("sslrootcert", self.sslrootcert),
                    ("sslcert", self.sslcert),
                    ("sslkey", self.sslkey),
                )
                if value is not None
            },
        )

    def admin_conninfo(self) -> str | None:
        """The owner role's connection string (secret: do not log it), or None if not set."""
        return self.with_tls(self.admin_dsn.get_secret_value()) if self.admin_dsn else None

    def direct_conninfo(self) -> str | None:
        """``direct_dsn`` as a string (secret: do not log it), or None if not set."""
        return self.with_tls(self.direct_dsn.get_secret_value()) if self.direct_dsn else None

    def replica_conninfos(self) -> list[str]:
        """The replicas' connection strings (secret: do not log them)."""
        return [self.with_tls(dsn.get_secret_value()) for dsn in self.replicas]


def _file_problem(path: Path, *, key: bool) -> str | None:
    """What keeps ``path`` from serving as a certificate or key file, or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a file"
    # libpq refuses a private key that others may read (that root owns: group may read it);
    # say so here, naming the file, rather than at the first connection.
    owner = path.stat().st_uid
    loose = 0o077 if owner != 0 else 0o037
    if key and mode & loose:
        return f"{path} may be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 it"
    return None


class SentinelConfig(_Section):
    """Redis Sentinel: the monitored master's name and the sentinels as ``host:port``."""

    master_name: str = Field(min_length=1)
    sentinels: list[str] = Field(min_length=1)
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _host_ports(self) -> SentinelConfig:
        for item in self.sentinels:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"sentinel {item!r} is not in the form host:port")
        return self


class RedisConfig(_Section):
    """Redis / Valkey connection settings. No ``url`` and no ``host``: embedded server."""

    url: SecretStr | None = None
    host: str | None = None
    port: int = Field(6379, ge=1, le=65535)
    password: SecretStr | None = None
    db: int = Field(0, ge=0, le=15)
    cluster: bool = False
    sentinel: SentinelConfig | None = None
    max_connections: int = Field(50, ge=1)
    pool_timeout: float = Field(5.0, gt=0, description="seconds to wait for a free connection")
    max_retries: int = Field(1, ge=0, le=10)
    socket_timeout: float = Field(2.0, gt=0)
    connect_timeout: float = Field(1.0, gt=0)
    ssl: bool = Field(
        False, description="TLS with host (a rediss:// url or sentinel uses it as well)"
    )
    ssl_ca_certs: Path | None = Field(
        None, description="the CA certificate(s) that signed the server's (PEM file)"
    )
    ssl_certfile: Path | None = Field(None, description="a client certificate (PEM)")
    ssl_keyfile: Path | None = Field(
        None, description="the client certificate's private key (PEM, mode 0600 or stricter)"
    )
    ssl_check_hostname: bool = Field(
        True, description="check the server certificate's name against the host"
    )

    @model_validator(mode="after")
    def _tls_files(self) -> RedisConfig:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and (problem := _file_problem(path, key=name == "ssl_keyfile")):
                raise ValueError(f"{name}: {problem}")
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether connections to the configured server use TLS."""
        url = self.url.get_secret_value() if self.url is not None else ""
        return self.ssl or url.startswith("rediss://")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := redis_url_problem(value.get_secret_value())):
            raise ValueError(problem)
        return value

    @property
    def is_embedded(self) -> bool:
        """True when no server is configured, so the embedded one is used."""
        return self.url is None and self.host is None and self.sentinel is None


class VectorConfig(_Section):
    """Defaults for the embedding store's default collection."""

    dimension: int = Field(768, ge=1, le=16000)
    index_type: Literal["hnsw", "ivfflat"] = "hnsw"
    distance_metric: Literal["cosine", "euclidean", "manhattan", "inner_product"] = "cosine"
    quantization: Literal["none", "halfvec", "binary"] = "none"
    prewarm_on_start: bool = Field(
        True,
        description="at start, in the background: read collections' indexes and tables into "
        "memory, and run their searches on the pool's connections",
    )


class CacheConfig(_Section):
    """The cache: levels, TTLs in seconds, the L1 size bound and its eviction policy."""

    l1: bool = Field(True, description="keep an in-process cache in front of Redis")
    l2: bool = Field(True, description="use Redis (shared between processes)")
    default_ttl: int = Field(3600, ge=1)
    l1_ttl: float = Field(30.0, gt=0, description="longest an entry lives in L1")
    max_memory: str = Field("64MB", pattern=r"^\d+\s*(B|KB|MB|GB)?$")
    max_entries: int = Field(10_000, ge=0)
    eviction_policy: Literal["lru", "lfu", "random"] = "lru"
    compression: bool = False
    compression_threshold: int = Field(1024, ge=0)
    max_value_bytes: int = Field(8 << 20, ge=16)
    retry_after: float = Field(1.0, gt=0, description="seconds to skip Redis after it failed")
    broadcast_invalidations: bool = True
    fill_lock_ttl: float = Field(5.0, gt=0, description="the cross-process get_or_set lock")
    record_ttl: int = Field(
        0, ge=0, description="cache agents read by id for this long (0: do not cache them)"
    )

    @property
    def max_memory_bytes(self) -> int:
        """``max_memory`` in bytes."""
        text = self.max_memory.replace(" ", "").upper()
        for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
            if text.endswith(unit):
                return int(text[: -len(unit)]) * factor
        return int(text)


class TasksConfig(_Section):
    """The task queue's defaults, in seconds; a type's policy (``dl.tasks.set_policy``) wins.

    A claimed task is leased for ``lease_seconds``; a worker that neither heartbeats nor
    finishes within it loses the task to the next claim. A failed attempt comes back after
    ``retry_first`` seconds, doubling per attempt up to ``retry_most``, spread by
    +-``retry_jitter``; after ``max_attempts`` the task is dead.
    """

    lease_seconds: float = Field(60.0, gt=0, le=86400)
    max_attempts: int = Field(5, ge=1, le=1000)
    retry_first: float = Field(1.0, ge=0, le=86400)
    retry_most: float = Field(3600.0, ge=0, le=2592000)
    retry_jitter: float = Field(0.2, ge=0, le=1)
    rescue_interval: float = Field(
        1.0, gt=0, le=3600, description="how often a claim also rescues expired leases"
    )


class MigrationConfig(_Section):
    """The migration service: extra directories, history table, dry run, backup."""

    directories: dict[str, Path] = Field(
        default_factory=dict, description="your own migrations: namespace -> directory"
    )
    table_name: str = Field("agency_data_migrations", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    dry_run: bool = False
    auto_migrate: bool = True
    backup_before_migration: bool = True
    backup_dir: Path | None = None
    keep_backups: int = Field(
        5, ge=0, description="backups of a database kept in backup_dir (oldest go); 0: keep all"
    )
    pg_dump_path: Path | None = None
    lock_timeout: float = Field(60.0, gt=0, description="seconds to wait for another migrator")

    @model_validator(mode="after")
    def _own_namespace(self) -> MigrationConfig:
        if "agency_data" in self.directories:
            raise ValueError("the namespace 'agency_data' is the library's own; pick another")
        return self


def default_data_dir() -> Path:
    """Where the embedded servers keep their data when ``embedded.data_dir`` is not set.

    The user's data directory (``~/.local/share/agency-data``); under root ``/var/lib/agency-data``,
    because PostgreSQL then runs as a system user, which cannot enter root's private home.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/agency-data")
    return Path(platformdirs.user_data_dir("agency-data"))


class EmbeddedConfig(_Section):
    """Where the embedded servers keep their data, and whether they outlive the last user."""

    data_dir: Path = Field(default_factory=default_data_dir)
    stop_on_close: bool = True
    start_timeout: float = Field(60.0, gt=0)
    replicas: list[Path] = Field(
        default_factory=list,
        description="data directories of standbys made by agency-data replica create: started "
        "with the primary, and read from as postgresql.replicas are",
    )
    postgres_settings: dict[str, str] = Field(
        default_factory=dict, description="postgresql.conf settings over our defaults"
    )
    valkey_settings: dict[str, str] = Field(
        default_factory=dict, description="valkey.conf settings over our defaults"
    )


class AlertsConfig(_Section):
    """The in-process alert rules' bounds (``monitoring.alerts``); the same rules ship for
    Prometheus in ``deploy/prometheus``. Durations are seconds."""

    enabled: bool = Field(True, description="evaluate the rules every monitoring.interval")
    pool_saturation: float = Field(
        0.9, gt=0, le=1, description="(used + waiting) / max connections at or above this fires"
    )
    pool_saturation_for: float = Field(60.0, ge=0)
    operation_p95: float = Field(0.5, gt=0, description="p95 budget of every operation, in seconds")
    operation_budgets: dict[str, float] = Field(
        default_factory=dict,
        description="p95 budgets of chosen operations ('agents.get': 0.01); bulk (*_many), "
        "admin.* and waiting ones (tasks.claim, lock.acquire) have none unless given here",
    )
    operation_min_calls: int = Field(
        20, ge=1, description="calls in the window before an operation's p95 is judged"
    )
    operation_window: float = Field(300.0, gt=0)
    operation_slow_for: float = Field(300.0, ge=0)
    cache_hit_rate: float = Field(0.5, ge=0, le=1, description="hit rate under this fires")
    cache_min_reads: int = Field(
        600,
        ge=1,
        description="reads in the window before the hit rate is judged (600 in 10 minutes: "
        "one a second, as the Prometheus rule has it)",
    )
    cache_window: float = Field(600.0, gt=0)
    cache_low_for: float = Field(600.0, ge=0)
    backend_down_for: float = Field(30.0, ge=0)
    disk_free: float = Field(0.10, ge=0, le=1, description="free / total space under this fires")
    disk_low_for: float = Field(300.0, ge=0)
    dead_rows: float = Field(
        0.2, gt=0, le=1, description="dead / all rows of a collection's table over this fires"
    )
    dead_rows_for: float = Field(1800.0, ge=0)
    recall: float = Field(0.9, gt=0, le=1, description="an estimated index recall under this fires")
    recall_low_for: float = Field(600.0, ge=0)
    denials: int = Field(
        10, ge=0, description="refused logins or rows in the window over this fires"
    )
    denials_window: float = Field(300.0, gt=0)
    changes_fill: float = Field(
        0.8,
        gt=0,
        le=1,
        description="changes kept / changes.max_rows at or above this fires (a named consumer "
        "that stopped reading holds them back)",
    )
    changes_full_for: float = Field(300.0, ge=0)
    outbox_age: float = Field(
        300.0,
        gt=0,
        description="seconds a committed outbox message may wait unsent (no relay running, or "
        "Redis unreachable) before it fires",
    )
    outbox_refused_window: float = Field(
        900.0, gt=0, description="outbox messages Redis refused in this window fire"
    )
    webhook_url: SecretStr | None = Field(
        None, description="POST each firing and resolved alert here as JSON (Alertmanager-like)"
    )

    @field_validator("operation_budgets")
    @classmethod
    def _positive_budgets(cls, budgets: dict[str, float]) -> dict[str, float]:
        for name, seconds in budgets.items():
            if not seconds > 0:
                raise ValueError(f"the budget of {name!r} must be a positive number of seconds")
        return budgets

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url


class MonitoringConfig(_Section):
    """Metrics, traces and the slow-query log (see :mod:`agency_data.observability`)."""

    metrics: bool = Field(
        True, description="time every public operation into the layer's Prometheus registry"
    )
    tracing: bool = Field(
        True,
        description="a span per public operation when OpenTelemetry is installed and a tracer "
        "provider is set; off (and free) otherwise",
    )
    sql_comments: bool = Field(
        True,
        description="while tracing, the trace context rides in each statement as a "
        "sqlcommenter comment (statements then differ per trace, so none is prepared)",
    )
    slow_query_ms: float = Field(
        1000.0, ge=0, description="statements slower than this are logged as JSON; 0 disables"
    )
    tenant_labels: bool = Field(
        False, description="label operation metrics by tenant (bounded only by your tenants)"
    )
    interval: float = Field(
        15.0, gt=0, le=3600, description="seconds between samples of task and index gauges"
    )
    disk_paths: dict[str, Path] = Field(
        default_factory=dict,
        description="more folders whose volume's free space is watched ({name: path}); the "
        "embedded servers' data directory is watched as 'data'",
    )
    recall_probe: bool = Field(
        True, description="estimate each collection's index recall from sampled searches"
    )
    recall_sample_rate: float = Field(
        0.01, ge=0, le=1, description="the share of searches kept as probe queries"
    )
    recall_samples: int = Field(20, ge=1, le=1000, description="probe queries kept per collection")
    recall_interval: float = Field(
        300.0, gt=0, description="seconds between probes (each probe runs exact searches)"
    )
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)


class BackupConfig(_Section):
    """Backup sets (``agency-data backup``): where they go, and what they are taken from."""

    directory: Path | None = Field(
        None, description="the repository of backup sets; default <embedded.data_dir>/backup-sets"
    )
    source_dsn: SecretStr | None = Field(
        None,
        description="a superuser's or REPLICATION role's connection to back up a configured "
        "server (the embedded server needs none)",
    )
    keep_full: int = Field(
        2,
        ge=1,
        le=10_000,
        description="full sets kept, each with the incremental sets built on it; older ones, "
        "and the archived WAL only they needed, are deleted after each new set",
    )
    keep_days: float | None = Field(
        None,
        gt=0,
        le=36_500,
        description="also delete the chains of sets older than this many days (the newest "
        "chain always stays); None: by count only",
    )
    archive_wal: bool = Field(
        False,
        description="the embedded server archives every WAL segment into <directory>/wal, so a "
        "restore can stop at any time after the first set (takes effect when it starts)",
    )
    compress: int = Field(
        0,
        ge=0,
        le=9,
        description="gzip level of new sets' files (1 fastest .. 9 smallest); 0 keeps them "
        "plain. The bundled PostgreSQL has gzip only (no lz4 or zstd)",
    )

    @field_validator("source_dsn")
    @classmethod
    def _valid_dsn(cls, dsn: SecretStr | None) -> SecretStr | None:
        if dsn is not None and (problem := postgres_dsn_problem(dsn.get_secret_value())):
            raise ValueError(problem)
        return dsn


class ConfigWarning(UserWarning):
    """A setting was given in a way that has no effect (an environment variable naming no section)."""


AUDITABLE = ("agents", "tasks", "embeddings")
AUDIT_DETAILS = ("digest", "fields", "values")


class OutboxConfig(_Section):
    """The transactional outbox (``tx.publish``) and its relay to Redis."""

    relay: bool = Field(
        default=True,
        description="run a relay in this DataLayer (relays of several processes take turns)",
    )
    interval: float = Field(
        default=0.5,
        gt=0,
        le=3600,
        description="seconds between the relay's rounds (a commit in this process wakes it "
        "at once; others' are seen within this)",
    )
    batch: int = Field(default=500, ge=1, le=100_000, description="messages relayed per round trip")
    keep_sent: float = Field(
        default=3600.0,
        ge=0,
        le=86_400 * 366,
        description="seconds a sent message stays in the outbox before it is pruned",
    )


class ChangesConfig(_Section):
    """The change feed (``dl.changes``): which tables are captured, and how much is kept."""

    tables: list[str] = Field(
        default_factory=list,
        description="tables whose changes are captured from connect on ('agents', 'tasks'; "
        "dl.changes.track for chosen columns); tables left out are not untracked",
    )

    @field_validator("tables")
    @classmethod
    def _table_names(cls, tables: list[str]) -> list[str]:
        for table in tables:
            if not re.match(SQL_NAME, table):
                raise ValueError(
                    f"{table!r} is not a table name (lower-case letters, digits and _)"
                )
        return tables

    keep: float = Field(
        default=86_400.0,
        ge=0,
        le=86_400 * 366,
        description="seconds a change is kept after it committed (longer for named consumers "
        "that have not read it, up to max_rows)",
    )
    max_rows: int = Field(
        default=1_000_000,
        ge=1,
        le=10**12,
        description="the most changes kept: past it the oldest go, consumers that had not "
        "read them are marked lost, and an alert fires",
    )
    poll: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="seconds a waiting reader sleeps between looks when no commit wakes it "
        "(commits notify readers at once, except through PgBouncer)",
    )


class EventsConfig(_Section):
    """Store events (``dl.events``): which stores' changes are published through the outbox.

    Each is off by default: an event is one more outbox row in the write's transaction. The
    setting travels with this DataLayer's connections, so any write they make (the stores',
    the sweepers', raw SQL's) publishes; a process whose config leaves a store off publishes
    none of its writes. Usage::

        DataLayerConfig(events={"tasks": True})   # then dl.events.subscribe("task.completed")
    """

    tasks: bool = Field(
        default=False,
        description="publish task.created when a task is created and task.<status> (running, "
        "completed, failed, dead, cancelled, pending) when its status changes",
    )
    agents: bool = Field(
        default=False,
        description="publish agent.created, agent.<status> (active, inactive, maintenance) "
        "when an agent's status changes, and agent.deleted",
    )
    embeddings: bool = Field(
        default=False,
        description="publish embedding.stored and embedding.deleted, one per statement "
        "(a bulk store's slice), with the collection, the count and up to 1,000 ids",
    )

    def stores(self) -> list[str]:
        """The stores whose events are on, as the setting ``agency_data.events`` names them."""
        return [name for name in ("tasks", "agents", "embeddings") if getattr(self, name)]


class AuditConfig(_Section):
    """The audit trail (``dl.audit``): which tables' changes are recorded."""

    tables: list[str] = Field(
        default_factory=list,
        description="tables whose every change is recorded, chained per tenant, in the "
        "change's own transaction: any of " + ", ".join(AUDITABLE) + " (embeddings: every "
        "collection's table); switched on at connect, off only by dl.admin.audit(table, False)",
    )

    detail: dict[str, str] = Field(
        default_factory=dict,
        description="what the records of chosen tables keep of each row: digest (the "
        "default: SHA-256 before and after), fields (and the changed columns' names) or "
        "values (the row itself), e.g. {tasks = 'fields'}",
    )

    admin: bool = Field(
        default=True,
        description="record the layer's own actions in the system trail (audit verify "
        "--system): collection and index DDL, auditing switched on or off, migrations applied "
        "or rolled back",
    )

    sessions: bool = Field(
        default=False,
        description="record session writes (create, update, delete; not touch) in the "
        "tenant's trail, with a digest of the data, before the write reaches Redis",
    )

    reads: list[str] = Field(
        default_factory=list,
        description="tables whose reads through the layer (get, list, search) are recorded "
        "too, one record per call naming the rows returned: any of " + ", ".join(AUDITABLE),
    )

    seal_interval: float = Field(
        default=1.0,
        gt=0.0,
        description="seconds between the background rounds that chain committed records into "
        "the trail (a verify or show chains its tenant's first)",
    )

    digest_key: SecretStr | None = Field(
        default=None,
        description="key of the HMAC-SHA256 digests of session data in records; without one, "
        "records name the data's top-level keys and size only (a plain digest of small data "
        "could be reversed by guessing)",
    )

    anchor_interval: float = Field(
        default=0.0,
        ge=0.0,
        description="seconds between anchors: every tenant's chain head (length and hash) "
        "logged by agency_data.audit and exported as agency_data_audit_records; 0: none",
    )

    @field_validator("detail")
    @classmethod
    def _details(cls, detail: dict[str, str]) -> dict[str, str]:
        for table, kept in detail.items():
            if table not in AUDITABLE:
                raise ValueError(f"audit.detail names {table}, which is not auditable")
            if kept not in AUDIT_DETAILS:
                raise ValueError(
                    f"audit.detail.{table} is {kept!r}: choose digest, fields or values"
                )
        return detail

    @field_validator("tables", "reads")
    @classmethod
    def _known(cls, tables: list[str]) -> list[str]:
        unknown = sorted(set(tables) - set(AUDITABLE))
        if unknown:
            raise ValueError(
                f"cannot audit {', '.join(unknown)}: choose among {', '.join(AUDITABLE)}"
            )
        return tables


_ENCRYPTED_FIELD = re.compile(
    r"^(?:tasks\.(?:data|result|error)|sessions\.data"
    r"|[a-z][a-z0-9_]{0,62}\.(?:content|metadata)|cache\.[A-Za-z0-9_.:-]{1,100})$"
)


class EncryptionConfig(_Section):
    """Field encryption (agency_data.security.fields): which values, and the key that wraps
    the tenants' data keys."""

    fields: list[str] = Field(
        default_factory=list,
        description="values encrypted before they reach PostgreSQL or Redis: tasks.data, "
        "tasks.result, tasks.error (and traceback), embeddings.content, embeddings.metadata (or "
        "<collection>.content / .metadata), sessions.data, cache.<namespace>",
    )
    kek: SecretStr | None = Field(
        None, description="the key-encryption key: 32 random bytes in base64"
    )
    kek_file: Path | None = Field(None, description="a file (0600) holding the KEK in base64")
    kek_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="an environment variable holding it"
    )
    previous_keks: list[SecretStr] = Field(
        default_factory=list,
        description="KEKs replaced by kek, still able to unwrap data keys until keys rotate "
        "has re-wrapped them",
    )
    key_store: Path | None = Field(
        None,
        description="the folder of the tenants' wrapped data keys (default: <data_dir>/keys); "
        "never inside a PostgreSQL or Valkey data directory, so that no backup holds them",
    )

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: list[str]) -> list[str]:
        for field in fields:
            if not _ENCRYPTED_FIELD.match(field):
                raise ValueError(
                    f"cannot encrypt {field!r}: choose tasks.data, tasks.result, tasks.error, "
                    "embeddings.content, embeddings.metadata, "
                    "<collection>.content, sessions.data or cache.<namespace>"
                )
        return fields

    @model_validator(mode="after")
    def _one_kek(self) -> EncryptionConfig:
        given = [n for n in ("kek", "kek_file", "kek_env") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give the KEK one way, not {' and '.join(given)}")
        if self.kek_file is not None and (problem := _file_problem(self.kek_file, key=True)):
            raise ValueError(f"kek_file: {problem}")
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "dead")


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration: seconds, or a number with s, m, h, d or w")
    if seconds <= 0:
        raise ValueError("a duration must be more than zero")
    return seconds


class RetentionPolicy(_Section):
    """What one policy removes: rows of ``target`` older than ``older_than``."""

    target: str = Field(
        pattern=r"^(?:tasks|agents|audit|cache\.[A-Za-z0-9_.:-]{1,64}|[a-z][a-z0-9_]{0,62})$",
        description="tasks, agents, audit, cache.<namespace>, or a collection's name",
    )
    older_than: float = Field(description="seconds, or a duration such as 30d, 12h, 1w")
    status: list[str] = Field(
        default_factory=lambda: list(TERMINAL_STATUSES),
        description="tasks: the statuses removed (finished ones by default)",
    )
    entity_type: str | None = Field(None, description="a collection: only this entity type")
    archive: bool = Field(False, description="write the rows to the archive before removing")

    @field_validator("older_than", mode="before")
    @classmethod
    def _older_than(cls, value: Any) -> float:
        return _duration(value)

    @field_validator("status")
    @classmethod
    def _statuses(cls, statuses: list[str]) -> list[str]:
        for status in statuses:
            if status not in TERMINAL_STATUSES:
                raise ValueError(
                    f"retention removes finished tasks only: {status!r} is not one of "
                    + ", ".join(TERMINAL_STATUSES)
                )
        return statuses


class RetentionConfig(_Section):
    """Retention (agency_data.retention): policies, batches, the archive, a schedule."""

    policies: list[RetentionPolicy] = Field(default_factory=list)
    batch_size: int = Field(1000, ge=1, le=100_000, description="rows removed per transaction")
    archive_dir: Path | None = Field(
        None, description="where archives go (default: <data_dir>/archive)"
    )
    interval: float = Field(
        0.0, ge=0.0, description="seconds between runs in every DataLayer; 0: only on demand"
    )


_SUBJECT_PATH = r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$"


class SubjectsConfig(_Section):
    """Where a data subject's id appears (``dl.subjects``): dotted JSON paths per store."""

    tasks: list[str] = Field(default_factory=list, description="paths in a task's data")
    agents: list[str] = Field(default_factory=list, description="paths in an agent's capabilities")
    collections: list[str] = Field(
        default_factory=list, description="paths in an embedding's metadata (every collection)"
    )
    entity_types: list[str] = Field(
        default_factory=list,
        description="embeddings of these entity types whose entity_id is the subject",
    )
    sessions: list[str] = Field(default_factory=list, description="paths in a session's data")
    streams: list[str] = Field(default_factory=list, description="paths in a stream message")
    cache_tag: str = Field(
        "subject:{subject}",
        pattern=r"\{subject\}",
        description="the tag the application puts on cache entries about a subject",
    )

    @field_validator("tasks", "agents", "collections", "sessions", "streams")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not re.match(_SUBJECT_PATH, path):
                raise ValueError(f"{path!r} is not a dotted path (user_id, customer.id)")
        return paths


class RegionConfig(_Section):
    """A region: the PostgreSQL and Redis its resident tenants' data lives in."""

    postgresql: PostgresConfig
    redis: RedisConfig

    @model_validator(mode="after")
    def _configured(self) -> RegionConfig:
        if self.postgresql.is_embedded or self.redis.is_embedded:
            raise ValueError(
                "a region names its own servers: give its postgresql (dsn or host) and its "
                "redis (url, host or sentinel)"
            )
        return self


class ResidencyConfig(_Section):
    """Data residency: tenants pinned to a region (``residency.tenants``), whose data is read
    and written only there."""

    regions: dict[str, RegionConfig] = Field(
        default_factory=dict, description="named regions, each a PostgreSQL and Redis pair"
    )
    tenants: dict[str, str] = Field(
        default_factory=dict, description="tenant id -> the region its data lives in"
    )

    @field_validator("regions")
    @classmethod
    def _names(cls, regions: dict[str, RegionConfig]) -> dict[str, RegionConfig]:
        for name in regions:
            if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
                raise ValueError(
                    f"region name {name!r} must be 1-32 lowercase letters, digits, _ -"
                )
        return regions

    @model_validator(mode="after")
    def _known(self) -> ResidencyConfig:
        for tenant, region in self.tenants.items():
            if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", tenant):
                raise ValueError(f"residency.tenants: {tenant!r} is not a tenant id")
            if region not in self.regions:
                raise ValueError(
                    f"tenant {tenant} is pinned to region {region!r}, which residency.regions "
                    f"does not name (it names {', '.join(sorted(self.regions)) or 'none'})"
                )
        return self


MASK_RULES = ("email", "api_key", "card", "phone")


class MaskPattern(_Section):
    """A mask rule of your own: a regular expression and what replaces its matches."""

    name: str = Field(min_length=1, max_length=64)
    pattern: str = Field(min_length=1, max_length=2000)
    replacement: str = Field("[masked]", max_length=200)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if compiled.search(""):
            raise ValueError("matches the empty string, so it would mask between every character")
        return pattern


class MaskingConfig(_Section):
    """Masking (agency_data.security.masking): what logs, errors and masked exports hide."""

    rules: list[str | MaskPattern] = Field(
        default_factory=lambda: list[str | MaskPattern](MASK_RULES),
        description="named rules (" + ", ".join(MASK_RULES) + ") and patterns of your own "
        "({name, pattern, replacement}), applied in order",
    )
    paths: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per table or collection, JSON paths into its rows whose values exports "
        "hide whatever they hold, e.g. {tasks = ['data.customer', 'result.*.token']}",
    )
    logs: bool = Field(True, description="mask the layer's log records")
    errors: bool = Field(True, description="mask the text of the layer's errors")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: list[str | MaskPattern]) -> list[str | MaskPattern]:
        for rule in rules:
            if isinstance(rule, str) and rule not in MASK_RULES:
                raise ValueError(
                    f"unknown mask rule {rule!r}: choose among {', '.join(MASK_RULES)}, or give "
                    "{name, pattern, replacement}"
                )
        return rules

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, table_paths in paths.items():
            for path in table_paths:
                if not path or any(not part for part in path.split(".")):
                    raise ValueError(
                        f"masking.paths.{table}: {path!r} is not a dotted path (data.customer)"
                    )
        return paths


class MemoryWeights(_Section):
    """How much each part of a memory's recall score counts (see agency_data.memory)."""

    # Chosen on the memory benchmark (bench/memory.py): recency and access only break ties
    # between memories about as similar (versions of one fact); weighed more, recent chatter
    # outranks what was said months ago.
    similarity: float = Field(default=0.8, ge=0, le=100, description="weight of similarity")
    recency: float = Field(default=0.1, ge=0, le=100, description="weight of recency")
    importance: float = Field(default=0.08, ge=0, le=100, description="weight of importance")
    access: float = Field(default=0.02, ge=0, le=100, description="weight of access frequency")

    @model_validator(mode="after")
    def _some_weight(self) -> MemoryWeights:
        if not (self.similarity or self.recency or self.importance or self.access):
            raise ValueError("weights are all 0: every memory would score 0; weigh at least one")
        return self


class MemoryConfig(_Section):
    """Agent memory (``dl.memory``): its collection, recall scoring and deduplication.

    Usage (TOML)::

        [memory]
        collection = "memories"
        half_life = 31536000           # a year
        half_lives = { working = 3600, episode = 2592000 }
        weights = { similarity = 0.8, recency = 0.1, importance = 0.08, access = 0.02 }
    """

    collection: str = Field(
        default="memories",
        pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="the embedding collection holding the memories' texts and vectors",
    )
    half_life: float = Field(
        default=365 * 86_400.0,
        gt=0,
        le=100 * 366 * 86_400.0,
        description="seconds after which a memory's recency counts half (kinds not in half_lives)",
    )
    half_lives: dict[str, float] = Field(
        default_factory=dict, description="recency half-life in seconds per memory kind"
    )

    @field_validator("half_lives")
    @classmethod
    def _positive_half_lives(cls, half_lives: dict[str, float]) -> dict[str, float]:
        for kind, seconds in half_lives.items():
            if not 0 < seconds <= 100 * 366 * 86_400.0 or seconds != seconds:
                raise ValueError(f"half_lives.{kind} must be seconds above 0, got {seconds}")
        return half_lives

    weights: MemoryWeights = Field(default_factory=MemoryWeights)
    access_saturation: int = Field(
        default=100,
        ge=1,
        le=10**9,
        description="recalls after which a memory's access part is full (it grows with the "
        "logarithm of its count)",
    )
    dedup: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="similarity from which a new memory of the same agent and subject "
        "updates the existing one instead of adding a near-copy (1: only identical vectors)",
    )
    candidates: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="nearest memories rescored by recall for each query",
    )
    access_flush: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="seconds between writes of the recall counts gathered in memory",
    )


class ServiceConfig(_Section):
    """The HTTP service (``agency-data serve``) and its MCP server (``agency-data mcp``).

    Usage (TOML)::

        [service]
        host = "127.0.0.1"
        port = 8700
        rate_limit = 50            # requests a second per API key; 0 turns limits off
        rate_burst = 100
        jwks_url = "https://id.example.com/.well-known/jwks.json"
        jwt_audience = "agency-data"
    """

    host: str = Field(default="127.0.0.1", description="the address `serve` listens on")
    port: int = Field(default=8700, ge=0, le=65535, description="the port (0: any free one)")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="the largest request body accepted (413 above it)",
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds a request may run before it is ended with 504 (long-poll waits "
        "are capped below it)",
    )
    rate_limit: float = Field(
        default=0.0,
        ge=0,
        le=1_000_000,
        description="requests a second each API key may make on average (0: no limit)",
    )
    rate_burst: int = Field(
        default=100, ge=1, le=1_000_000, description="requests a key may make at once"
    )
    jwks_url: str | None = Field(
        default=None,
        description="a JWKS document's URL: bearer JWTs signed by its keys are accepted",
    )
    jwt_issuer: str | None = Field(default=None, description="the `iss` a JWT must carry")
    jwt_audience: str | None = Field(default=None, description="the `aud` a JWT must carry")
    jwt_tenant_claim: str = Field(default="tenant", description="the JWT claim naming the tenant")
    jwt_role_claim: str = Field(
        default="role", description="the JWT claim naming the role (read-only if absent)"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="a bearer token for /metrics; without one, only loopback clients get it",
    )


class DataLayerConfig(BaseSettings):
    """Every setting of the data layer, validated once at load.

    ``DataLayerConfig()`` with nothing set runs on the embedded servers. See the module
    docstring for the ways to load it.
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    postgresql: PostgresConfig = Field(default_factory=PostgresConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    vector: VectorConfig = Field(default_factory=VectorConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    migration: MigrationConfig = Field(default_factory=MigrationConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    embedded: EmbeddedConfig = Field(default_factory=EmbeddedConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    changes: ChangesConfig = Field(default_factory=ChangesConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    subjects: SubjectsConfig = Field(default_factory=SubjectsConfig)
    residency: ResidencyConfig = Field(default_factory=ResidencyConfig)

    def __init__(self, **values: Any) -> None:
        _warn_unknown_sections(type(self).model_fields)
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            error = _config_error(exc)
        else:
            return
        # Raised outside the except block so the ValidationError (which still holds the
        # invalid input) is not even kept as __context__.
        raise error

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments beat environment variables, which beat the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _toml_file.get() or _env_toml_file()
        if toml_file is not None:
            if not toml_file.is_file():
                raise ConfigError(f"config file {toml_file} does not exist", field="config_file")
            sources.append(_TomlSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> DataLayerConfig:
        """Load from a TOML file (if given), the environment and ``overrides``."""
        token = _toml_file.set(Path(config_file) if config_file is not None else None)
        try:
            return cls(**overrides)
        except _TomlDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        finally:
            _toml_file.reset(token)


class _TomlSource(TomlConfigSettingsSource):
    """The TOML file, with its relative paths taken relative to the file, not to the cwd."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        return _relative_to(data, Path(file_path).resolve().parent)


# (section, field) of each path setting; for directories, each value of the table is a path.
_PATH_FIELDS = (
    ("migration", "directories"),
    ("migration", "backup_dir"),
    ("migration", "pg_dump_path"),
    ("embedded", "data_dir"),
)


def _relative_to(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def absolute(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # not a path: validation will say so
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)

    for section_name, field in _PATH_FIELDS:
        section = data.get(section_name)
        if not isinstance(section, dict) or field not in section:
            continue
        value = section[field]
        if isinstance(value, dict):
            section[field] = {key: absolute(item) for key, item in value.items()}
        else:
            section[field] = absolute(value)
    return data


def _warn_unknown_sections(fields: dict[str, Any]) -> None:
    # pydantic-settings reads only the variables of known sections and silently skips the
    # rest, so a misspelt section would fall back to the defaults (the embedded servers).
    sections = sorted(fields)
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or "__" not in upper:
            continue
        section = upper[len(_ENV_PREFIX) :].split("__", 1)[0].lower()
        if section in fields:
            continue
        close = difflib.get_close_matches(section, sections, n=1)
        hint = f"; did you mean {_ENV_PREFIX}{close[0].upper()}__...?" if close else ""
        # The name only: the value may be a password.
        warnings.warn(
            f"the environment variable {name} is ignored: {section!r} is not a config section "
            f"(the sections are {', '.join(sections)}){hint}",
            ConfigWarning,
            stacklevel=3,
        )


def _env_toml_file() -> Path | None:
    value = os.environ.get(_CONFIG_FILE_ENV)
    return Path(value) if value else None


try:
    from tomllib import TOMLDecodeError as _TomlDecodeError
except ImportError:  # pragma: no cover - Python < 3.11 is not supported
    _TomlDecodeError = ValueError  # type: ignore[misc,assignment]


def _config_error(exc: pydantic.ValidationError) -> ConfigError:
    # Values are left out on purpose: the invalid one may be a password.
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "config"
        lines.append(f"{field}: {error['msg']}")
    first_field = ".".join(str(p) for p in exc.errors()[0]["loc"]) if exc.errors() else None
    return ConfigError("invalid configuration: " + "; ".join(lines), field=first_field)
