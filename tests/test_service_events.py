"""Pub/sub and streams over HTTP and Server-Sent Events: delivery, tenants, roles, redelivery,
and no Redis connection left behind by a client that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from agency_data import DataLayer
from agency_data.coord.pubsub import Resubscribed
from agency_data.models import Message
from agency_data.redis.keys import Keys
from tests.service_support import OTHER, TENANT, Service, problem, service_on

pytestmark = pytest.mark.timeout(120)


class Events:
    """A Server-Sent Events response, read an event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event (comments skipped) as its fields, ``data`` parsed."""
        event: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if not line:
                    if event:
                        return event
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                event[name] = json.loads(value) if name == "data" else value
        raise AssertionError(f"the stream ended; last event {event}")


@contextlib.asynccontextmanager
async def sse(
    service: Service, path: str, *, tenant: str = TENANT, role: str = "read-write", **kw: Any
) -> AsyncIterator[Events]:
    async with service.client.stream("GET", path, headers=service.auth(role, tenant), **kw) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        yield Events(r)


async def _until(check: Any, seconds: float = 10.0) -> None:
    """Wait (bounded) until ``await check()`` is true."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - polling another process's state
            await asyncio.sleep(0.05)


async def test_pubsub_delivers_to_the_tenants_subscribers_only(service: Service) -> None:
    async with (
        sse(service, "/v1/pubsub/news/events", role="read-only") as mine,
        sse(service, "/v1/pubsub/news/events", tenant=OTHER, role="read-only") as theirs,
    ):
        assert (await mine.next())["event"] == "subscribed"
        assert (await theirs.next())["data"] == {"first": True}
        sent = await service.call("POST", "/v1/pubsub/news", json={"data": {"n": 1}})
        assert sent.json() == {"receivers": 1}
        got = await mine.next()
        assert got["event"] == "message"
        assert got["data"] == {"channel": "news", "data": {"n": 1}, "pattern": None}
        await service.call("POST", "/v1/pubsub/news", tenant=OTHER, json={"data": "theirs"})
        # Their first message is their own: ours never reached them.
        assert (await theirs.next())["data"]["data"] == "theirs"
    problem(
        await service.call("POST", "/v1/pubsub/news", role="read-only", json={"data": 1}),
        403,
        "PermissionDenied",
    )
    for body in ({}, {"data": 1, "tenant_id": OTHER}):
        problem(await service.call("POST", "/v1/pubsub/news", json=body), 422, "ValidationError")
    huge = {"data": "x" * (1 << 20)}
    problem(await service.call("POST", "/v1/pubsub/news", json=huge), 422, "ValidationError")
    problem(await service.client.get("/v1/pubsub/news/events"), 401, "AuthenticationFailed")


async def test_a_client_going_away_ends_its_subscription(service: Service, redis_url: str) -> None:
    channel = Keys(TENANT).channel("gone")
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def subscribers() -> int:
            counts = await client.pubsub_numsub(channel)
            return int(counts[0][1])

        async def connections() -> int:
            return len(await client.client_list())

        before = await connections()
        for _ in range(3):
            async with contextlib.AsyncExitStack() as stack:
                # Kept, each: a dropped reader's line iterator would close its response.
                streams = [
                    await stack.enter_async_context(sse(service, "/v1/pubsub/gone/events"))
                    for _ in range(3)
                ]
                for events in streams:
                    assert (await events.next())["event"] == "subscribed"
                assert await subscribers() == 3
                assert await connections() == before + 3

            async def released() -> bool:
                return await subscribers() == 0 and await connections() <= before

            await _until(released)
    finally:
        await client.aclose()


async def test_streams_deliver_acknowledge_and_redeliver(service: Service) -> None:
    ids = []
    for n in range(3):
        appended = await service.call("POST", "/v1/streams/jobs", json={"data": {"n": n}})
        assert appended.status_code == 201, appended.text
        ids.append(appended.json()["id"])
    path = "/v1/streams/jobs/events"
    async with sse(service, path, params={"group": "g", "consumer": "c1"}) as events:
        got = [await events.next() for _ in range(3)]
    assert [e["id"] for e in got] == ids
    assert [e["data"]["data"] for e in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {e["data"]["attempts"] for e in got} == {1}
    acked = await service.call("POST", "/v1/streams/jobs/ack", json={"group": "g", "ids": ids[:2]})
    assert acked.json() == {"acknowledged": 2}
    streams = service.dl.tenant(TENANT).streams
    assert await streams.pending("jobs", "g") == 1
    # The third was delivered and never acknowledged: another consumer gets it again.
    params = {"group": "g", "consumer": "c2", "claim_after": 0.01}
    async with sse(service, path, params=params) as events:
        again = await events.next()
    assert again["id"] == ids[2]
    assert again["data"]["attempts"] == 2
    # Another tenant's stream of the same name is its own.
    await service.call("POST", "/v1/streams/jobs", tenant=OTHER, json={"data": "theirs"})
    async with sse(service, path, tenant=OTHER, params={"group": "g", "consumer": "c"}) as events:
        assert (await events.next())["data"]["data"] == "theirs"
    assert await streams.pending("jobs", "g") == 1


async def test_stream_requests_are_checked(service: Service, redis_url: str) -> None:
    path = "/v1/streams/jobs/events"
    problem(
        await service.call("POST", "/v1/streams/jobs", role="read-only", json={"data": 1}),
        403,
        "PermissionDenied",
    )
    problem(
        await service.call("GET", path, role="read-only", params={"group": "g", "consumer": "c"}),
        403,
        "PermissionDenied",
    )
    for params in (
        {"group": "g"},
        {"group": "", "consumer": "c"},
        {"group": "g", "consumer": "c", "count": 0},
        {"group": "g", "consumer": "c", "claim_after": -1},
    ):
        problem(await service.call("GET", path, params=params), 422, "ValidationError")
    for body in (
        {"group": "g", "ids": ["not-an-id"]},
        {"group": "g", "ids": []},
        {"ids": ["1-0"]},
    ):
        problem(
            await service.call("POST", "/v1/streams/jobs/ack", json=body), 422, "ValidationError"
        )
    problem(
        await service.call("POST", "/v1/streams/jobs", json={"data": 1, "max_length": 0}),
        422,
        "ValidationError",
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.exists(Keys(TENANT).stream("jobs")) == 0
    finally:
        await client.aclose()


async def test_a_consumer_going_away_stops_reading(service: Service, redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    key = Keys(TENANT).stream("idle")
    try:

        async def blocked() -> bool:
            return any("b" in c["flags"] for c in await client.client_list())

        async with sse(
            service, "/v1/streams/idle/events", params={"group": "g", "consumer": "c"}
        ) as events:
            assert events.response.status_code == 200
            await _until(blocked)

        async def stopped() -> bool:
            # A consumer still reading blocks 1 s at a time, so its idle time stays below
            # that; one that stopped idles on.
            (consumer,) = await client.xinfo_consumers(key, "g")
            return int(consumer["idle"]) > 1500 and not await blocked()

        await _until(stopped)
    finally:
        await client.aclose()


async def test_listen_says_when_the_subscription_is_in_place(dl: DataLayer) -> None:
    pubsub = dl.tenant(TENANT).pubsub
    async with contextlib.aclosing(pubsub.listen("c")) as events:
        first = await anext(events)
        assert first == Resubscribed(first=True)
        await pubsub.publish("c", {"x": 1})
        assert await anext(events) == Message(channel="c", data={"x": 1})


async def test_event_streams_are_capped_at_half_the_redis_pool(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    async with service_on(database, redis_url, tmp_path, redis={"max_connections": 4}) as service:
        async with (
            sse(service, "/v1/pubsub/a/events") as first,
            sse(service, "/v1/streams/s/events", params={"group": "g", "consumer": "c"}),
        ):
            assert (await first.next())["event"] == "subscribed"
            for path, params in (
                ("/v1/pubsub/b/events", {}),
                ("/v1/streams/s/events", {"group": "g", "consumer": "d"}),
            ):
                response = await service.call("GET", path, params=params)
                problem(response, 503, "BackendUnavailable")
            # The rest of the service still has Redis.
            assert (await service.call("POST", "/v1/pubsub/a", json={"data": 1})).status_code == 200
            assert (await first.next())["data"]["data"] == 1

        async def reopened() -> bool:
            async with service.client.stream(
                "GET", "/v1/pubsub/b/events", headers=service.auth()
            ) as response:
                return response.status_code == 200

        await _until(reopened)
