"""Subscribing to store events: ``async for e in dl.events.subscribe("task.completed", type="X")``.

The events are outbox messages written by triggers in the changes' own transactions (migration
0017, switched on per store by the ``events`` config) and relayed to the tenant's streams
``events:<event>``. So an event exists if and only if its change committed, and arrives at
least once, in the order the relay sends the outbox (see :mod:`agency_data.outbox`).

Without a ``group``, a subscription is a live tail: the events relayed after it starts, read
with XREAD (nothing acknowledged, nothing kept for it while it is not running). With one, it
is a durable consumer group (:meth:`Streams.consume`): events relayed while no member runs
wait for it, each goes to one member, and it is acknowledged when the caller asks for the
next one, so that an event whose handling was cut short is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from datetime import datetime
from typing import Any

import orjson
import redis.exceptions as rx

from agency_data.coord.pubsub import Streams
from agency_data.errors import ValidationError
from agency_data.events.names import Match, check_match, expand, matches, stream_of
from agency_data.inputs import check_bool
from agency_data.models import Event
from agency_data.redis.client import RedisClient, cancelling
from agency_data.redis.errors import translate_errors
from agency_data.redis.keys import Keys, check_key

__all__ = ["Events"]

_log = logging.getLogger("agency_data.events")

# A live tail remembers this many outbox ids to drop the copies a relay sent twice (they
# follow the first within one relay round, so a short memory is enough).
_RECENT = 10_000
_BATCH = 100


class Events:
    """One tenant's store events (``events`` config): subscribe to them as they are relayed."""

    def __init__(
        self, client: RedisClient, keys: Keys, streams: Streams, *, block: float = 1.0
    ) -> None:
        self._redis = client
        self._keys = keys
        self._streams = streams
        # How long one read waits for events: below the client's socket timeout.
        self._block = block

    async def subscribe(
        self,
        event: str,
        *,
        group: str | None = None,
        consumer: str | None = None,
        dedupe: bool = True,
        **match: Any,
    ) -> AsyncGenerator[Event, None]:
        """The events named ``event`` whose fields equal ``match``, as they are relayed.

        ``event``: ``task.completed``, ``agent.inactive``, ``embedding.stored``... or all of
        a store's, ``task.*`` (live tails only). ``match``: fields to compare, e.g.
        ``type="report"`` (see :class:`~agency_data.models.Event`). Without ``group``: the
        events relayed from now on, while the loop runs. With ``group``: a durable consumer
        group that starts at the events relayed after it is made and resumes where it left
        off; ``consumer`` names this member (default: host and process). Each event is
        acknowledged when the next one is asked for: break out of the loop and the last one
        comes again, to the group, after 30 s. ``dedupe``: skip a second copy of an event
        (the relay sends at least once).
        """
        names = expand(event)
        wanted = check_match(names, match)
        check_bool(dedupe, "dedupe")
        if group is None:
            if consumer is not None:
                raise ValidationError(
                    "consumer names a member of a consumer group: pass group too (without "
                    "one, a subscription reads every event and needs no name)",
                    field="consumer",
                )
            async with aclosing(self._tail(names, wanted, dedupe)) as events:
                async for item in events:
                    yield item
            return
        check_key(group, "group")
        if consumer is None:
            consumer = f"{socket.gethostname()}-{os.getpid()}"
        check_key(consumer, "consumer")
        if len(names) > 1:
            raise ValidationError(
                f"a consumer group reads one event's stream, and {event} names {len(names)}: "
                "subscribe to each event with its group (or use no group for a live tail)",
                field="event",
            )
        async with aclosing(self._grouped(names[0], group, consumer, wanted, dedupe)) as events:
            async for item in events:
                yield item

    async def _tail(
        self, names: tuple[str, ...], wanted: Match, dedupe: bool
    ) -> AsyncGenerator[Event, None]:
        keys = {self._keys.stream(stream_of(name)): name for name in names}
        # From each stream's newest entry now: "$" in a later read would skip what another
        # stream's read let arrive meanwhile.
        with translate_errors("reading store events"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xrevrange(key, count=1)
                newest = await pipe.execute()
        cursor: dict[Any, Any] = {
            key: last[0][0] if last else b"0-0" for key, last in zip(keys, newest, strict=True)
        }
        seen: OrderedDict[str, None] = OrderedDict()
        block_ms = max(1, int(self._block * 1000))
        while True:
            with translate_errors("reading store events"):
                batches: Any = await self._redis.xread(cursor, count=_BATCH, block=block_ms)
            if cancelling():
                # redis-py can turn a cancellation that lands mid-read into a timeout.
                raise asyncio.CancelledError
            for key, entries in batches or []:
                text_key = key.decode() if isinstance(key, bytes) else str(key)
                for ident, fields in entries:
                    cursor[text_key] = ident
                    item = _event(keys[text_key], ident, *_decoded(fields))
                    if item is None:
                        continue
                    if dedupe and item.outbox_id is not None:
                        if item.outbox_id in seen:
                            continue
                        seen[item.outbox_id] = None
                        if len(seen) > _RECENT:
                            seen.popitem(last=False)
                    if matches(item.fields, wanted):
                        yield item

    async def _grouped(
        self, name: str, group: str, consumer: str, wanted: Match, dedupe: bool
    ) -> AsyncGenerator[Event, None]:
        stream = stream_of(name)
        key = self._keys.stream(stream)
        with translate_errors("creating a consumer group"):
            # A new group starts at what is relayed from now on, not at the stream's history;
            # an existing one (BUSYGROUP) resumes where it was.
            try:
                await self._redis.xgroup_create(key, group, id="$", mkstream=True)
            except rx.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        messages = self._streams.consume(stream, group, consumer, block=self._block, dedupe=dedupe)
        async with aclosing(messages):
            async for message in messages:
                item = _event(name, message.id, message.data, message.outbox_id)
                if item is not None and matches(item.fields, wanted):
                    yield item
                # Reached when the caller asks for the next event: this one was handled.
                await self._streams.ack(stream, group, message.id)


def _decoded(raw: Mapping[bytes, Any]) -> tuple[Any, str | None]:
    """A relayed entry's message (``d``) and outbox id (``o``); None for a message that is
    not JSON."""
    origin = raw.get(b"o")
    try:
        fields = orjson.loads(raw[b"d"])
    except (KeyError, orjson.JSONDecodeError, TypeError):
        fields = None
    return fields, origin.decode() if isinstance(origin, bytes) else None


def _event(name: str, ident: Any, fields: Any, outbox_id: str | None) -> Event | None:
    """The event of stream entry ``ident``; None for an entry that is not one (published to
    the stream by hand, say), which is logged and skipped."""
    entry = ident.decode() if isinstance(ident, bytes) else str(ident)
    if not isinstance(fields, dict) or fields.get("event") != name:
        _log.warning("skipped entry %s of the %s events' stream: not a store event", entry, name)
        return None
    ident_field = fields.get("id")
    at = fields.get("at")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    return Event(
        event=name,
        id=str(ident_field) if ident_field is not None else None,
        fields=fields,
        at=when,
        outbox_id=outbox_id,
        entry=entry,
    )
