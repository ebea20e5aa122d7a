"""The in-process L1: bounds by entries and bytes, eviction policies, monotonic TTLs."""

from __future__ import annotations

import time

import pytest

from agency_data.cache.local import LocalCache


def test_lru_evicts_the_least_recently_used() -> None:
    cache = LocalCache(max_entries=3, max_bytes=1_000, policy="lru")
    for key in "abc":
        cache.set(key, key, ttl=60, size=1)
    cache.get("a")
    cache.set("d", "d", ttl=60, size=1)
    assert cache.get("b", None) is None
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]
    assert cache.evictions == 1


def test_lfu_keeps_the_frequently_used() -> None:
    cache = LocalCache(max_entries=3, max_bytes=1_000, policy="lfu")
    for key in "abc":
        cache.set(key, key, ttl=60, size=1)
    for _ in range(5):
        cache.get("a")
        cache.get("c")
    cache.set("d", "d", ttl=60, size=1)
    assert cache.get("b", None) is None
    assert cache.get("a") == "a"
    assert cache.get("c") == "c"


@pytest.mark.parametrize("policy", ["lru", "lfu", "random"])
def test_bounds_hold_under_any_policy(policy: str) -> None:
    cache = LocalCache(max_entries=100, max_bytes=500, policy=policy)  # type: ignore[arg-type]
    for i in range(1_000):
        cache.set(f"k{i}", i, ttl=60, size=7)
        assert len(cache) <= 100
        assert cache.bytes <= 500
    assert cache.get("k999") == 999, "the newest entry is never the one evicted"
    cache.set("huge", "x", ttl=60, size=501)
    assert cache.get("huge", None) is None, "an entry bigger than the whole cache is not kept"


def test_ttl_runs_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = LocalCache(max_entries=10, max_bytes=100, policy="lru")
    cache.set("k", 1, ttl=0.05, size=1)
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a wall-clock jump changes nothing
    assert cache.get("k") == 1
    time.sleep(0.06)
    assert cache.get("k", None) is None
    assert cache.expirations == 1
    assert cache.bytes == 0


def test_discard_where_and_clear() -> None:
    cache = LocalCache(max_entries=10, max_bytes=100, policy="lru")
    cache.set("a", 1, ttl=60, size=1, tags=["x"])
    cache.set("b", 2, ttl=60, size=1, tags=["y"])
    assert cache.discard_where(lambda _key, tags: "x" in tags) == 1
    assert cache.get("a", None) is None
    cache.clear()
    assert len(cache) == 0
    assert cache.bytes == 0
