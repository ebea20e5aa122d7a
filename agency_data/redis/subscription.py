"""A pub/sub subscription that outlives Redis restarts: the one loop behind every subscriber.

It subscribes, yields messages, and when the connection drops it waits (backing off) and
subscribes again, yielding a :class:`Resubscribed` marker each time the subscription is in
place, so that callers can account for what they may have missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rx

from agency_data.redis.client import RedisClient, cancelling, pubsub_client
from agency_data.retry import Backoff

__all__ = ["CONNECTION_ERRORS", "Resubscribed", "subscription"]

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


async def subscription(
    client: RedisClient,
    channels: Sequence[str] = (),
    patterns: Sequence[str] = (),
    *,
    reconnect_delay: float = 0.1,
    on_attempt: Callable[[], None] | None = None,
) -> AsyncGenerator[Resubscribed | dict[str, Any], None]:
    """Markers and raw ``message``/``pmessage`` dicts, resubscribing after connection loss.

    ``on_attempt`` is called after every attempt to subscribe, whether it worked or not.
    Errors other than connection errors propagate.
    """
    backoff = Backoff(first=reconnect_delay, most=max(reconnect_delay, 2.0))
    first = True
    while True:
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
                    yield Resubscribed(first=first)
                    first = False
                    backoff.reset()
                    while True:
                        raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if cancelling():
                            # redis-py may swallow a cancellation that lands mid-read.
                            raise asyncio.CancelledError
                        if raw is not None and raw["type"] in ("message", "pmessage"):
                            yield raw
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
        except CONNECTION_ERRORS as exc:
            if on_attempt is not None:
                on_attempt()
            if cancelling():
                raise asyncio.CancelledError from exc
            _log.warning("subscription lost Redis (%s); resubscribing", exc)
            await backoff.sleep()
