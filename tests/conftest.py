"""Real servers for the tests: the embedded ones by default, or the ones the environment names.

``AGENCY_DATA_TEST_PG_DSN`` / ``AGENCY_DATA_TEST_REDIS_URL`` point the suite at other servers.
Each test that needs PostgreSQL gets a database of its own, copied from a migrated template
(``CREATE DATABASE ... TEMPLATE`` is a file copy: a few milliseconds) or created empty.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
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
from tests.servers import ValkeyProcesses, start_cluster, start_sentinel

# Test servers trade durability for speed; the library's own defaults keep fsync on.
FAST_POSTGRES = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
TEMPLATE_DB = "agency_test_template"


@dataclass
class ServerSet:
    """Where the session's servers are."""

    admin_dsn: str
    redis_url: str

    def dsn(self, database: str) -> str:
        """DSN of ``database`` on the test server."""
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = database
        return make_conninfo("", **params)

    def create_database(self, template: str = "template0") -> str:
        """A new, uniquely named database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
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
    data_dir = tmp_path_factory.mktemp("servers")
    started: list[EmbeddedPostgres | EmbeddedValkey] = []
    if pg_dsn is None:
        pg = EmbeddedPostgres(data_dir, settings=FAST_POSTGRES)
        pg.acquire()
        started.append(pg)
        pg_dsn = pg.dsn("postgres")
    if redis_url is None:
        valkey = EmbeddedValkey(data_dir)
        redis_url = valkey.acquire()
        started.append(valkey)
    test_servers = ServerSet(admin_dsn=pg_dsn, redis_url=redis_url)
    _build_template(test_servers)
    try:
        yield test_servers
    finally:
        test_servers.drop_database(TEMPLATE_DB)
        for server in started:
            server.release()


def _build_template(servers: ServerSet) -> None:
    import asyncio

    servers.drop_database(TEMPLATE_DB)
    with psycopg.connect(servers.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    runner = MigrationRunner(servers.dsn(TEMPLATE_DB), [BUILTIN_SOURCE])
    asyncio.run(runner.up())


@pytest.fixture
def database(servers: ServerSet) -> Iterator[str]:
    """DSN of a fresh database with the core schema applied."""
    name = servers.create_database(TEMPLATE_DB)
    yield servers.dsn(name)
    servers.drop_database(name)


@pytest.fixture
def empty_database(servers: ServerSet) -> Iterator[str]:
    """DSN of a fresh database with nothing in it."""
    name = servers.create_database()
    yield servers.dsn(name)
    servers.drop_database(name)


@pytest.fixture
def redis_url(servers: ServerSet) -> Iterator[str]:
    """URL of an emptied Redis database."""
    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    client.close()
    return servers.redis_url


def make_config(dsn: str, redis_url: str, tmp_path: Path, **sections: Any) -> DataLayerConfig:
    """A config on the given servers, with backups (if any) under ``tmp_path``."""
    values: dict[str, Any] = {
        "postgresql": {"dsn": dsn, "pool_min_size": 1, "pool_max_size": 4},
        "redis": {"url": redis_url},
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
