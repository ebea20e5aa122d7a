"""What every tenant's cache shares within one DataLayer: L1, the Redis client, the codec,
the statistics, the circuit breaker that makes a dead Redis cheap, and the listener that
applies other processes' invalidations to L1.

Invalidations travel on one pub/sub channel; a message names keys, a pattern, tags or
everything, and the process it came from (which has already applied it). Delivery takes a
few milliseconds.

L1 is only trusted while the listener is subscribed. The moment its connection fails, L1 is
dropped and bypassed (no reads, no fills) until the listener has subscribed again, since any
invalidation sent meanwhile is lost; a connection that goes silent without failing is caught
by a PING within two seconds. Each fill of L1 from Redis carries L1's generation, which
moves on every loss, write and invalidation, so a value read before any of them is not stored
after it. An L1 entry is never older than
``cache.l1_ttl`` in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from agency_data._tasks import cancel_and_wait
from agency_data.cache.codec import Codec
from agency_data.cache.local import LocalCache
from agency_data.config import CacheConfig
from agency_data.errors import BackendUnavailable
from agency_data.models import CacheStats
from agency_data.observability import Telemetry
from agency_data.redis.client import RedisClient, cancelling
from agency_data.redis.keys import MAX_KEY, check_pattern, glob_matcher
from agency_data.redis.pipelining import AutoPipeline, Command
from agency_data.redis.scripts import ScriptRegistry
from agency_data.redis.subscription import CONNECTION_ERRORS, Lost, Resubscribed, subscription
from agency_data.retry import Backoff
from agency_data.security.fields import FieldCipher

__all__ = ["INVALIDATION_CHANNEL", "CacheBackend", "RedisDown"]

INVALIDATION_CHANNEL = "ad:invalidate"
_log = logging.getLogger("agency_data.cache")
T = TypeVar("T")

# Returns the keys it removed: other processes' L1 copies (filled from L2 reads, which do not
# carry tags) are dropped by key.
TAG_INVALIDATE = """
local removed = {}
for _, tag in ipairs(KEYS) do
    local members = redis.call('SMEMBERS', tag)
    for i = 1, #members, 500 do
        local batch = {unpack(members, i, math.min(i + 499, #members))}
        redis.call('UNLINK', unpack(batch))
        for _, key in ipairs(batch) do removed[#removed + 1] = key end
    end
    redis.call('UNLINK', tag)
end
return removed
"""


class RedisDown(Exception):
    """Raised inside the cache when Redis is unreachable; callers degrade instead of failing."""


class _Counters:
    def __init__(self) -> None:
        self.l1_hits = self.l1_misses = self.l2_hits = self.l2_misses = 0
        self.sets = self.degraded_reads = self.degraded_writes = 0
        self.invalidations_sent = self.invalidations_received = 0
        self.lock_waits = 0
        self.lock_wait_seconds = 0.0


class CacheBackend:
    """The shared parts of the cache of one DataLayer."""

    def __init__(
        self, config: CacheConfig, client: RedisClient, telemetry: Telemetry | None = None
    ) -> None:
        self.config = config
        # The DataLayer's instruments, which the cache, sessions and locks record into.
        self.telemetry = telemetry if telemetry is not None else Telemetry.off()
        self.redis = client if config.l2 else None
        self.l1 = (
            LocalCache(
                max_entries=config.max_entries,
                max_bytes=config.max_memory_bytes,
                policy=config.eviction_policy,
            )
            if config.l1
            else None
        )
        # Field encryption of chosen namespaces (set at connect; see Cache).
        self.cipher: FieldCipher | None = None
        self.codec = Codec(
            compression=config.compression,
            threshold=config.compression_threshold,
            max_bytes=config.max_value_bytes,
        )
        # Shared by the sessions and locks too: their commands join the cache's round trips.
        self.pipeline = AutoPipeline(client)
        self.scripts = ScriptRegistry(client, self.pipeline)
        self.scripts.register("invalidate_tags", TAG_INVALIDATE)
        self.origin = uuid.uuid4().hex
        self.counters = _Counters()
        # Without Redis there is nothing L1 could miss; with it, L1 waits for the listener.
        self._l1_trusted = self.l1 is not None and self.redis is None
        self.l1_generation = 0
        self._down_until = 0.0
        self._was_down = False
        self._listener: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._warned_at = 0.0
        self.pending_invalidations: set[str] = set()

    # -- whether L1 may serve -------------------------------------------------------------------

    @property
    def usable_l1(self) -> LocalCache | None:
        """L1, while it can be trusted to have heard every invalidation; else None."""
        return self.l1 if self._l1_trusted else None

    def fillable_l1(self, generation: int) -> LocalCache | None:
        """L1 for storing a value read from Redis when L1 was at ``generation``.

        None when anything changed meanwhile: a large reply takes several event-loop turns,
        and an invalidation applied in between would otherwise be undone by the fill.
        """
        return self.l1 if self._l1_trusted and generation == self.l1_generation else None

    def l1_changed(self) -> None:
        """Note a write or invalidation: fills of values read before it are skipped."""
        self.l1_generation += 1

    def distrust_l1(self, reason: str, *, quiet: bool = False) -> None:
        """Drop L1 and stop using it until the listener has subscribed again."""
        if self.l1 is not None and self._l1_trusted and not quiet:
            _log.warning("dropping the L1 cache: %s", reason)
        self._restart_l1(trusted=False)

    def _restart_l1(self, *, trusted: bool) -> None:
        # Emptied either way: what it held may have missed an invalidation. The generation
        # moves on, so fills read before now are not stored.
        self.l1_generation += 1
        if self.l1 is not None:
            self.l1.clear()
        self._l1_trusted = trusted

    # -- Redis calls with degradation --------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed within the last ``retry_after``)."""
        return self.redis is not None and time.monotonic() >= self._down_until

    async def call(self, operation: Callable[[AutoPipeline], Awaitable[T]]) -> T:
        """Run ``operation`` on Redis (through the shared :class:`AutoPipeline`, whose
        ``client`` is there for commands that do not join it); :class:`RedisDown` (fast, while
        the breaker is open)."""
        if self.redis is None:
            raise RedisDown("the cache has no Redis level")
        if not self.available:
            raise RedisDown("Redis was unreachable moments ago")
        try:
            result = await operation(self.pipeline)
        except (*CONNECTION_ERRORS, BackendUnavailable) as exc:
            self._trip(exc)
            raise RedisDown(str(exc)) from exc
        if self._was_down:
            await self._recovered()
        return result

    def _trip(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.config.retry_after
        self._was_down = True
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            _log.warning(
                "Redis is unreachable (%s); the cache runs degraded: misses, dropped writes", exc
            )

    async def _recovered(self) -> None:
        self._was_down = False
        _log.info("Redis is back; dropping L1 (it may have missed invalidations)")
        if self.l1 is not None:
            self.l1.clear()
        await self.retry_pending()

    async def retry_pending(self) -> None:
        """Re-send invalidations that failed while Redis was down."""
        if not self.pending_invalidations or self.redis is None:
            return
        keys, self.pending_invalidations = list(self.pending_invalidations), set()
        try:
            await self.redis.unlink(*keys)
            await self.publish({"k": keys})
        except CONNECTION_ERRORS:
            self.pending_invalidations.update(keys)

    def record_lock_wait(self, seconds: float) -> None:
        """Count a lock acquire that had to wait ``seconds`` (locks share the cache's stats)."""
        self.counters.lock_waits += 1
        self.counters.lock_wait_seconds += seconds

    def degraded_write(self) -> None:
        """Count a write that Redis was not there to take."""
        self.counters.degraded_writes += 1

    # -- invalidation broadcast --------------------------------------------------------------

    async def publish(self, message: dict[str, Any]) -> None:
        """Tell the other processes to drop what ``message`` names from their L1."""
        if self.redis is None or not self.config.broadcast_invalidations:
            return
        message["o"] = self.origin
        await self.redis.publish(INVALIDATION_CHANNEL, orjson.dumps(message))
        self.counters.invalidations_sent += 1

    async def write_and_invalidate(self, commands: list[Command], keys: list[str]) -> list[Any]:
        """Run the write ``commands``, then the broadcast that drops ``keys`` from the other
        processes' L1, in one round trip (shared with concurrent callers'); their replies."""
        broadcast = self.config.broadcast_invalidations
        if broadcast:
            message = orjson.dumps({"k": keys, "o": self.origin})
            commands = [*commands, ("PUBLISH", INVALIDATION_CHANNEL, message)]
        replies = await self.pipeline.execute_all(*commands)
        if broadcast:
            self.counters.invalidations_sent += 1
        return replies

    def apply(self, message: dict[str, Any]) -> None:
        """Drop from L1 what an invalidation ``message`` names.

        Tags are full tag keys (tenant included), so one tenant's tags never evict another's
        entries. A message this process cannot read makes it drop all of L1: guessing what
        it meant could leave a stale entry behind.
        """
        self.l1_changed()
        if self.l1 is None:
            return
        if not isinstance(message, dict):
            raise ValueError("an invalidation message is a JSON object")
        if "all" in message:
            self.l1.clear()
        keys = message.get("k", ())
        tags = message.get("t", ())
        pattern = message.get("p")
        if not isinstance(keys, list | tuple) or not isinstance(tags, list | tuple):
            raise ValueError("keys and tags of an invalidation are lists")
        # Any process can publish here: a pattern this layer would refuse is not matched.
        if pattern is not None:
            check_pattern(pattern, "pattern", max_length=2 * MAX_KEY)
        matches = glob_matcher(pattern) if pattern is not None else None
        for key in keys:
            self.l1.discard(key)
        if matches is not None:
            self.l1.discard_where(lambda key, _tags: matches(key))
        if tags:
            doomed = set(tags)
            self.l1.discard_where(lambda _key, entry_tags: not doomed.isdisjoint(entry_tags))

    async def start_listener(self, wait: float = 2.0) -> None:
        """Listen for other processes' invalidations (only useful with an L1).

        Waits (up to ``wait`` seconds) until the subscription is in place: L1 entries filled
        before that could miss an invalidation. If Redis is down, the first failed attempt ends
        the wait (the listener keeps retrying in the background).
        """
        if self.l1 is not None and self.redis is not None and self._listener is None:
            self._listener = asyncio.create_task(
                self._listen(), name="agency-data cache invalidations"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), timeout=wait)

    async def aclose(self) -> None:
        """Stop listening."""
        listener, self._listener = self._listener, None
        await cancel_and_wait(listener)
        await self.pipeline.aclose()

    async def _listen(self) -> None:
        assert self.redis is not None
        backoff = Backoff(first=0.05, most=2.0)
        while True:
            try:
                async for event in subscription(
                    self.redis,
                    [INVALIDATION_CHANNEL],
                    reconnect_delay=0.05,
                    on_attempt=self._first_attempt.set,
                ):
                    if isinstance(event, Resubscribed):
                        self._restart_l1(trusted=True)
                        backoff.reset()
                    elif isinstance(event, Lost):
                        self.distrust_l1(f"the invalidation listener lost Redis ({event.error})")
                    else:
                        self._receive(event["data"])
            except Exception as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                self.distrust_l1(f"the invalidation listener failed ({exc!r})")
                _log.warning("cache invalidation listener failed (%r); restarting it", exc)
                await backoff.sleep()
            finally:
                self.distrust_l1("the invalidation listener stopped", quiet=True)

    def _receive(self, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
            if isinstance(payload, dict) and payload.get("o") == self.origin:
                return
            self.apply(payload)
            self.counters.invalidations_received += 1
        except Exception as exc:  # noqa: BLE001 - any process can publish on the channel
            _log.warning("dropping the L1 cache: an invalidation could not be applied (%r)", exc)
            # Still subscribed, so nothing but this message was missed: L1 serves on, empty.
            self._restart_l1(trusted=True)

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Hits, misses and hit rates per level, evictions, L1 size, degraded-mode counters."""
        c = self.counters
        l1 = self.l1
        return CacheStats(
            l1_hits=c.l1_hits,
            l1_misses=c.l1_misses,
            l2_hits=c.l2_hits,
            l2_misses=c.l2_misses,
            sets=c.sets,
            l1_evictions=l1.evictions if l1 else 0,
            l1_entries=len(l1) if l1 else 0,
            l1_bytes=l1.bytes if l1 else 0,
            degraded_reads=c.degraded_reads,
            degraded_writes=c.degraded_writes,
            invalidations_sent=c.invalidations_sent,
            invalidations_received=c.invalidations_received,
            lock_waits=c.lock_waits,
            lock_wait_seconds=c.lock_wait_seconds,
            redis_available=self.available,
            l1_serving=self.usable_l1 is not None,
        )
