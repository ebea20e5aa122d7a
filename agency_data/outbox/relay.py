"""The outbox relay: committed messages (``tx.publish``) moved to Redis, in order, at least once.

Each round, in one PostgreSQL transaction as the owner role: take the relay's advisory lock
(relays of other processes skip the round rather than wait, so no two send at once and the
order holds), read the oldest unsent messages whose transactions, and every older one, have
ended, send them to Redis in one pipeline in id order, mark them sent, commit. Redis failing
rolls the round back: the messages stay unsent and the next round (after a backoff) sends
them. A process dying after sending and before committing makes the next relay send them
again: delivery is at least once, and each message carries its id (``outbox_id`` on
:class:`~agency_data.models.StreamMessage`) for consumers to deduplicate on
(``consume(..., dedupe=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from agency_data._tasks import cancel_and_wait
from agency_data.config import OutboxConfig
from agency_data.postgres.database import Database
from agency_data.redis.client import RedisClient
from agency_data.redis.keys import Keys
from agency_data.retry import Backoff

__all__ = ["Relay", "Send", "redis_sender"]

_log = logging.getLogger("agency_data.outbox")

# Sends one round's messages, in order, in one round trip: (tenant, kind, destination, JSON,
# message id) each; returns, per message, None or why Redis refused it. Raises when Redis
# cannot be reached (the round is then rolled back and tried again).
Send = Callable[[Sequence[tuple[str, str, str, bytes, str]]], Awaitable[list[str | None]]]

# The relays' advisory lock (any constant no other part of the layer uses).
_LOCK = 0x6167_6F62  # "agob"
# Messages of transactions still running, or behind one that is, wait for the next round.
_BATCH_SQL = (
    "SELECT id, tenant_id, kind, destination, message::text AS message, message_id "
    "FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL "
    "AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY id LIMIT %s"
)
_PRUNE_SQL = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL "
    "AND sent_at < clock_timestamp() - make_interval(secs => %s) LIMIT 10000)"
)
_PRUNE_EVERY = 60.0


class Relay:
    """Moves committed outbox messages to Redis (see the module's docstring)."""

    def __init__(self, db: Database, send: Send, config: OutboxConfig) -> None:
        self._db = db
        self._send = send
        self.config = config
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._pruned_at = 0.0

    def wake(self) -> None:
        """Start the next round now (a transaction that published has committed)."""
        self._wake.set()

    async def relay(self) -> int:
        """Send every message that can be sent now; how many were sent."""
        total = 0
        while True:
            sent = await self._round()
            total += sent
            if sent < self.config.batch:
                return total

    async def _round(self) -> int:
        async with self._db.transaction():
            if not await self._db.fetch_value("SELECT pg_try_advisory_xact_lock(%s)", [_LOCK]):
                return 0  # another relay's round is under way
            rows = await self._db.fetch(_BATCH_SQL, [self.config.batch])
            if not rows:
                return 0
            refused = await self._send(
                [
                    (
                        r["tenant_id"],
                        r["kind"],
                        r["destination"],
                        r["message"].encode(),
                        str(r["message_id"]),
                    )
                    for r in rows
                ]
            )
            await self._db.execute(
                "UPDATE outbox SET sent_at = clock_timestamp() WHERE id = ANY(%s)",
                [[r["id"] for r, error in zip(rows, refused, strict=True) if error is None]],
            )
            failed = [(r["id"], error) for r, error in zip(rows, refused, strict=True) if error]
            if failed:
                # Set aside, not retried: sending them again would fail again and hold back
                # (or, rolled back, resend) every message after them.
                _log.warning("Redis refused %d outbox message(s): %s", len(failed), failed[0][1])
                await self._db.execute(
                    "UPDATE outbox SET failed_at = clock_timestamp(), error = e.error "
                    "FROM unnest(%s::bigint[], %s::text[]) AS e(id, error) WHERE outbox.id = e.id",
                    [[i for i, _ in failed], [e for _, e in failed]],
                )
        return len(rows)

    async def prune(self) -> int:
        """Delete sent messages older than ``keep_sent``; how many went."""
        total = 0
        while True:
            gone = await self._db.execute(_PRUNE_SQL, [self.config.keep_sent])
            total += gone
            if gone < 10_000:
                return total

    def start(self) -> None:
        """Relay in the background: at once when woken, else every ``interval`` seconds."""
        if self._loop is None:
            self._stopping = False
            self._loop = asyncio.create_task(self._run_forever(), name="agency-data-outbox")

    async def _run_forever(self) -> None:
        backoff = Backoff(first=self.config.interval, most=max(self.config.interval, 30.0))
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.interval)
            self._wake.clear()
            try:
                await self.relay()
                if time.monotonic() - self._pruned_at > _PRUNE_EVERY:
                    self._pruned_at = time.monotonic()
                    await self.prune()
                backoff.reset()
            except Exception:  # noqa: BLE001 - the messages stay unsent; the next round sends
                if self._stopping:
                    return
                _log.warning("relaying the outbox failed; retrying", exc_info=True)
                # A commit meanwhile (Redis back, say) still wakes the next round at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next_delay())

    async def aclose(self) -> None:
        """Stop relaying (messages not sent yet wait for the next relay, here or elsewhere)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self._stopping = True
        await cancel_and_wait(loop)


def redis_sender(client: RedisClient, max_length: int = 100_000) -> Send:
    """What sends a round's messages to ``client``: one pipeline, in order; a stream entry
    carries the message (``d``, as ``dl.streams.publish`` writes it) and its id (``o``)."""

    async def send(messages: Sequence[tuple[str, str, str, bytes, str]]) -> list[str | None]:
        async with client.pipeline(transaction=False) as pipe:
            for tenant, kind, destination, data, message_id in messages:
                keys = Keys(tenant)
                if kind == "stream":
                    pipe.xadd(
                        keys.stream(destination),
                        {"d": data, "o": message_id},
                        maxlen=max_length,
                        approximate=True,
                    )
                else:
                    pipe.publish(keys.channel(destination), data)
            # A command Redis refuses comes back as its error; a lost connection raises.
            results = await pipe.execute(raise_on_error=False)
        return [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else None for r in results]

    return send
