"""Data residency on the real servers: a tenant pinned to a region has its rows in that
region's PostgreSQL and its keys in that region's Redis, and nowhere else; the layer refuses
to scope it anywhere else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from agency_data import DataLayer
from agency_data.errors import ConfigError, ValidationError
from tests.conftest import TEMPLATE_DB, DatabaseDsn, ServerSet, make_config


@pytest.fixture
def eu_database(servers: ServerSet) -> Iterator[DatabaseDsn]:
    """A second database: the eu region's PostgreSQL."""
    name = servers.create_database(TEMPLATE_DB)
    yield servers.database_dsn(name)
    servers.drop_database(name)


def eu_redis(redis_url: str) -> str:
    """The eu region's Redis: another database of the test server, emptied."""
    url = redis_url + ("&" if "?" in redis_url else "?") + "db=1"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_pinned_tenant_lives_in_its_region_only(
    database: DatabaseDsn, eu_database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    eu_url = eu_redis(redis_url)
    config = make_config(
        database,
        redis_url,
        tmp_path,
        residency={
            "regions": {
                "eu": {
                    "postgresql": {"dsn": str(eu_database), "admin_dsn": eu_database.owner},
                    "redis": {"url": eu_url},
                }
            },
            "tenants": {"acme": "eu"},
        },
        subjects={"tasks": ["user"]},
    )
    async with DataLayer(config) as dl:
        acme, globex = dl.tenant("acme"), dl.tenant("globex")
        agent = await acme.agents.create("scout", "search")
        await acme.tasks.create("job", {"n": 1})
        await acme.cache.set("k", {"v": 1})
        await acme.sessions.create("agent-1", {"s": 1})
        await globex.agents.create("other", "w")
        await globex.cache.set("k", {"v": 2})
        assert (await acme.agents.get(agent.id)).name == "scout"
        assert await acme.cache.get("k") == {"v": 1}
        # Rows: acme's in eu only, globex's at home only.
        for dsn, tenant, expected in (
            (eu_database.superuser, "acme", 1),
            (database.superuser, "acme", 0),
            (database.superuser, "globex", 1),
            (eu_database.superuser, "globex", 0),
        ):
            agents = count(dsn, f"SELECT count(*) FROM agents WHERE tenant_id = '{tenant}'")
            assert agents == expected, (dsn, tenant)
        assert count(eu_database.superuser, "SELECT count(*) FROM tasks") == 1
        assert count(database.superuser, "SELECT count(*) FROM tasks") == 0
        # Redis keys: acme's in eu's database only.
        home, eu = redis.Redis.from_url(redis_url), redis.Redis.from_url(eu_url)
        try:
            assert list(home.scan_iter(match="ad:{acme}:*")) == []
            assert len(list(eu.scan_iter(match="ad:{acme}:*"))) >= 2
            assert list(eu.scan_iter(match="ad:{globex}:*")) == []
        finally:
            home.close()
            eu.close()
        # Refused elsewhere: the eu region serves only its residents, and nothing scopes acme
        # to the home servers.
        with pytest.raises(ValidationError, match="not pinned to this region"):
            dl.region("eu").tenant("globex")
        assert dl.tenant("acme") is dl.region("eu").tenant("acme")
        with pytest.raises(ValidationError, match="pinned to another region"):
            # The home region's own work refuses it (here: a subject's rows looked up).
            await dl.subjects.export("acme", "someone")
        assert (await dl.region("eu").subjects.export("acme", "someone"))["tenant"] == "acme"
        with pytest.raises(ValidationError, match="no region"):
            dl.region("mars")
        assert (await dl.region("eu").health()).status == "ok"


def test_residency_is_checked_at_load(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    for residency, problem in (
        ({"tenants": {"acme": "eu"}}, "does not name"),
        ({"regions": {"EU": {"postgresql": {"host": "db"}, "redis": {"host": "r"}}}}, "lowercase"),
        ({"regions": {"eu": {"postgresql": {}, "redis": {"host": "r"}}}}, "its own servers"),
    ):
        with pytest.raises(ConfigError, match=problem):
            make_config(database, redis_url, tmp_path, residency=residency)
