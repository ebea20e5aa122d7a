"""Redis key layout, and Redis glob patterns (escaping them, and matching them in Python).

Every key of a tenant shares the hash tag ``{tenant}``, so a tenant's keys live in one Redis
Cluster slot: multi-key commands and Lua scripts (tags, locks) work on a Cluster too.
"""

from __future__ import annotations

import re
from functools import lru_cache

from agency_data.errors import ValidationError

__all__ = ["Keys", "escape_glob", "glob_to_regex"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
MAX_KEY = 1024


def escape_glob(text: str) -> str:
    """``text`` with Redis glob characters escaped, so that it matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@lru_cache(maxsize=1024)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching what Redis's glob ``pattern`` matches (``* ? [abc] [^a] [a-z] \\x``)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                parts = "".join("\\" + c if c in "\\]^" else c for c in body)
                out.append(f"[{'^' if negate else ''}{parts}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is 1-64 letters, digits or ``_ . : -``."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ValidationError(
            f"namespace {namespace!r} must be 1-64 letters, digits or _ . : -", field="namespace"
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
