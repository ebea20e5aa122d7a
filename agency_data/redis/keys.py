"""Redis key layout, and Redis glob patterns (checking, escaping, and matching them in Python).

Every key of a tenant shares the hash tag ``{tenant}``, so a tenant's keys live in one Redis
Cluster slot: multi-key commands and Lua scripts (tags, locks) work on a Cluster too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from agency_data.errors import ValidationError
from agency_data.inputs import brief

__all__ = ["Keys", "check_key", "check_namespace", "check_pattern", "escape_glob", "glob_matcher"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
MAX_KEY = 1024


def escape_glob(text: str) -> str:
    """``text`` with Redis glob characters escaped, so that it matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


_STAR = "*"
_Class = tuple[bool, frozenset[int], tuple[tuple[int, int], ...]]
_Token = tuple[str, Any]
MAX_PATTERN_STARS = 64


@lru_cache(maxsize=1024)
def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether Redis's glob ``pattern`` matches a key, as Redis decides.

    Redis matches bytes, so the key is matched as UTF-8: ``?`` stands for one byte. The
    pattern is read exactly as Redis's ``stringmatchlen`` reads it (``[z-a]`` is the range
    a-z, ``[^]`` any byte, an unclosed ``[`` runs to the end, a trailing ``\\`` is literal),
    so no pattern is an error. Matching never backtracks further than the last ``*``: time
    grows with key length times pattern length, never exponentially.
    """
    tokens = _tokens(pattern.encode())
    body = tokens[:-1]
    if tokens and tokens[-1] == (_STAR, None) and all(kind == "byte" for kind, _ in body):
        prefix = bytes(value for _, value in body)
        return lambda key: key.encode().startswith(prefix)
    return lambda key: _match(tokens, key.encode())


def check_pattern(pattern: object, field: str = "pattern", *, max_length: int = MAX_KEY) -> str:
    """``pattern`` if it is a key-sized glob with at most :data:`MAX_PATTERN_STARS` stars.

    Redis gives up on patterns nesting over a thousand stars (they match nothing there); a
    bound far below that keeps every process's matching of the pattern cheap.
    """
    if not isinstance(pattern, str) or not pattern or len(pattern) > max_length:
        raise ValidationError(
            f"{field} must be a non-empty string of at most {max_length} characters", field=field
        )
    text = pattern
    if text.count("*") > MAX_PATTERN_STARS:
        raise ValidationError(
            f"{field} has {text.count('*')} '*' wildcards; at most {MAX_PATTERN_STARS} are allowed",
            field=field,
        )
    for kind, value in _tokens(text.encode()):
        # Redis compares range ends as C chars, signed on some machines and not on others.
        if kind == "class" and any(high >= 0x80 for _, high in value[2]):
            raise ValidationError(
                f"{field} has a [a-z] range with a non-ASCII end, which Redis servers read "
                "differently; list such characters one by one instead",
                field=field,
            )
    return text


def _tokens(pattern: bytes) -> tuple[_Token, ...]:
    out: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == 0x2A:  # *
            if not out or out[-1] != (_STAR, None):
                out.append((_STAR, None))
        elif char == 0x3F:  # ?
            out.append(("any", None))
        elif char == 0x5B:  # [
            i, token = _char_class(pattern, i + 1)
            out.append(token)
        elif char == 0x5C and i + 1 < n:  # \x: x itself
            i += 1
            out.append(("byte", pattern[i]))
        else:
            out.append(("byte", char))
        i += 1
    return tuple(out)


def _char_class(pattern: bytes, i: int) -> tuple[int, _Token]:
    """The class starting after ``[`` at ``i``: where it ends, and (negated, singles, ranges)."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # ^
    if negate:
        i += 1
    singles: set[int] = set()
    ranges: list[tuple[int, int]] = []
    while True:
        if i < n and pattern[i] == 0x5C and n - i >= 2:
            i += 1
            singles.add(pattern[i])
        elif i < n and pattern[i] == 0x5D:  # ]
            break
        elif i >= n:
            i -= 1  # unclosed: the class takes the rest of the pattern
            break
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # a-z (Redis swaps z-a)
            low, high = sorted((pattern[i], pattern[i + 2]))
            ranges.append((low, high))
            i += 2
        else:
            singles.add(pattern[i])
        i += 1
    return i, ("class", (negate, frozenset(singles), tuple(ranges)))


def _fits(token: _Token, byte: int) -> bool:
    kind, value = token
    if kind == "byte":
        return bool(value == byte)
    if kind == "any":
        return True
    negate, singles, ranges = cast(_Class, value)
    hit = byte in singles or any(low <= byte <= high for low, high in ranges)
    return hit != negate


def _match(tokens: tuple[_Token, ...], key: bytes) -> bool:
    # Every token but * takes one byte, so on a mismatch only the last * need take one more.
    p = i = 0
    star = -1
    resume = 0
    count = len(tokens)
    while i < len(key):
        if p < count and tokens[p][0] == _STAR:
            star, resume = p, i
            p += 1
        elif p < count and _fits(tokens[p], key[i]):
            p += 1
            i += 1
        elif star >= 0:
            resume += 1
            p, i = star + 1, resume
        else:
            return False
    while p < count and tokens[p][0] == _STAR:
        p += 1
    return p == count


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is 1-64 letters, digits or ``_ . : -``."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ValidationError(
            f"namespace {brief(namespace)} must be 1-64 letters, digits or _ . : -",
            field="namespace",
        )
    return namespace


def check_key(key: str, field: str = "key") -> str:
    """``key`` if it is a non-empty string of at most 1024 characters."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValidationError(
            f"{field} must be a non-empty string of at most {MAX_KEY} characters", field=field
        )
    return key


class Keys:
    """The keys of one tenant."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = f"ad:{{{tenant}}}:"

    def cache(self, namespace: str, key: str) -> str:
        """A cache entry."""
        return f"{self.prefix}c:{namespace}:{key}"

    def cache_prefix(self, namespace: str) -> str:
        """What every cache key of ``namespace`` starts with."""
        return f"{self.prefix}c:{namespace}:"

    def tag(self, tag: str) -> str:
        """The set of cache keys carrying ``tag``."""
        return f"{self.prefix}tag:{tag}"

    def fill_lock(self, namespace: str, key: str) -> str:
        """The short lock that lets one process fill a missing entry."""
        return f"{self.prefix}fill:{namespace}:{key}"

    def lock(self, name: str) -> str:
        """A distributed lock."""
        return f"{self.prefix}lock:{name}"

    def lock_revoked(self, name: str, token: str) -> str:
        """Marks a lock token given back after a cancelled acquire: it is never granted."""
        return f"{self.prefix}lock-revoked:{name}:{token}"

    def fence(self, name: str) -> str:
        """The fencing counter of a lock."""
        return f"{self.prefix}fence:{name}"

    def session(self, session_id: str) -> str:
        """A session."""
        return f"{self.prefix}session:{session_id}"

    def agent_sessions(self, agent_id: str) -> str:
        """The ids of an agent's sessions."""
        return f"{self.prefix}agent-sessions:{agent_id}"

    def channel(self, channel: str) -> str:
        """A pub/sub channel (or pattern: the prefix has no glob characters)."""
        return f"{self.prefix}ch:{channel}"

    def stream(self, name: str) -> str:
        """A durable stream."""
        return f"{self.prefix}stream:{name}"

    def rate_limit(self, key_id: str) -> str:
        """When an API key's next request conforms to its rate limit (the service's GCRA)."""
        return f"{self.prefix}rate:{key_id}"

    def dedupe(self, name: str) -> str:
        """A consumer group's record of an outbox message it was handed (streams' dedupe)."""
        return f"{self.prefix}dedupe:{name}"
