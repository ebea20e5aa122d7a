"""TLS to PostgreSQL and to Redis, with certificates made for the run and checked both ways.

The embedded servers are built without TLS, so the TLS endpoints are real servers that have
it: a PgBouncer (Debian's package) in front of the test PostgreSQL, which terminates TLS as
a managed pooler would, and Debian's redis-server on a TLS port. Both demand a client
certificate the test CA signed. Without the programs these tests fail on CI and skip
elsewhere (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agency_data import DataLayer, DataLayerConfig
from agency_data.errors import AgencyDataError, BackendUnavailable, ConfigError
from tests.certificates import Certificates, make_certificates
from tests.conftest import ROLES, DatabaseDsn, ServerSet, make_config
from tests.pgbouncer_server import PgBouncer, TlsFiles, find_pgbouncer


def _needs(program: str | None, name: str, package: str) -> str:
    if program is None:
        message = f"{name} is not installed: apt-get install {package} (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return program


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_bouncer(servers: ServerSet, certificates: Certificates) -> Iterator[PgBouncer]:
    """PgBouncer on TLS only, asking every client for a certificate the test CA signed."""
    _needs(find_pgbouncer(), "pgbouncer", "pgbouncer")
    files = TlsFiles(
        cert=certificates.server_cert,
        key=certificates.server_key,
        ca=certificates.ca,
        client_cert=certificates.client_cert,
        client_key=certificates.client_key,
    )
    running = PgBouncer(servers.admin_dsn, [ROLES.app], passwords=servers.passwords, tls=files)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[int]:
    """redis-server listening on a TLS port only, asking clients for a certificate."""
    binary = _needs(shutil.which("redis-server"), "redis-server", "redis-server")
    folder = tmp_path_factory.mktemp("redis-tls")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(certificates.server_cert),
            "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", "yes",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(
            host="localhost",
            port=port,
            ssl=True,
            ssl_ca_certs=str(certificates.ca),
            ssl_certfile=str(certificates.client_cert),
            ssl_keyfile=str(certificates.client_key),
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _through_bouncer(bouncer: PgBouncer, database: DatabaseDsn) -> str:
    """The application role's DSN through the TLS PgBouncer, with no TLS setting of its own."""
    return make_conninfo(
        "",
        host="localhost",
        hostaddr="127.0.0.1",
        port=bouncer.port,
        dbname=str(conninfo_to_dict(database)["dbname"]),
        user=ROLES.app,
        password=bouncer.passwords[ROLES.app],
    )


def _config(
    bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    certificates: Certificates,
    **tls: Any,
) -> DataLayerConfig:
    settings = {
        "sslmode": "verify-full",
        "sslrootcert": certificates.ca,
        "sslcert": certificates.client_cert,
        "sslkey": certificates.client_key,
        **tls,
    }
    return make_config(
        _through_bouncer(bouncer, database),
        redis_url,
        tmp_path,
        postgresql={
            "admin_dsn": database.owner,
            "direct_dsn": str(database),
            "pgbouncer": True,
            **{key: value for key, value in settings.items() if value is not None},
        },
    )


async def test_postgresql_over_verified_tls(
    tls_bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    certificates: Certificates,
) -> None:
    config = _config(tls_bouncer, database, redis_url, tmp_path, certificates)
    async with DataLayer(config) as dl:
        agent = await dl.tenant("acme").agents.create("scout", "search")
        assert (await dl.tenant("acme").agents.get(agent.id)).name == "scout"
    # The settings reached the connection: PgBouncer saw our clients on TLS.
    clients = tls_bouncer.show("CLIENTS")
    assert clients
    assert all(client["tls"] for client in clients), clients


async def test_postgresql_refuses_a_server_the_ca_did_not_sign(
    tls_bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    certificates: Certificates,
) -> None:
    config = _config(
        tls_bouncer,
        database,
        redis_url,
        tmp_path,
        certificates,
        sslrootcert=certificates.stranger_ca,
    )
    with pytest.raises(BackendUnavailable, match="certificate verify failed") as caught:
        async with DataLayer(config):
            pass
    assert tls_bouncer.passwords[ROLES.app] not in str(caught.value)


async def test_postgresql_refuses_a_client_without_a_certificate(
    tls_bouncer: PgBouncer,
    database: DatabaseDsn,
    redis_url: str,
    tmp_path: Path,
    certificates: Certificates,
) -> None:
    config = _config(
        tls_bouncer, database, redis_url, tmp_path, certificates, sslcert=None, sslkey=None
    )
    with pytest.raises(AgencyDataError):
        async with DataLayer(config):
            pass


def _redis_config(
    tls_redis: int,
    database: DatabaseDsn,
    tmp_path: Path,
    certificates: Certificates,
    **tls: Any,
) -> DataLayerConfig:
    settings = {
        "ssl_ca_certs": certificates.ca,
        "ssl_certfile": certificates.client_cert,
        "ssl_keyfile": certificates.client_key,
        **tls,
    }
    return make_config(
        database,
        "",
        tmp_path,
        redis={
            "url": f"rediss://localhost:{tls_redis}/0",
            **{key: value for key, value in settings.items() if value is not None},
        },
        cache={"l1": False},  # every read reaches Redis
    )


async def test_redis_over_verified_tls(
    tls_redis: int, database: DatabaseDsn, tmp_path: Path, certificates: Certificates
) -> None:
    async with DataLayer(_redis_config(tls_redis, database, tmp_path, certificates)) as dl:
        await dl.cache.set("greeting", {"hello": "world"})
        assert await dl.cache.get("greeting") == {"hello": "world"}
        session = await dl.sessions.create("agent-1", {"step": 1})
        assert (await dl.sessions.get(session.id)).data == {"step": 1}
        assert (await dl.health()).components["redis"].up


async def test_redis_refuses_a_server_the_ca_did_not_sign(
    tls_redis: int, database: DatabaseDsn, tmp_path: Path, certificates: Certificates
) -> None:
    config = _redis_config(
        tls_redis, database, tmp_path, certificates, ssl_ca_certs=certificates.stranger_ca
    )
    # The layer starts without Redis (it degrades); what needs Redis says why it cannot.
    async with DataLayer(config) as dl:
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            await dl.sessions.create("agent-1", {"step": 1})
        health = await dl.health()
        assert (health.status, health.components["redis"].up) == ("degraded", False)


async def test_redis_refuses_a_client_without_a_certificate(
    tls_redis: int, database: DatabaseDsn, tmp_path: Path, certificates: Certificates
) -> None:
    config = _redis_config(
        tls_redis, database, tmp_path, certificates, ssl_certfile=None, ssl_keyfile=None
    )
    async with DataLayer(config) as dl:
        with pytest.raises(BackendUnavailable):
            await dl.sessions.create("agent-1", {"step": 1})


def test_tls_files_are_checked_at_load(tmp_path: Path, certificates: Certificates) -> None:
    loose = tmp_path / "loose.key"
    shutil.copyfile(certificates.client_key, loose)
    loose.chmod(0o644)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"postgresql": {"host": "db", "sslkey": loose, "sslcert": certificates.client_cert}},
         "chmod 600"),
        ({"postgresql": {"host": "db", "sslcert": certificates.client_cert}}, "go together"),
        ({"postgresql": {"host": "db", "sslrootcert": tmp_path / "absent.crt"}}, "cannot read"),
        ({"postgresql": {"host": "db", "sslrootcert": tmp_path}}, "is not a file"),
        ({"redis": {"host": "r", "ssl_keyfile": loose, "ssl_certfile": certificates.client_cert}},
         "chmod 600"),
        ({"redis": {"host": "r", "ssl_keyfile": certificates.client_key}}, "go together"),
        ({"postgresql": {"host": "db", "sslmode": "verify-everything"}}, "sslmode"),
    ]  # fmt: skip
    for sections, problem in cases:
        with pytest.raises(ConfigError, match=problem):
            DataLayerConfig(**sections)


def test_tls_settings_reach_every_connection_string(certificates: Certificates) -> None:
    config = DataLayerConfig(
        postgresql={
            "dsn": "postgresql://app:secret@db.example/agents?sslmode=disable",
            "admin_dsn": "host=db.example user=owner dbname=agents",
            "replicas": ["postgresql://app:secret@replica.example/agents"],
            "sslmode": "verify-full",
            "sslrootcert": certificates.ca,
        }
    ).postgresql
    for conninfo in (config.conninfo(), config.admin_conninfo(), *config.replica_conninfos()):
        assert conninfo is not None
        params = conninfo_to_dict(conninfo)
        assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", str(certificates.ca))
    by_host = DataLayerConfig(postgresql={"host": "db", "ssl": True}).postgresql.conninfo()
    assert conninfo_to_dict(by_host)["sslmode"] == "require"
