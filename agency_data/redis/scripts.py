"""Lua scripts on Redis: registered by name, run by EVALSHA, reloaded when the server forgot them.

redis-py's ``Script`` objects send EVALSHA and, on NOSCRIPT (a restarted or flushed server),
load the script and retry; this registry adds names, argument checks and our errors. The
layer's own atomic operations (tag invalidation, locks) are registered here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript

from agency_data.errors import NotFound, ValidationError
from agency_data.redis.client import RedisClient
from agency_data.redis.errors import translate_errors

__all__ = ["ScriptRegistry"]


class ScriptRegistry:
    """Named Lua scripts on one Redis client."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._scripts: dict[str, AsyncScript] = {}

    def register(self, name: str, source: str) -> None:
        """Register ``source`` as ``name`` (replacing any earlier script of that name)."""
        if not isinstance(name, str) or not name:
            raise ValidationError("a script needs a name", field="name")
        if not isinstance(source, str) or not source.strip():
            raise ValidationError("a script needs Lua source", field="source")
        self._scripts[name] = self._client.register_script(source)

    @property
    def names(self) -> list[str]:
        """The registered scripts' names."""
        return sorted(self._scripts)

    def sha(self, name: str) -> str:
        """The SHA1 digest Redis knows the script by."""
        return str(self._script(name).sha)

    async def run(self, name: str, *, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        """Run script ``name`` with ``keys`` (KEYS) and ``args`` (ARGV); return its result."""
        script = self._script(name)
        with translate_errors(f"running Lua script {name!r}"):
            return await script(keys=list(keys), args=list(args))

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise NotFound(f"no Lua script is registered as {name!r}", entity="script", key=name)
        return script
