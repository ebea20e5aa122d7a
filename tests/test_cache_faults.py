"""L1 coherence under Redis faults and hostile invalidation messages; Redis glob semantics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agency_data import DataLayer, ValidationError
from agency_data.cache.backend import INVALIDATION_CHANNEL
from agency_data.embedded import EmbeddedValkey
from agency_data.redis.keys import check_pattern, glob_matcher
from tests.conftest import make_config


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "own-valkey")
    server.acquire()
    yield server
    if not server.is_running():
        server.start()  # release() expects the server it started
    server.release()


@pytest.fixture
async def reader(database: str, valkey: EmbeddedValkey, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """The process whose L1 must not go stale."""
    config = make_config(
        database, valkey.url, tmp_path / "p", cache={"l1_ttl": 60, "retry_after": 0.05}
    )
    async with DataLayer(config) as dl:
        yield dl


@pytest.fixture
async def writer(database: str, valkey: EmbeddedValkey, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """Another process, writing through Redis only."""
    config = make_config(database, valkey.url, tmp_path / "w", cache={"l1": False})
    async with DataLayer(config) as dl:
        yield dl


async def _until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.005)
    return bool(callable(condition) and condition())


def _kill(valkey: EmbeddedValkey, sig: int) -> int:
    pid = int(valkey.pid_file.read_text().strip())
    os.kill(pid, sig)
    return pid


async def test_no_stale_l1_hit_after_redis_is_killed_and_restarted(
    reader: DataLayer, writer: DataLayer, valkey: EmbeddedValkey
) -> None:
    await reader.cache.set("shared", "old")
    assert await reader.cache.get("shared") == "old"
    assert reader.cache.stats().l1_hits == 1

    pid = _kill(valkey, signal.SIGKILL)
    await asyncio.to_thread(_wait_gone, pid)
    # The listener's socket closed: L1 is dropped and bypassed before Redis can come back.
    assert await _until(lambda: not reader.cache.stats().l1_serving, 2.0)
    assert reader.cache.stats().l1_entries == 0

    await asyncio.to_thread(valkey.start)
    await writer.cache.set("shared", "new")
    assert await writer.cache.get("shared") == "new"
    # Every read from here on sees the new value: none is served from the old L1.
    for _ in range(50):
        assert await reader.cache.get("shared") == "new"
        await asyncio.sleep(0.002)
    # Once resubscribed, L1 serves again and invalidations reach it.
    assert await _until(lambda: reader.cache.stats().l1_serving, 5.0)
    assert await reader.cache.get("shared") == "new"
    await writer.cache.set("shared", "newer")
    assert await _until_value(reader, "shared", "newer", 1.0)


async def test_l1_entries_written_while_the_listener_is_down_are_not_served_after(
    reader: DataLayer, writer: DataLayer, valkey: EmbeddedValkey
) -> None:
    await asyncio.to_thread(valkey.stop)
    assert await _until(lambda: not reader.cache.stats().l1_serving, 2.0)
    await reader.cache.set("during", "written-while-down")  # Redis is down: degraded
    assert reader.cache.stats().l1_entries == 0

    await asyncio.to_thread(valkey.start)
    await writer.cache.set("during", "written-after")
    for _ in range(50):
        # A miss (the breaker) or the new value; never what L1 took while the listener was away.
        assert await reader.cache.get("during") in (None, "written-after")
        await asyncio.sleep(0.002)
    assert await _until(lambda: reader.cache.stats().l1_serving, 5.0)
    assert await _until_value(reader, "during", "written-after", 1.0)


async def test_a_silent_connection_is_noticed_by_ping(
    reader: DataLayer, valkey: EmbeddedValkey
) -> None:
    await reader.cache.set("k", "v")
    assert reader.cache.stats().l1_serving
    # A stopped process keeps its sockets open but answers nothing, like a lost network.
    pid = _kill(valkey, signal.SIGSTOP)
    try:
        assert await _until(lambda: not reader.cache.stats().l1_serving, 10.0)
        assert reader.cache.stats().l1_entries == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await _until(lambda: reader.cache.stats().l1_serving, 10.0)


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b"[1, 2]",
        b'{"p": 5}',
        b'{"t": "x"}',
        b'{"k": [1, {"a": 2}]}',
        b"\xff\xfe",
    ],
)
async def test_the_listener_survives_any_message(
    reader: DataLayer, writer: DataLayer, junk: bytes
) -> None:
    await reader.cache.set("k", "v1")
    assert reader.cache.stats().l1_entries == 1
    await reader.redis.publish(INVALIDATION_CHANNEL, junk)
    # Whatever the message meant, L1 cannot know what it missed: it starts over.
    assert await _until(lambda: reader.cache.stats().l1_entries == 0, 2.0)
    assert reader.cache.stats().l1_serving
    # The listener is still there: a later invalidation reaches the refilled L1.
    assert await reader.cache.get("k") == "v1"
    assert reader.cache.stats().l1_entries == 1
    await writer.cache.set("k", "v2")
    assert await _until_value(reader, "k", "v2", 1.0)


async def test_tags_of_one_tenant_leave_another_tenants_l1_alone(
    reader: DataLayer, writer: DataLayer
) -> None:
    a, b = reader.tenant("tenant-a"), reader.tenant("tenant-b")
    await a.cache.set("k", "a", tags=["x"])
    await b.cache.set("k", "b", tags=["x"])
    await reader.tenant("tenant-a").cache.invalidate_tags("x")
    hits = reader.cache.stats().l1_hits
    assert await b.cache.get("k") == "b"
    assert reader.cache.stats().l1_hits == hits + 1, "tenant b's entry stayed in L1"
    assert await a.cache.get("k") is None

    # The same across processes: the writer's invalidation names tenant a's tag only.
    await a.cache.set("k2", "a", tags=["y"])
    await b.cache.set("k2", "b", tags=["y"])
    await writer.tenant("tenant-a").cache.invalidate_tags("y")
    assert await _until(lambda: reader.cache.stats().l1_entries == 2, 1.0)  # b's k and k2
    hits = reader.cache.stats().l1_hits
    assert await b.cache.get("k2") == "b"
    assert reader.cache.stats().l1_hits == hits + 1


async def test_patterns_redis_reads_oddly_are_no_error(
    reader: DataLayer, writer: DataLayer
) -> None:
    await reader.cache.set("m", 1)
    await reader.cache.set("zz", 2)
    await reader.cache.set("kept", 3)
    assert await writer.cache.invalidate("[z-a]") == 1  # Redis reads it as [a-z]
    assert await writer.cache.invalidate("[^]?") == 1  # any byte, then one more
    # The other process applied both to its L1, and its listener lives on.
    assert await _until(lambda: reader.cache.stats().l1_entries == 1, 1.0)
    assert reader.cache.stats().l1_serving
    assert await reader.cache.get("kept") == 3
    assert await reader.cache.get("m") is None


@pytest.mark.parametrize("pattern", ["*" * 65, "", 5, None, "x" * 2000])
async def test_bad_patterns_are_refused(reader: DataLayer, pattern: object) -> None:
    with pytest.raises(ValidationError, match="pattern"):
        await reader.cache.invalidate(pattern)  # type: ignore[arg-type]


async def _until_value(dl: DataLayer, key: str, value: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await dl.cache.get(key) == value:
            return True
        await asyncio.sleep(0.005)
    return False


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)


# -- glob semantics, against Redis's own matcher ----------------------------------------------

_ALPHABET = "ab-^]\\[*?z" + string.digits[:2] + "é"
# No empty string: no key is empty, and Redis's SCAN matches one with "*" but not with "**".
_FIELDS = sorted(
    {"a", "b", "ab", "ba", "aab", "a-b", "^", "]", "\\", "[", "*", "?", "z", "é", "aé"}
    | {x + y for x in "ab]z-" for y in "ab^[\\"}
)


@pytest.fixture
async def redis_hash(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    client = aioredis.Redis.from_url(redis_url)
    key = f"glob-oracle-{os.getpid()}"
    await client.delete(key)
    await client.hset(key, mapping={f: 1 for f in _FIELDS})
    yield client, key
    await client.delete(key)
    await client.aclose()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pattern=st.text(alphabet=_ALPHABET, max_size=8))
async def test_glob_matcher_agrees_with_redis(
    redis_hash: tuple[aioredis.Redis, str], pattern: str
) -> None:
    client, key = redis_hash
    try:
        check_pattern(pattern)
    except ValidationError:
        return  # refused before it could reach Redis or another process
    _, found = await client.hscan(key, 0, match=pattern, count=10_000)
    by_redis = {f.decode() if isinstance(f, bytes) else f for f in found}
    matches = glob_matcher(pattern)
    assert {f for f in _FIELDS if matches(f)} == by_redis


async def test_a_fill_never_undoes_an_invalidation_that_overtook_it(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    # A large reply takes several event-loop turns; the other process's invalidation can be
    # applied meanwhile, and the value read before it must then not land in L1.
    big = "x" * 300_000
    reader_config = make_config(database, redis_url, tmp_path / "r", cache={"l1_ttl": 60})
    writer_config = make_config(database, redis_url, tmp_path / "w", cache={"l1": False})
    async with DataLayer(reader_config) as reader, DataLayer(writer_config) as writer:
        for i in range(60):
            await writer.cache.set("k", big + str(i))
            read = asyncio.create_task(reader.cache.get("k"))
            await asyncio.sleep(0)
            await writer.cache.set("k", f"new{i}")
            await read
            assert await _until_value(reader, "k", f"new{i}", 1.0), f"round {i}"
            # Settled: what L1 holds now (if anything) is the new value.
            assert await reader.cache.get("k") == f"new{i}"
            await reader.cache.delete("k")
