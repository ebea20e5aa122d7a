"""Messaging: Redis pub/sub (fast, at-most-once) and Redis Streams (durable, acknowledged).

**Pub/sub is at-most-once.** A message reaches the subscribers connected at that moment and no
one else: a subscriber that is down, reconnecting or slow to read misses it, and Redis keeps no
copy. Subscriptions here survive a Redis restart (they reconnect and resubscribe by
themselves), but what was published during the gap is gone. Use it for notifications whose
loss is harmless (status pings, cache invalidations).

**Streams are at-least-once.** ``dl.streams.publish`` appends to a stream that Redis keeps;
consumers in a group each get different messages and must ``ack`` them. A message that was
delivered but not acknowledged (its consumer crashed) is delivered again after ``claim_after``
seconds, so handlers must tolerate the occasional repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import orjson
import redis.exceptions as rx

from agency_data.errors import ValidationError
from agency_data.inputs import as_items, brief, check_bool, check_int, check_seconds
from agency_data.models import Message, StreamMessage
from agency_data.observability import Telemetry, observed
from agency_data.redis.client import RedisClient, cancelling
from agency_data.redis.errors import translate_errors
from agency_data.redis.keys import Keys, check_key
from agency_data.redis.subscription import Lost, Resubscribed, subscription

__all__ = ["Lost", "PubSub", "Resubscribed", "Streams"]

_MAX_MESSAGE = 1 << 20
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# A week: a message idle longer than that at a consumer is never going to be claimed back.
MAX_CLAIM = 7 * 24 * 3600.0


def _encode(message: Any) -> bytes:
    try:
        data = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise ValidationError(f"messages must be JSON-shaped ({exc})", field="message") from None
    if len(data) > _MAX_MESSAGE:
        raise ValidationError(
            f"the message is {len(data)} bytes; the limit is {_MAX_MESSAGE}", field="message"
        )
    return data


class PubSub:
    """Publish and subscribe on one tenant's channels."""

    def __init__(
        self, client: RedisClient, keys: Keys, *, telemetry: Telemetry | None = None
    ) -> None:
        self._telemetry = telemetry if telemetry is not None else Telemetry.off()
        self._redis = client
        self._keys = keys

    @observed("pubsub.publish", system="redis")
    async def publish(self, channel: str, message: Any) -> int:
        """Send ``message`` (JSON-shaped) to ``channel``; return how many subscribers got it."""
        with translate_errors("publishing"):
            return int(
                await self._redis.publish(
                    self._keys.channel(check_key(channel, "channel")), _encode(message)
                )
            )

    async def subscribe(
        self, *channels: str, patterns: Sequence[str] = (), reconnect_delay: float = 0.1
    ) -> AsyncGenerator[Message, None]:
        """Messages on ``channels`` (and channels matching glob ``patterns``) as they arrive.

        Iterate with ``async for``; stop by breaking out (or use ``contextlib.aclosing``).
        If Redis goes away, the subscription waits and resubscribes when it is back.
        """
        events = self.listen(*channels, patterns=patterns, reconnect_delay=reconnect_delay)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, Message):
                    yield event

    async def listen(
        self, *channels: str, patterns: Sequence[str] = (), reconnect_delay: float = 0.1
    ) -> AsyncGenerator[Message | Resubscribed | Lost, None]:
        """What :meth:`subscribe` yields, and also when the subscription is in place
        (:class:`Resubscribed`, ``first`` False after a reconnect) and when it was lost
        (:class:`Lost`): messages published between the two were missed. A caller that must
        not publish before its subscriber listens (a relay, an HTTP stream) waits for the
        first :class:`Resubscribed`."""
        check_seconds(reconnect_delay, "reconnect_delay", low=0.001, high=60)
        names = [self._keys.channel(check_key(c, "channel")) for c in channels]
        globs = [
            self._keys.channel(check_key(p, "pattern")) for p in as_items(patterns, "patterns")
        ]
        if not names and not globs:
            raise ValidationError("subscribe to at least one channel or pattern", field="channels")
        prefix = len(self._keys.channel(""))
        events = subscription(self._redis, names, globs, reconnect_delay=reconnect_delay)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                if isinstance(event, Resubscribed | Lost):
                    yield event
                    continue
                pattern = event.get("pattern")
                yield Message(
                    channel=event["channel"].decode()[prefix:],
                    data=orjson.loads(event["data"]),
                    pattern=pattern.decode()[prefix:] if pattern else None,
                )


class Streams:
    """Durable messaging on one tenant's Redis Streams, with consumer groups."""

    def __init__(
        self, client: RedisClient, keys: Keys, *, telemetry: Telemetry | None = None
    ) -> None:
        self._telemetry = telemetry if telemetry is not None else Telemetry.off()
        self._redis = client
        self._keys = keys

    @observed("streams.publish", system="redis")
    async def publish(self, stream: str, message: Any, *, max_length: int | None = 100_000) -> str:
        """Append ``message``; return its id. The stream is trimmed near ``max_length`` entries."""
        key = self._keys.stream(check_key(stream, "stream"))
        if max_length is not None:
            check_int(max_length, "max_length", 1, 1 << 40)
        with translate_errors("appending to a stream"):
            ident = await self._redis.xadd(
                key, {"d": _encode(message)}, maxlen=max_length, approximate=True
            )
        return ident.decode() if isinstance(ident, bytes) else str(ident)

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block: float = 1.0,
        claim_after: float = 30.0,
        dedupe: bool = False,
        dedupe_window: float = 3600.0,
    ) -> AsyncGenerator[StreamMessage, None]:
        """Messages for ``consumer`` of ``group``, redelivering ones others left unacknowledged.

        The group is created (from the stream's start) if needed. Acknowledge each message with
        :meth:`ack` once handled. With ``dedupe``, a second copy of an outbox message (the
        relay sends at least once) that reaches the group within ``dedupe_window`` seconds of
        the first is acknowledged and skipped; the same entry redelivered is not a copy.
        """
        check_bool(dedupe, "dedupe")
        window_ms = int(check_seconds(dedupe_window, "dedupe_window", low=1, high=MAX_CLAIM) * 1000)
        key = self._keys.stream(check_key(stream, "stream"))
        check_key(group, "group")
        check_key(consumer, "consumer")
        check_int(count, "count", 1, 10_000)
        block_ms = int(check_seconds(block, "block", low=0.001, high=3600) * 1000)
        idle_ms = int(check_seconds(claim_after, "claim_after", low=0.001, high=MAX_CLAIM) * 1000)
        await self._ensure_group(key, group)
        while True:
            with translate_errors("reading a stream"):
                # First whatever idled too long at other consumers, then new messages.
                reclaimed: Any = await self._redis.xautoclaim(
                    key, group, consumer, min_idle_time=idle_ms, count=count
                )
                claimed = reclaimed[1]
                entries: Any = (
                    [(key.encode(), claimed)]
                    if claimed
                    else await self._redis.xreadgroup(
                        group, consumer, {key: ">"}, count=count, block=block_ms
                    )
                )
                attempts = await self._attempts(key, group, entries)
            if cancelling():
                # redis-py can swallow a cancellation that lands mid-read; what was read stays
                # pending for this consumer and is claimed again after claim_after.
                raise asyncio.CancelledError
            for _, items in entries or []:
                copies = (
                    await self._copies(stream, key, group, items, window_ms) if dedupe else set()
                )
                for ident, fields in items:
                    if not fields:  # deleted meanwhile
                        continue
                    text = ident.decode() if isinstance(ident, bytes) else str(ident)
                    if text in copies:
                        continue
                    origin = fields.get(b"o")
                    yield StreamMessage(
                        id=text,
                        stream=stream,
                        data=orjson.loads(fields[b"d"]),
                        attempts=attempts.get(text, 1),
                        outbox_id=origin.decode() if origin is not None else None,
                    )

    async def _copies(
        self, stream: str, key: str, group: str, items: Any, window_ms: int
    ) -> set[str]:
        # Each outbox id's first entry claims it (SET NX, for the window); a later entry of
        # the same id is a copy, acknowledged here and not handed out.
        marked = [(ident, fields[b"o"]) for ident, fields in items if fields and b"o" in fields]
        if not marked:
            return set()
        with translate_errors("deduplicating stream messages"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for ident, origin in marked:
                    # Keys of their own (not stream names a tenant could publish to).
                    seen = self._keys.dedupe(f"{stream}:{group}:{origin.decode()}")
                    pipe.set(seen, ident, nx=True, px=window_ms, get=True)
                firsts = await pipe.execute()
            copies = [
                ident
                for (ident, _), first in zip(marked, firsts, strict=True)
                if first is not None and first != ident
            ]
            if copies:
                await self._redis.xack(key, group, *copies)
        return {c.decode() if isinstance(c, bytes) else str(c) for c in copies}

    @observed("streams.ack", system="redis")
    async def ack(self, stream: str, group: str, *message_ids: str) -> int:
        """Acknowledge handled messages; return how many were pending."""
        key = self._keys.stream(check_key(stream, "stream"))
        check_key(group, "group")
        for ident in message_ids:
            if not isinstance(ident, str) or not _STREAM_ID.fullmatch(ident):
                raise ValidationError(
                    f"message_ids: {brief(ident)} is not a stream id like '1700000000000-0'",
                    field="message_ids",
                )
        if not message_ids:
            return 0
        with translate_errors("acknowledging"):
            return int(await self._redis.xack(key, group, *message_ids))

    @observed("streams.pending", system="redis")
    async def pending(self, stream: str, group: str) -> int:
        """How many delivered messages the group has not acknowledged."""
        key = self._keys.stream(check_key(stream, "stream"))
        check_key(group, "group")
        with translate_errors("reading pending messages"):
            summary = await self._redis.xpending(key, group)
        return int(summary["pending"])

    async def _ensure_group(self, key: str, group: str) -> None:
        with translate_errors("creating a consumer group"):
            try:
                await self._redis.xgroup_create(key, group, id="0", mkstream=True)
            except rx.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # the group exists already: fine
                    raise

    async def _attempts(self, key: str, group: str, entries: Any) -> dict[str, int]:
        ids = [i for _, items in entries or [] for i, _ in items]
        if not ids:
            return {}
        details = await self._redis.xpending_range(
            key, group, min=ids[0], max=ids[-1], count=len(ids) + 100
        )
        return {
            (
                d["message_id"].decode()
                if isinstance(d["message_id"], bytes)
                else str(d["message_id"])
            ): int(d["times_delivered"])
            for d in details
        }
