"""Cache coherence: between processes' L1s, and with PostgreSQL commits."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agency_data import DataLayer, ValidationError
from tests.conftest import make_config

BOUND = 1.0  # seconds: what the README states for cross-process L1 invalidation

READER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from agency_data import DataLayer

    async def main():
        dsn, url = sys.argv[1], sys.argv[2]
        async with DataLayer(
            postgresql={"dsn": dsn}, redis={"url": url},
            migration={"auto_migrate": False, "backup_before_migration": False},
        ) as dl:
            assert await dl.cache.get("shared") == "old"
            assert dl.cache.stats().l2_hits == 1  # now it is in this process's L1
            print("ready", flush=True)
            sys.stdin.readline()  # the parent writes "changed" once it changed the key
            changed_at = time.monotonic()
            while await dl.cache.get("shared") == "old":
                await asyncio.sleep(0.002)
            print(json.dumps({"seconds": time.monotonic() - changed_at}), flush=True)

    asyncio.run(main())
    """
)


async def test_another_process_drops_its_l1_copy(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "reader.py"
    script.write_text(READER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.cache.set("shared", "old")
        child = subprocess.Popen(  # noqa: ASYNC220 - a child process is the point of the test
            [sys.executable, str(script), database, redis_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdin is not None
        assert (await asyncio.to_thread(child.stdout.readline)).strip() == "ready"
        await dl.cache.set("shared", "new")
        child.stdin.write("changed\n")
        child.stdin.flush()
        out, err = await asyncio.to_thread(child.communicate, None, 60)
        assert child.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["seconds"] < BOUND


async def test_two_layers_see_each_others_invalidations(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        DataLayer(make_config(database, redis_url, tmp_path)) as a,
        DataLayer(make_config(database, redis_url, tmp_path)) as b,
    ):
        await a.cache.set("k", 1, tags=["t"])
        await a.cache.set("p:1", 1)
        assert await b.cache.get("k") == 1
        assert await b.cache.get("p:1") == 1
        for change in (a.cache.delete("k"), a.cache.invalidate("p:*")):
            await change
        await a.cache.set("k2", 2, tags=["t"])
        assert await b.cache.get("k2") == 2
        await a.cache.invalidate_tags("t")
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and (  # noqa: ASYNC110 - polling another layer's L1
            b.cache._backend.l1 is not None and len(b.cache._backend.l1) > 0
        ):
            await asyncio.sleep(0.005)
        assert await b.cache.get_many(["k", "p:1", "k2"]) == {}
        assert b.cache.stats().invalidations_received >= 3


@pytest.fixture
async def cached(database: str, redis_url: str, tmp_path: Path) -> DataLayer:
    layer = DataLayer(make_config(database, redis_url, tmp_path, cache={"record_ttl": 60}))
    await layer.connect()
    return layer


async def test_agent_reads_go_through_the_cache(cached: DataLayer) -> None:
    try:
        agent = await cached.agents.create(name="planner", type="t")
        assert await cached.agents.get(agent.id) == agent
        assert await cached.agents.get(agent.id) == agent
        assert cached.cache.stats().l1_hits >= 1
        updated = await cached.agents.update(agent.id, name="renamed")
        assert (await cached.agents.get(agent.id)).name == "renamed"  # invalidated at once
        assert updated.version == 2
        await cached.agents.delete(agent.id)
        with pytest.raises(Exception, match="does not exist"):
            await cached.agents.get(agent.id)
        fresh = await cached.agents.create(name="direct", type="t")
        assert await cached.agents.get(fresh.id, cached=False) == fresh
    finally:
        await cached.aclose()


async def test_rolled_back_write_leaves_the_cache_alone(cached: DataLayer) -> None:
    try:
        agent = await cached.agents.create(name="steady", type="t")
        await cached.agents.get(agent.id)  # cached now
        before = cached.cache.stats().sets
        with pytest.raises(ValidationError):  # noqa: PT012
            async with cached.transaction():
                await cached.agents.update(agent.id, name="never")
                await cached.agents.create(name="", type="t")
        assert (await cached.agents.get(agent.id)).name == "steady"
        assert cached.cache.stats().sets == before, "served from cache: nothing was evicted"
    finally:
        await cached.aclose()


async def test_committed_write_invalidates_only_after_commit(cached: DataLayer) -> None:
    try:
        agent = await cached.agents.create(name="before", type="t")
        await cached.agents.get(agent.id)
        async with cached.transaction():
            await cached.agents.update(agent.id, name="after")
            # Another reader, outside the transaction, still gets the committed state.
            outside = await asyncio.create_task(
                cached.agents.get(agent.id), context=contextvars.Context()
            )
            assert outside.name == "before"
        assert (await cached.agents.get(agent.id)).name == "after"
    finally:
        await cached.aclose()


async def test_stampede_protection_across_processes(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return "loaded"

    async with (
        DataLayer(make_config(database, redis_url, tmp_path)) as a,
        DataLayer(make_config(database, redis_url, tmp_path)) as b,
    ):
        results = await asyncio.gather(
            *(
                layer.cache.get_or_set("costly", loader, across_processes=True)
                for layer in (a, b) * 5
            )
        )
    assert results == ["loaded"] * 10
    assert calls == 1
