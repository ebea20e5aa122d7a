"""A pub/sub subscription that outlives Redis restarts: the one loop behind every subscriber.

It subscribes, yields messages, and when the connection drops it says so at once (a
:class:`Lost` marker), waits (backing off) and subscribes again, yielding a
:class:`Resubscribed` marker each time the subscription is in place, so that callers can
account for what they may have missed meanwhile.

redis-py would quietly reconnect and resubscribe a pub/sub connection inside a read; messages
published in that gap are lost without a word. Here the subscription's connection never
retries by itself, so every loss is reported. A connection that goes silent without closing
(a network partition) is caught by a PING after ``ping_every`` seconds of quiet that gets no
reply within another ``ping_every``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agency_data.redis.client import RedisClient, cancelling, pubsub_client
from agency_data.retry import Backoff

__all__ = ["CONNECTION_ERRORS", "Lost", "Resubscribed", "subscription"]

_log = logging.getLogger("agency_data.redis")

# Errors that mean "Redis is not there right now", as opposed to a bad command.
CONNECTION_ERRORS = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.BusyLoadingError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class Resubscribed:
    """The subscription is in place; ``first`` is False after a reconnect (messages were lost)."""

    first: bool


@dataclass(frozen=True)
class Lost:
    """The subscription's connection just failed: from now until the next
    :class:`Resubscribed`, published messages are missed."""

    error: str


async def subscription(
    client: RedisClient,
    channels: Sequence[str] = (),
    patterns: Sequence[str] = (),
    *,
    reconnect_delay: float = 0.1,
    ping_every: float = 1.0,
    on_attempt: Callable[[], None] | None = None,
) -> AsyncGenerator[Resubscribed | Lost | dict[str, Any], None]:
    """Markers and raw ``message``/``pmessage`` dicts, resubscribing after connection loss.

    ``on_attempt`` is called after every attempt to subscribe, whether it worked or not.
    Errors other than connection errors propagate.
    """
    backoff = Backoff(first=reconnect_delay, most=max(reconnect_delay, 2.0))
    first = True
    while True:
        subscribed = False
        try:
            async with pubsub_client(client) as source:
                pubsub = source.pubsub()
                try:
                    if channels:
                        await pubsub.subscribe(*channels)
                    if patterns:
                        await pubsub.psubscribe(*patterns)
                    if on_attempt is not None:
                        on_attempt()
                    subscribed = True
                    yield Resubscribed(first=first)
                    first = False
                    backoff.reset()
                    try:
                        # aclosing: the connection gets its retries back before it is released.
                        async with contextlib.aclosing(_messages(pubsub, ping_every)) as messages:
                            async for raw in messages:
                                yield raw
                    except CONNECTION_ERRORS as exc:
                        if cancelling():
                            raise asyncio.CancelledError from exc
                        # Said before the cleanup below, which may itself wait on the socket.
                        _log.warning("subscription lost Redis (%s); resubscribing", exc)
                        subscribed = False
                        yield Lost(error=str(exc))
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        except CONNECTION_ERRORS as exc:
            # Subscribing failed (a loss once subscribed was reported above).
            if on_attempt is not None and not subscribed:
                on_attempt()
            if cancelling():
                raise asyncio.CancelledError from exc
        await backoff.sleep()


async def _messages(pubsub: Any, ping_every: float) -> AsyncGenerator[dict[str, Any], None]:
    connection = pubsub.connection
    saved_retry = connection.retry
    # A failed read must reach us, not be papered over by a silent reconnect.
    connection.retry = Retry(NoBackoff(), 0)
    heard = time.monotonic()
    pinged: float | None = None
    try:
        while True:
            raw = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=min(1.0, ping_every)
            )
            if cancelling():
                # redis-py may swallow a cancellation that lands mid-read.
                raise asyncio.CancelledError
            now = time.monotonic()
            if raw is not None:
                heard, pinged = now, None
                if raw["type"] in ("message", "pmessage"):
                    yield raw
                continue
            if pinged is not None and now - pinged > ping_every:
                raise rx.ConnectionError(f"Redis did not answer a PING within {ping_every:g} s")
            if pinged is None and now - heard >= ping_every:
                await pubsub.ping()
                pinged = now
    finally:
        connection.retry = saved_retry
