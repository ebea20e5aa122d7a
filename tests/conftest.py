"""Real servers for the tests: the embedded ones by default, or the ones the environment names.

``AGENCY_DATA_TEST_PG_DSN`` (a superuser) / ``AGENCY_DATA_TEST_REDIS_URL`` point the suite at
other servers. Each test that needs PostgreSQL gets a database of its own, copied from a migrated
template (``CREATE DATABASE ... TEMPLATE`` is a file copy: a few milliseconds) or created empty.
The layer connects as it would in production: the pool as the application role, migrations and
DDL as the owner role; the superuser only makes and drops databases.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from redis.cluster import RedisCluster

from agency_data import DataLayer, DataLayerConfig
from agency_data.embedded import EmbeddedPostgres, EmbeddedValkey
from agency_data.migrations import BUILTIN_SOURCE, MigrationRunner
from agency_data.security.roles import RoleNames, setup_roles
from tests.servers import ValkeyProcesses, start_cluster, start_sentinel

# Test servers trade durability for speed; the library's own defaults keep fsync on.
FAST_POSTGRES = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
TEMPLATE_DB = "agency_test_template"
ROLES = RoleNames(owner="agency_owner", app="agency_app", readonly="agency_readonly")


class DatabaseDsn(str):
    """The application role's DSN of a test database, carrying the owner's and superuser's."""

    owner: str
    superuser: str


@dataclass
class ServerSet:
    """Where the session's servers are."""

    admin_dsn: str
    redis_url: str
    passwords: dict[str, str]

    def dsn(self, database: str, user: str | None = None) -> str:
        """DSN of ``database`` on the test server, as the superuser or as ``user``."""
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = database
        if user is not None:
            params["user"] = user
            params.pop("password", None)
            if user in self.passwords:
                params["password"] = self.passwords[user]
        return make_conninfo("", **params)

    def database_dsn(self, database: str) -> DatabaseDsn:
        """The three DSNs of ``database``: application (the string), owner and superuser."""
        dsn = DatabaseDsn(self.dsn(database, ROLES.app))
        dsn.owner = self.dsn(database, ROLES.owner)
        dsn.superuser = self.dsn(database)
        return dsn

    def create_database(self, template: str = "template0") -> str:
        """A new, uniquely named database owned by the owner role; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(template), sql.Identifier(ROLES.owner)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing any connection left on it."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSet]:
    """The session's PostgreSQL and Redis, started once (unless the environment names them)."""
    pg_dsn = os.environ.get("AGENCY_DATA_TEST_PG_DSN")
    redis_url = os.environ.get("AGENCY_DATA_TEST_REDIS_URL")
    data_dir = reachable_dir(tmp_path_factory) / "servers"
    started: list[EmbeddedPostgres | EmbeddedValkey] = []
    # The embedded server lets the OS user in as any role (peer); others need passwords.
    passwords = (
        {} if pg_dsn is None else {name: secrets.token_urlsafe(16) for name in vars(ROLES).values()}
    )
    if pg_dsn is None:
        pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
        pg.acquire()
        started.append(pg)
        pg_dsn = pg.dsn("postgres")
    if redis_url is None:
        valkey = EmbeddedValkey(data_dir)
        redis_url = valkey.acquire()
        started.append(valkey)
    test_servers = ServerSet(admin_dsn=pg_dsn, redis_url=redis_url, passwords=passwords)
    _build_template(test_servers)
    try:
        yield test_servers
    finally:
        test_servers.drop_database(TEMPLATE_DB)
        for server in started:
            server.release()


_REACHABLE: list[Path] = []


def reachable_dir(factory: pytest.TempPathFactory) -> Path:
    """A new empty folder for embedded servers' data directories.

    Under root, the PostgreSQL server runs as a system user that must be able to pass through
    every folder on the way to its data, and pytest's own temp folders are private to root;
    so the folder is made in the system temp directory, traversable (not listable) by others.
    """
    if os.geteuid() != 0:
        return factory.mktemp("data")
    folder = Path(tempfile.mkdtemp(prefix="agency-data-tests-"))
    folder.chmod(0o711)
    _REACHABLE.append(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _remove_reachable_dirs() -> Iterator[None]:
    yield
    for folder in _REACHABLE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory (not yet made) for an embedded server of the test's own."""
    return reachable_dir(tmp_path_factory) / "data"


def _build_template(servers: ServerSet) -> None:
    servers.drop_database(TEMPLATE_DB)
    with psycopg.connect(servers.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))

    async def prepare() -> None:
        async with await psycopg.AsyncConnection.connect(
            servers.dsn(TEMPLATE_DB), autocommit=True
        ) as conn:
            await setup_roles(conn, ROLES, passwords=servers.passwords)
        runner = MigrationRunner(
            servers.dsn(TEMPLATE_DB, ROLES.owner), [BUILTIN_SOURCE], role=ROLES
        )
        await runner.up()

    asyncio.run(prepare())


@pytest.fixture
def database(servers: ServerSet) -> Iterator[DatabaseDsn]:
    """DSNs of a fresh database with the core schema applied (the application role's first)."""
    name = servers.create_database(TEMPLATE_DB)
    yield servers.database_dsn(name)
    servers.drop_database(name)


@pytest.fixture
def empty_database(servers: ServerSet) -> Iterator[DatabaseDsn]:
    """DSNs of a fresh database with nothing in it but pgvector (owned by the owner role)."""
    name = servers.create_database()
    with psycopg.connect(servers.dsn(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    yield servers.database_dsn(name)
    servers.drop_database(name)


@pytest.fixture
def redis_url(servers: ServerSet) -> str:
    """URL of an emptied Redis database."""
    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    client.close()
    return servers.redis_url


@asynccontextmanager
async def other_connection(
    dl: DataLayer, tenant: str = "default"
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection of its own (outside the caller's transaction), as ``tenant``.

    Its statements run in one transaction that names the tenant to row-level security, and
    commit when the block ends.
    """
    async with dl.pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('agency_data.tenant', %s, true)", [tenant])
        yield conn


def make_config(dsn: str, redis_url: str, tmp_path: Path, **sections: Any) -> DataLayerConfig:
    """A config on the given servers, with backups (if any) under ``tmp_path``."""
    postgresql: dict[str, Any] = {"dsn": dsn, "pool_min_size": 1, "pool_max_size": 4}
    if isinstance(dsn, DatabaseDsn):
        postgresql["admin_dsn"] = dsn.owner
    values: dict[str, Any] = {
        "postgresql": postgresql,
        "redis": {"url": redis_url} if redis_url else {},
        "migration": {"backup_before_migration": False, "backup_dir": tmp_path / "backups"},
        "embedded": {"data_dir": tmp_path / "unused-embedded"},
    }
    for section, overrides in sections.items():
        values[section] = {**values.get(section, {}), **overrides}
    return DataLayerConfig(**values)


@pytest.fixture
async def dl(database: str, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A connected DataLayer on a fresh, migrated database."""
    async with DataLayer(make_config(database, redis_url, tmp_path)) as layer:
        yield layer


@pytest.fixture
async def service(database: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """The HTTP service, running on loopback over a fresh database (tests/service_support.py)."""
    from tests.service_support import service_on

    async with service_on(database, redis_url, tmp_path) as svc:
        yield svc


@pytest.fixture(scope="session")
def valkey_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcesses]:
    """Extra Valkey servers (cluster, sentinel), started on demand, stopped after the session."""
    processes = ValkeyProcesses(tmp_path_factory.mktemp("valkey-extra"))
    yield processes
    processes.stop()


@pytest.fixture(scope="session")
def cluster_url(valkey_processes: ValkeyProcesses) -> str:
    """A real 3-node Valkey Cluster (or the one AGENCY_DATA_TEST_REDIS_CLUSTER_URL names)."""
    return os.environ.get("AGENCY_DATA_TEST_REDIS_CLUSTER_URL") or start_cluster(valkey_processes)


@pytest.fixture(scope="session")
def sentinel(valkey_processes: ValkeyProcesses) -> tuple[str, str]:
    """A Sentinel watching a primary named ``main``: (master name, sentinel host:port)."""
    return start_sentinel(valkey_processes)


@pytest.fixture(params=["standalone", "cluster"])
def redis_section(request: pytest.FixtureRequest, servers: ServerSet) -> dict[str, Any]:
    """The ``redis`` config section of each kind of deployment, emptied first."""
    if request.param == "standalone":
        client = redis.Redis.from_url(servers.redis_url)
        client.flushdb()
        client.close()
        return {"url": servers.redis_url}
    url = request.getfixturevalue("cluster_url")
    cluster = RedisCluster.from_url(url)
    cluster.flushall(target_nodes=RedisCluster.ALL_NODES)
    cluster.close()
    return {"url": url, "cluster": True}


@asynccontextmanager
async def holding_connections(dl: DataLayer, count: int) -> AsyncIterator[None]:
    """Keep ``count`` of ``dl``'s pooled connections busy (each in a transaction) in the block."""
    release = asyncio.Event()
    everyone = asyncio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        # Waiting as long as it takes to open the connection (a loaded machine may take longer
        # than a test's short pool_timeout), which the block then holds.
        async with dl.pool.connection(timeout=30) as conn, conn.transaction():
            await conn.execute("SELECT 1")
            held += 1
            if held == count:
                everyone.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(count)]
    waiting = asyncio.create_task(everyone.wait())
    # A holder that fails ends the wait with its error; nobody waits on anybody else for ever.
    await asyncio.wait([waiting, *holders], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    try:
        if not everyone.is_set():
            for holder in holders:
                if holder.done():
                    holder.result()
            raise AssertionError(f"{count} connections could not all be held within 30 s")
        yield
    finally:
        release.set()
        waiting.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
