"""``/v1/pubsub`` and ``/v1/streams``: publish, and receive over Server-Sent Events.

Pub/sub is at-most-once: on ``GET /v1/pubsub/{channel}/events`` the subscription is in place
when the first event, ``subscribed``, comes; a ``lost`` event says Redis went away (what was
published until the next ``subscribed`` was missed). Streams are at-least-once:
``GET /v1/streams/{stream}/events`` consumes as a member of a consumer group, each message an
event whose id is the stream id; acknowledge with ``POST /v1/streams/{stream}/ack``. What was
delivered but not acknowledged (the client went away) is redelivered after ``claim_after``.

Each event stream reads its source in a task of its own, a message at a time, and sends a
comment every ``_PING`` seconds of quiet so that proxies keep the connection and a vanished
client is noticed. A client that disconnects ends the task, which closes the subscription and
returns its Redis connection.

Each open event stream holds a connection of the layer's Redis pool (a subscription for its
whole life, a consumer through each blocking read), and the pool is shared with everything
else (rate limits, caches, locks). So at most half of ``redis.max_connections`` streams are
open at once; past that a new one is refused with 503 until one closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated, Any, Generic, TypeVar

import orjson
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from pydantic import BaseModel, ConfigDict, Field

from agency_data.coord.pubsub import Lost, Resubscribed
from agency_data.errors import AgencyDataError, BackendUnavailable
from agency_data.models import Message, StreamMessage
from agency_data.redis.keys import check_key
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant, state_of

__all__ = ["EventsController"]

_PING = 15.0
_STREAM = {"stream": True}
_SLOTS_KEY = "agency_data_event_streams"
T = TypeVar("T")


class Publish(BaseModel):
    """A message: any JSON value (up to 1 MiB encoded)."""

    model_config = ConfigDict(extra="forbid")

    data: Any


class StreamPublish(Publish):
    """A durable message; the stream is trimmed near ``max_length`` entries."""

    max_length: int | None = 100_000


class Published(BaseModel):
    """How many subscribers received the message (pub/sub)."""

    receivers: int


class Appended(BaseModel):
    """The appended message's stream id."""

    id: str


class Ack(BaseModel):
    """Messages of ``group`` handled."""

    model_config = ConfigDict(extra="forbid")

    group: str
    ids: list[str] = Field(min_length=1, max_length=10_000)


class Acked(BaseModel):
    """How many of the messages were pending (and are acknowledged now)."""

    acknowledged: int


class _Slots:
    """How many event streams are open, and how many may be."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> Callable[[], None]:
        """Take a slot (:class:`BackendUnavailable` when every one is taken); the function
        returned gives it back, once however often it is called. Taken at once, with no
        await between the check and the count, so streams opened together cannot all pass."""
        if self.open >= self.limit:
            raise BackendUnavailable(
                f"{self.open} event streams are open, the most this service keeps (half of "
                "redis.max_connections, so that the rest of the service keeps Redis): retry "
                "when one has closed",
                backend="redis",
            )
        self.open += 1
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                self.open -= 1

        return give_back

    def stream(
        self,
        source: Callable[[], AsyncGenerator[T, None]],
        render: Callable[[T], ServerSentEventMessage],
    ) -> ServerSentEvent:
        """The events of ``source`` as a response, holding a slot until it ends."""
        give_back = self.take()
        events = _events(give_back, source, render)
        # A response never sent never starts its generator, whose finally then never runs:
        # the slot comes back when the generator is collected.
        weakref.finalize(events, give_back)
        return ServerSentEvent(events)


def _slots(request: Request[Any, Any, Any]) -> _Slots:
    # One count per app, kept in its state under a name of this module's own.
    state = request.app.state
    slots: _Slots | None = state.get(_SLOTS_KEY)
    if slots is None:
        pool = state_of(request).dl.config.redis.max_connections
        slots = _Slots(max(1, pool // 2))
        state[_SLOTS_KEY] = slots
    return slots


class _Pump(Generic[T]):
    """Reads ``source`` in a task of its own, one item ahead of the client at most."""

    def __init__(self, source: AsyncGenerator[T, None]) -> None:
        self._queue: asyncio.Queue[tuple[T | None, BaseException | None]] = asyncio.Queue(1)
        self._source = source
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self._source) as source:
                async for item in source:
                    await self._queue.put((item, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await self._queue.put((None, exc))
        else:
            await self._queue.put((None, StopAsyncIteration()))

    async def next(self, timeout: float) -> T | None:
        """The next item; None after ``timeout`` seconds without one. Raises what the
        source raised, and :class:`StopAsyncIteration` once it has ended."""
        try:
            item, error = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if error is not None:
            raise error
        return item

    async def close(self) -> None:
        """End the source (its subscription and connection with it)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _events(
    give_back: Callable[[], None],
    source: Callable[[], AsyncGenerator[T, None]],
    render: Callable[[T], ServerSentEventMessage],
) -> AsyncIterator[ServerSentEventMessage]:
    # The source starts with the first event asked for: a response never sent leaves nothing
    # running.
    pump = _Pump(source())
    try:
        while True:
            try:
                item = await pump.next(_PING)
            except StopAsyncIteration:
                return
            except AgencyDataError as exc:
                body = {"code": type(exc).__name__, "detail": str(exc)}
                yield ServerSentEventMessage(event="error", data=_json(body))
                return
            if item is None:
                yield ServerSentEventMessage(comment="ping", data=None)
            else:
                yield render(item)
    finally:
        # Also when the client disconnects: the framework cancels this generator.
        give_back()
        await pump.close()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _pubsub_event(item: Message | Resubscribed | Lost) -> ServerSentEventMessage:
    if isinstance(item, Resubscribed):
        return ServerSentEventMessage(event="subscribed", data=_json({"first": item.first}))
    if isinstance(item, Lost):
        return ServerSentEventMessage(event="lost", data=_json({"error": item.error}))
    return ServerSentEventMessage(event="message", data=item.model_dump_json())


def _stream_event(item: StreamMessage) -> ServerSentEventMessage:
    return ServerSentEventMessage(event="message", id=item.id, data=item.model_dump_json())


Slots = NamedDependency[_Slots]


class EventsController(Controller):
    """The caller's pub/sub channels and durable streams."""

    path = "/v1"
    tags = ["events"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = {**SCOPE, "event_slots": Provide(_slots, sync_to_thread=False)}  # noqa: RUF012

    @post("/pubsub/{channel:str}", guards=[writes], status_code=200, summary="Publish")
    async def publish_message(
        self, tenant: Tenant, channel: FromPath[str], data: JSONBody[Publish]
    ) -> Published:
        """Send the message to the channel's subscribers of this moment (at most once)."""
        return Published(receivers=await tenant.pubsub.publish(channel, data.data))

    @get(
        "/pubsub/{channel:str}/events",
        guards=[reads],
        opt=_STREAM,
        media_type="text/event-stream",
        summary="Subscribe (Server-Sent Events)",
    )
    async def subscribe_channel(
        self, tenant: Tenant, event_slots: Slots, channel: FromPath[str]
    ) -> ServerSentEvent:
        """The channel's messages as they come; the first event, ``subscribed``, says the
        subscription is in place (publish after it)."""
        # Checked now: once the events begin, an error can no longer be a problem response.
        check_key(channel, "channel")
        return event_slots.stream(lambda: tenant.pubsub.listen(channel), _pubsub_event)

    @post("/streams/{stream:str}", guards=[writes], summary="Append to a stream")
    async def append_message(
        self, tenant: Tenant, stream: FromPath[str], data: JSONBody[StreamPublish]
    ) -> Appended:
        """Append the message (kept until trimmed); returns its id."""
        ident = await tenant.streams.publish(stream, data.data, max_length=data.max_length)
        return Appended(id=ident)

    @get(
        "/streams/{stream:str}/events",
        guards=[writes],
        opt=_STREAM,
        media_type="text/event-stream",
        summary="Consume a stream (Server-Sent Events)",
    )
    async def consume_stream(
        self,
        tenant: Tenant,
        event_slots: Slots,
        stream: FromPath[str],
        group: Annotated[str, QueryParameter(min_length=1, max_length=1024)],
        consumer: Annotated[str, QueryParameter(min_length=1, max_length=1024)],
        count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 10,
        claim_after: Annotated[float, QueryParameter(gt=0, le=7 * 24 * 3600)] = 30.0,
    ) -> ServerSentEvent:
        """Messages for ``consumer`` of ``group`` (made from the stream's start if new),
        those others left unacknowledged for ``claim_after`` seconds included."""
        # Checked now: once the events begin, an error can no longer be a problem response.
        check_key(stream, "stream")
        return event_slots.stream(
            lambda: tenant.streams.consume(
                stream, group, consumer, count=count, claim_after=claim_after
            ),
            _stream_event,
        )

    @post("/streams/{stream:str}/ack", guards=[writes], status_code=200, summary="Acknowledge")
    async def ack_messages(
        self, tenant: Tenant, stream: FromPath[str], data: JSONBody[Ack]
    ) -> Acked:
        """Acknowledge handled messages of ``group``."""
        return Acked(acknowledged=await tenant.streams.ack(stream, data.group, *data.ids))
