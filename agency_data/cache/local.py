"""The in-process cache (L1): bounded by entries and bytes, with lru, lfu or random eviction.

TTLs run on the monotonic clock, so a wall-clock jump never keeps an entry alive. LFU and
random eviction sample a few entries (as Redis does) rather than keep a global order, so every
operation stays O(1). Values are kept decoded: a hit costs a dict lookup, not a JSON parse;
callers must not mutate what they get back.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LocalCache"]

_SAMPLE = 8
_MISSING: Any = object()


@dataclass
class _Entry:
    value: Any
    expires: float
    size: int
    tags: frozenset[str]
    hits: int = 0


class LocalCache:
    """A bounded in-process key-value cache with per-entry TTLs."""

    def __init__(
        self, *, max_entries: int, max_bytes: int, policy: Literal["lru", "lfu", "random"]
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.policy = policy
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The live value of ``key``, or ``default`` (a private sentinel unless given)."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry.expires <= time.monotonic():
            self._remove(key)
            self.expirations += 1
            return default
        if self.policy == "lru":
            self._entries.move_to_end(key)
        else:
            entry.hits += 1
        return entry.value

    def set(self, key: str, value: Any, *, ttl: float, size: int, tags: Iterable[str] = ()) -> None:
        """Keep ``value`` for ``ttl`` seconds; ``size`` (its encoded bytes) counts to the bound."""
        if self.max_entries <= 0 or size > self.max_bytes or ttl <= 0:
            self.discard(key)
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(value, time.monotonic() + ttl, size, frozenset(tags))
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._evict(protect=key)

    def discard(self, key: str) -> bool:
        """Drop ``key``; True if it was there."""
        if key in self._entries:
            self._remove(key)
            return True
        return False

    def discard_where(self, match: Any) -> int:
        """Drop every key for which ``match(key, tags)`` is true; return how many."""
        doomed = [k for k, e in self._entries.items() if match(k, e.tags)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self.bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size

    def _evict(self, protect: str) -> None:
        if len(self._entries) <= 1:
            # Only the entry just written is left; it fits by the checks in set().
            return
        if self.policy == "lru":
            victim = next(k for k in self._entries if k != protect)
        else:
            keys = list(self._entries) if len(self._entries) <= _SAMPLE * 4 else None
            population = keys if keys is not None else self._sample()
            candidates = [k for k in population if k != protect][: _SAMPLE * 4]
            if self.policy == "random":
                victim = random.choice(candidates)
            else:
                victim = min(candidates, key=lambda k: self._entries[k].hits)
        self._remove(victim)
        self.evictions += 1

    def _sample(self) -> list[str]:
        # OrderedDict has no O(1) random access; the first entries are the oldest inserted,
        # which is a fair sample for random eviction and gives LFU old, cold candidates.
        keys: list[str] = []
        for key in self._entries:
            keys.append(key)
            if len(keys) >= _SAMPLE:
                break
        return keys
