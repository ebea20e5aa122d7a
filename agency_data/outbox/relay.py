"""The outbox relay: committed messages (``tx.publish``) moved to Redis, in order, at least once.

Each round, in one PostgreSQL transaction as the owner role: take the relay's advisory lock
(relays of other processes skip the round rather than wait, so no two send at once), walk the
commits in the order they became visible (``commit_order``, migration 0016) from where the
relays had got to (``outbox_relay``), take their unsent messages, send them to Redis in one
pipeline in that order, mark them sent, note how far the walk got, commit. Redis failing rolls
the round back: the messages stay unsent and the next round (after a backoff) sends them. A
process dying after sending and before committing makes the next relay send them again:
delivery is at least once, and each message carries its id (``outbox_id`` on
:class:`~agency_data.models.StreamMessage`) for consumers to deduplicate on
(``consume(..., dedupe=True)``). A commit that wrote to the outbox notifies
``agency_data_outbox``; relays listening there start their next round at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from agency_data._tasks import cancel_and_wait
from agency_data.config import OutboxConfig
from agency_data.errors import PermissionDenied, QueryError
from agency_data.postgres.database import Database
from agency_data.redis.client import RedisClient
from agency_data.redis.keys import Keys
from agency_data.retry import Backoff

__all__ = ["RELAY_LOCK", "Relay", "Send", "redis_sender"]

_log = logging.getLogger("agency_data.outbox")

# Sends one round's messages, in order, in one round trip: (tenant, kind, destination, JSON,
# message id) each; returns, per message, None or why Redis refused it. Raises when Redis
# cannot be reached (the round is then rolled back and tried again).
Send = Callable[[Sequence[tuple[str, str, str, bytes, str]]], Awaitable[list[str | None]]]

# The relays' advisory lock (any constant no other part of the layer uses); erasing a tenant
# takes it too, so that no round sends the tenant's messages after they are erased.
RELAY_LOCK = 0x6167_6F62  # "agob"
# The commits from the relays' mark on, in commit order, with their unsent messages; and (in
# the same snapshot) the last commit there is, which the mark moves to once the walk is through.
_BATCH_SQL = (
    "WITH top AS (SELECT max(seq) AS top FROM commit_order) "
    "SELECT top.top, b.* FROM top LEFT JOIN LATERAL ("
    "SELECT c.seq, o.id, o.tenant_id, o.kind, o.destination, o.message::text AS message, "
    "o.message_id FROM commit_order c JOIN outbox o ON o.xid = c.xid "
    "AND o.sent_at IS NULL AND o.failed_at IS NULL "
    "WHERE c.seq >= (SELECT seq FROM outbox_relay) ORDER BY c.seq, o.id LIMIT %s"
    ") b ON true"
)
_PRUNE_SQL = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL "
    "AND sent_at < clock_timestamp() - make_interval(secs => %s) LIMIT 10000)"
)
# Commits the relays are past whose changes are pruned, or that had none.
_PRUNE_COMMITS_SQL = (
    "DELETE FROM commit_order WHERE seq IN (SELECT c.seq FROM commit_order c "
    "WHERE c.seq < (SELECT seq FROM outbox_relay) AND (c.seq <= (SELECT pruned_seq FROM "
    "change_feed) OR NOT EXISTS (SELECT FROM changes ch WHERE ch.xid = c.xid)) "
    "ORDER BY c.seq LIMIT 10000)"
)
_PRUNE_EVERY = 60.0
# Seconds closing a DataLayer spends sending what it published just before.
_LAST_ROUND = 5.0
# undefined_table, undefined_function: a database the layer's migrations have not reached.
_NOT_MIGRATED = ("42P01", "42883")


class Relay:
    """Moves committed outbox messages to Redis (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        send: Send,
        config: OutboxConfig,
        *,
        pruners: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        self._db = db
        # Run before the relay's own pruning (the change feed's), on the same schedule.
        self._pruners = pruners
        self._send = send
        self.config = config
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._pruned_at = 0.0
        # Whether the owner's rights were found missing (said once).
        self._refused = False

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
        # Read committed whatever the database's default: each statement sees what the
        # relay before it committed.
        async with self._db.transaction(isolation="read_committed"):
            if not await self._db.fetch_value("SELECT pg_try_advisory_xact_lock(%s)", [RELAY_LOCK]):
                return 0  # another relay's round is under way
            found = await self._db.fetch(_BATCH_SQL, [self.config.batch])
            rows = [r for r in found if r["id"] is not None]
            # A full batch may have stopped inside a commit: the next round starts at that
            # commit again (its sent messages are no longer unsent). Otherwise every commit up
            # to the last one is through.
            top = None if found[0]["top"] is None else found[0]["top"] + 1
            mark = rows[-1]["seq"] if len(rows) == self.config.batch else top
            if mark is not None:
                await self._db.execute(
                    "UPDATE outbox_relay SET seq = %s WHERE seq <> %s", [mark, mark]
                )
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
        # Counted once set aside for good: a round rolled back sets nothing aside.
        self._db.telemetry.outbox_refused += len(failed)
        return len(rows)

    async def prune(self) -> int:
        """Delete sent messages older than ``keep_sent`` (and what the change feed no longer
        needs); how many messages went."""
        for pruner in self._pruners:
            await pruner()
        total = 0
        while True:
            gone = await self._db.execute(_PRUNE_SQL, [self.config.keep_sent])
            total += gone
            if gone < 10_000:
                break
        # Commits the relays are past whose changes are pruned, or that had none.
        while await self._db.execute(_PRUNE_COMMITS_SQL) == 10_000:
            pass
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
            except Exception as exc:  # noqa: BLE001 - the messages stay unsent; the next round sends
                if self._stopping:
                    return
                if isinstance(exc, QueryError) and exc.sqlstate in _NOT_MIGRATED:
                    # Connected before `migrate` (the CLI's own commands do): nothing to relay
                    # until the outbox's migrations are applied.
                    _log.debug("the outbox's tables are not there yet: %s", exc)
                elif isinstance(exc, PermissionDenied):
                    # No owner connection (postgresql.admin_dsn): every tenant's messages are
                    # out of this role's reach. Said once; another process's relay may serve.
                    log = _log.debug if self._refused else _log.warning
                    self._refused = True
                    log(
                        "this DataLayer cannot relay the outbox: its admin connection is not "
                        "the owner role (set postgresql.admin_dsn, or outbox.relay = false)"
                    )
                else:
                    _log.warning("relaying the outbox failed; retrying", exc_info=True)
                # A commit meanwhile (Redis back, say) still wakes the next round at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next_delay())

    async def aclose(self) -> None:
        """Stop relaying, after a last round (at most 5 seconds) for what this
        process committed just before; what is still unsent waits for the next relay, here
        or elsewhere."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self._stopping = True
        await cancel_and_wait(loop)
        try:
            async with asyncio.timeout(_LAST_ROUND):
                await self.relay()
        except Exception as exc:  # noqa: BLE001 - the messages stay for the next relay
            _log.info("the outbox's last round before closing did not finish: %s", exc)


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
