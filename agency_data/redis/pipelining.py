"""Auto-pipelining: concurrent callers' Redis commands share round trips, as in ioredis.

A process with many agents sends many small commands at once. One at a time, an asyncio client
manages some 8-14k round trips a second; gathered per event-loop turn, GETs become one MGET and
other commands one pipeline, and the same client does ten to twenty times that. A command sent
while nothing else is in flight goes out alone and at once (see :mod:`agency_data.batching`).

On a Cluster, gathered GETs are split by hash slot (``mget_nonatomic``) and a gathered pipeline
is sent node by node, so keys need not share a slot. A pipeline is not a transaction: each
command stands alone, and a command that fails (a wrong type, a script error) fails only its
own caller. A lost connection fails every caller of that round trip, as it would have failed
each of them alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from agency_data.batching import Coalescer
from agency_data.redis.client import RedisClient

__all__ = ["AutoPipeline", "Command"]

Command = tuple[Any, ...]
"""A Redis command as its words: ``("SET", key, value, "PX", 1000)``."""


class AutoPipeline:
    """GETs and commands on ``client``, gathered with those of concurrent callers."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        """The client underneath, for commands that do not join the shared round trips."""
        # The client's own get (bytes or None: it is made without decode_responses) goes
        # straight in: a lone GET pays for no frame of ours.
        get_one = cast(Callable[[str], Awaitable[bytes | None]], client.get)
        self._gets: Coalescer[str, bytes | None] = Coalescer(get_one, self._get_many)
        self._commands: Coalescer[tuple[Command, ...], list[Any]] = Coalescer(
            self._run_one, self._run_many
        )

    def get(self, key: str) -> Awaitable[bytes | None]:
        """``GET key``; concurrent GETs go out as one MGET."""
        return self._gets.submit(key)

    async def execute(self, *args: Any) -> Any:
        """Run the command ``args`` (e.g. ``"SET", key, value, "PX", 1000``) and return its reply,
        parsed as redis-py parses it; concurrent commands share one pipeline."""
        (reply,) = await self._commands.submit((args,))
        return reply

    async def execute_all(self, *commands: Command) -> list[Any]:
        """Run ``commands`` in order, in one round trip (with concurrent callers' commands), and
        return their replies; the first that failed is raised, after all of them ran."""
        return await self._commands.submit(commands)

    async def aclose(self) -> None:
        """Wait for the gathered round trips still running."""
        await self._gets.aclose()
        await self._commands.aclose()

    async def _get_many(self, keys: list[str]) -> Sequence[bytes | None]:
        if isinstance(self.client, RedisCluster):
            return cast(list[bytes | None], await self.client.mget_nonatomic(keys))
        return cast(list[bytes | None], await self.client.mget(keys))

    async def _run_one(self, commands: tuple[Command, ...]) -> list[Any]:
        if len(commands) == 1:
            return [await self.client.execute_command(*commands[0])]
        (replies,) = await self._run_many([commands])
        if isinstance(replies, Exception):
            raise replies
        return replies

    async def _run_many(self, items: list[tuple[Command, ...]]) -> list[list[Any] | Exception]:
        pipe = self.client.pipeline(transaction=False)
        for commands in items:
            for command in commands:
                pipe.execute_command(*command)
        # Errors come back in place of their command's reply, for its caller alone.
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        answers: list[list[Any] | Exception] = []
        at = 0
        for commands in items:
            mine = replies[at : at + len(commands)]
            at += len(commands)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            answers.append(mine if failed is None else failed)
        return answers
