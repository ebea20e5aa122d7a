"""Lua scripts on Redis: registered by name, run by EVALSHA, reloaded when the server forgot them.

redis-py's ``Script`` objects send EVALSHA and, on NOSCRIPT (a restarted or flushed server),
load the script and retry; this registry adds names, argument checks and our errors. The
layer's own atomic operations (tag invalidation, locks) are registered here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agency_data.errors import NotFound, ValidationError
from agency_data.redis.client import RedisClient
from agency_data.redis.errors import translate_errors
from agency_data.redis.pipelining import AutoPipeline

__all__ = ["ScriptRegistry"]


class ScriptRegistry:
    """Named Lua scripts on one Redis client.

    With ``pipeline``, concurrent runs share round trips (EVALSHA in a gathered pipeline); a
    run the server answers NOSCRIPT for is sent again alone, loading the script first.
    """

    def __init__(self, client: RedisClient, pipeline: AutoPipeline | None = None) -> None:
        self._client = client
        self._pipeline = pipeline
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
        keys, args = list(keys), list(args)
        with translate_errors(f"running Lua script {name!r}"):
            if self._pipeline is not None:
                try:
                    return await self._pipeline.execute(
                        "EVALSHA", script.sha, len(keys), *keys, *args
                    )
                except NoScriptError:
                    pass  # a restarted or flushed server: the script object loads it again
            return await script(keys=keys, args=args)

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            raise NotFound(f"no Lua script is registered as {name!r}", entity="script", key=name)
        return script
