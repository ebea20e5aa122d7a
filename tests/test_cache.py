"""The cache, as one suite run over every level (L1 only, L2 only, L1+L2) and deployment
(standalone Valkey and a 3-node Valkey Cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agency_data import DataLayer, ValidationError
from agency_data.cache import escape_glob
from tests.conftest import make_config

LEVELS = {
    "l1": {"l1": True, "l2": False},
    "l2": {"l1": False, "l2": True},
    "l1+l2": {"l1": True, "l2": True},
}


@pytest.fixture(params=list(LEVELS))
async def dl(
    request: pytest.FixtureRequest, database: str, redis_section: dict[str, Any], tmp_path: Path
) -> AsyncIterator[DataLayer]:
    config = make_config(database, "", tmp_path, redis=redis_section, cache=LEVELS[request.param])
    async with DataLayer(config) as layer:
        yield layer


async def test_get_set_delete(dl: DataLayer) -> None:
    cache = dl.cache
    assert await cache.get("missing") is None
    assert await cache.get("missing", "fallback") == "fallback"
    await cache.set("agent:42:capabilities", {"plan": True, "tools": ["search"]}, ttl=60)
    assert await cache.get("agent:42:capabilities") == {"plan": True, "tools": ["search"]}
    await cache.delete("agent:42:capabilities")
    assert await cache.get("agent:42:capabilities") is None


async def test_ttl_expires(dl: DataLayer) -> None:
    await dl.cache.set("short", 1, ttl=0.2)
    await dl.cache.set("long", 2, ttl=60)
    assert await dl.cache.get("short") == 1
    await asyncio.sleep(0.35)
    assert await dl.cache.get("short") is None
    assert await dl.cache.get("long") == 2


async def test_many(dl: DataLayer) -> None:
    await dl.cache.set_many({f"k{i}": {"i": i} for i in range(50)}, ttl=60)
    found = await dl.cache.get_many([f"k{i}" for i in range(60)])
    assert found == {f"k{i}": {"i": i} for i in range(50)}
    assert await dl.cache.get_many([]) == {}


async def test_tags(dl: DataLayer) -> None:
    await dl.cache.set("agent:42:caps", 1, tags=["agent:42"])
    await dl.cache.set("agent:42:name", 2, tags=["agent:42", "names"])
    await dl.cache.set("agent:43:name", 3, tags=["agent:43", "names"])
    await dl.cache.invalidate_tags("agent:42")
    assert await dl.cache.get_many(["agent:42:caps", "agent:42:name", "agent:43:name"]) == {
        "agent:43:name": 3
    }
    await dl.cache.invalidate_tags("names", "nothing")
    assert await dl.cache.get("agent:43:name") is None


async def test_pattern_invalidation(dl: DataLayer) -> None:
    for key in ("agent:42:caps", "agent:42:name", "agent:43:caps", "agent:420:caps"):
        await dl.cache.set(key, key)
    await dl.cache.invalidate("agent:42:*")
    left = await dl.cache.get_many(
        ["agent:42:caps", "agent:42:name", "agent:43:caps", "agent:420:caps"]
    )
    assert set(left) == {"agent:43:caps", "agent:420:caps"}
    await dl.cache.invalidate("agent:4[23]:caps")
    assert set(await dl.cache.get_many(["agent:43:caps", "agent:420:caps"])) == {"agent:420:caps"}


async def test_special_characters_are_taken_literally_when_escaped(dl: DataLayer) -> None:
    keys = [
        "weird*key[1]",
        "weirdXkey[1]",
        "weird*key1",
        "what?",
        "whatX",
        "back\\slash",
        "backXslash",
    ]
    for key in keys:
        await dl.cache.set(key, key)
    await dl.cache.invalidate_prefix("weird*key[")
    await dl.cache.invalidate(escape_glob("what?"))
    await dl.cache.invalidate(escape_glob("back\\slash"))
    assert set(await dl.cache.get_many(keys)) == {
        "weirdXkey[1]",
        "weird*key1",
        "whatX",
        "backXslash",
    }


async def test_namespaces_and_clear(dl: DataLayer) -> None:
    tools = dl.cache.with_namespace("tools")
    await dl.cache.set("x", "default")
    await tools.set("x", "tools")
    assert await tools.get("x") == "tools"
    await dl.cache.clear("tools")
    assert await tools.get("x") is None
    assert await dl.cache.get("x") == "default"


async def test_tenants_do_not_share_keys(dl: DataLayer) -> None:
    await dl.tenant("acme").cache.set("k", "acme")
    await dl.tenant("globex").cache.set("k", "globex")
    assert await dl.tenant("acme").cache.get("k") == "acme"
    await dl.tenant("acme").cache.invalidate("*")
    assert await dl.tenant("globex").cache.get("k") == "globex"


async def test_get_or_set_loads_once(dl: DataLayer) -> None:
    calls = 0

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"n": 1}

    results = await asyncio.gather(
        *(dl.cache.get_or_set("expensive", loader, ttl=60) for _ in range(20))
    )
    assert results == [{"n": 1}] * 20
    assert calls == 1
    assert await dl.cache.get_or_set("expensive", loader) == {"n": 1}
    assert calls == 1


async def test_get_or_set_failure_reaches_every_waiter(dl: DataLayer) -> None:
    async def failing() -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("the source is down")

    outcomes = await asyncio.gather(
        *(dl.cache.get_or_set("k", failing) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await dl.cache.get("k") is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.set("k", object()), "cannot cache"),
        (lambda c: c.set("k", "x" * (9 << 20)), "max_value_bytes"),
        (lambda c: c.set("k", 1, ttl=0), "ttl"),
        (lambda c: c.set("k", 1, ttl=-5), "ttl"),
        (lambda c: c.set("", 1), "key"),
        (lambda c: c.set("x" * 2000, 1), "key"),
        (lambda c: c.get(5), "key"),
        (lambda c: c.invalidate(""), "pattern"),
        (lambda c: c.with_namespace("bad space").get("k"), "namespace"),
    ],
)
async def test_bad_input(dl: DataLayer, call: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await call(dl.cache)


async def test_stats_count_hits_and_misses(dl: DataLayer) -> None:
    await dl.cache.set("s", 1)
    await dl.cache.get("s")
    await dl.cache.get("absent")
    stats = dl.cache.stats()
    assert stats.sets >= 1
    assert stats.l1_hits + stats.l2_hits >= 1
    assert stats.l1_misses + stats.l2_misses >= 1
    assert 0 < stats.hit_rate < 1
    health = await dl.health()
    assert "cache" in health.components["redis"].details


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(min_size=1, max_size=60), value=json_values)
async def test_any_key_and_json_value_round_trip(dl: DataLayer, key: str, value: Any) -> None:
    await dl.cache.set(key, value, ttl=60)
    assert await dl.cache.get(key, "absent") == value


async def test_compression_round_trips_and_shrinks(
    database: str, servers: Any, tmp_path: Path
) -> None:
    config = make_config(
        database,
        servers.redis_url,
        tmp_path,
        cache={"l1": False, "compression": True, "compression_threshold": 100},
    )
    value = {"text": "agent memory " * 500}
    async with DataLayer(config) as layer:
        await layer.cache.set("big", value)
        await layer.cache.set("small", {"x": 1})
        assert await layer.cache.get("big") == value
        raw = redis_client(servers.redis_url)
        stored = await raw.get("ad:{default}:c:default:big")
        small = await raw.get("ad:{default}:c:default:small")
        await raw.aclose()
        assert stored[8:9] == b"z"
        assert len(stored) < len("agent memory ") * 500 / 10
        assert small[8:9] == b"j"


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)
