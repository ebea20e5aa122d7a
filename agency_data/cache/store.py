"""``dl.cache``: a multi-level cache (in-process L1 in front of Redis L2) for one tenant.

Reads look in L1, then Redis; writes go to both and tell other processes to drop their L1
copy. When Redis is down, reads are misses (L1 is set aside too: it would miss other
processes' invalidations), writes are dropped with a warning and a counter, and nothing raises:
a cache must never take the application down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any

from agency_data.cache.backend import CacheBackend, RedisDown
from agency_data.cache.local import LocalCache
from agency_data.errors import DecryptionError
from agency_data.inputs import as_items, check_bool, check_callable, check_mapping, check_seconds
from agency_data.models import CacheStats
from agency_data.observability import observed
from agency_data.redis.errors import translate_errors as redis_errors
from agency_data.redis.keys import Keys, check_key, check_namespace, check_pattern, escape_glob
from agency_data.redis.pipelining import AutoPipeline, Command

__all__ = ["Cache"]

_MISSING: Any = object()
# Each stored value starts with its absolute expiry (ms since the epoch), so an L2 hit tells L1
# how long the entry has left without a second command.
_EXPIRY = struct.Struct(">Q")
_SCAN_BATCH = 500
# A year: past this, an entry is not a cache entry, and Redis's PX milliseconds overflow near 1e16.
MAX_TTL = 366 * 24 * 3600


Loader = Callable[[], Awaitable[Any] | Any]


class Cache:
    """The cache of one tenant; ``namespace`` separates independent users of it."""

    def __init__(self, backend: CacheBackend, tenant: str, namespace: str = "default") -> None:
        self._backend = backend
        self._telemetry = backend.telemetry
        self._keys = Keys(tenant)
        self.namespace = check_namespace(namespace)
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        # Values of this namespace encrypted before they reach Redis (cache.<namespace>).
        cipher = backend.cipher
        self._cipher = cipher
        self._sealed = cipher is not None and cipher.chosen("cache", self.namespace)

    def with_namespace(self, namespace: str) -> Cache:
        """The same tenant's cache under another namespace."""
        return Cache(self._backend, self._keys.tenant, namespace)

    def stats(self) -> CacheStats:
        """The cache's counters (shared by every tenant and namespace of this DataLayer)."""
        return self._backend.stats()

    def _full(self, key: str) -> str:
        return self._keys.cache(self.namespace, check_key(key))

    @staticmethod
    def _tags(tags: Iterable[str]) -> list[str]:
        # as_items refuses a lone string, which would otherwise tag "abc" as a, b and c.
        return [check_key(t, "tag") for t in as_items(tags, "tags")]

    def _ttl(self, ttl: float | None) -> float:
        value = self._backend.config.default_ttl if ttl is None else ttl
        return check_seconds(value, "ttl", low=0.001, high=MAX_TTL)

    # -- reading -------------------------------------------------------------------------------

    def peek(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` if this process's L1 holds it (counted as a hit), else
        ``default`` at once: never waits, and leaves the miss to the read that follows."""
        l1 = self._backend.usable_l1
        if l1 is None:
            return default
        value = l1.get(self._full(key), _MISSING)
        if value is _MISSING:
            return default
        self._backend.counters.l1_hits += 1
        return value

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default``."""
        full = self._full(key)
        value = self._l1_get(full)
        if value is not _MISSING:
            return value
        if self._backend.redis is None:
            return default
        # Only reads that reach Redis are timed (and traced): an L1 hit costs about a
        # microsecond, which timing would double; the hit and miss counters count every read.
        # Timed here rather than by @observed: a coalesced read costs about 4 us, and the
        # decorator's own coroutine would be a twentieth of it.
        telemetry = self._telemetry
        if not telemetry.timing_only:
            if telemetry.quiet:
                return await self._read_redis(full, default)
            return await self._get_observed(full, default)
        start = perf_counter()
        try:
            value = await self._read_redis(full, default)
        except BaseException as exc:
            telemetry.failed("cache.get", exc, perf_counter() - start)
            raise
        telemetry.record("cache.get", perf_counter() - start)
        return value

    @observed("cache.get", system="redis")
    async def _get_observed(self, full: str, default: Any) -> Any:
        return await self._read_redis(full, default)

    async def _read_redis(self, full: str, default: Any) -> Any:
        backend = self._backend
        generation = backend.l1_generation
        try:
            # GET, not a one-key MGET: it is what a hand-written client sends, and cheaper;
            # concurrent callers' GETs become one MGET.
            data = await backend.call(lambda p: p.get(full))
        except RedisDown:
            backend.counters.degraded_reads += 1
            return default
        await self._keys_ready(write=False)
        value = self._accept(full, data, backend.fillable_l1(generation), time.time() * 1000)
        return default if value is _MISSING else value

    async def _keys_ready(self, *, write: bool) -> None:
        # The tenant's data keys read (off the event loop) before entries are sealed or opened.
        if self._cipher is not None and self._cipher.keyring is not None:
            await self._cipher.ensure(self._keys.tenant, write=write)

    @observed("cache.get_many", system="redis")
    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of ``keys`` that exist (one Redis round trip for the L1 misses)."""
        result: dict[str, Any] = {}
        wanted: dict[str, str] = {}
        for key in as_items(keys, "keys"):
            full = self._full(key)
            value = self._l1_get(full)
            if value is _MISSING:
                wanted[full] = key
            else:
                result[key] = value
        if wanted:
            found = await self._l2_get_many(list(wanted))
            for full, value in found.items():
                result[wanted[full]] = value
        return result

    def _l1_get(self, full: str) -> Any:
        l1 = self._backend.usable_l1
        if l1 is None:
            return _MISSING
        value = l1.get(full, _MISSING)
        counters = self._backend.counters
        if value is _MISSING:
            counters.l1_misses += 1
            return _MISSING
        counters.l1_hits += 1
        return value

    async def _l2_get_many(self, fulls: list[str]) -> dict[str, Any]:
        backend = self._backend
        if backend.redis is None:
            return {}
        await self._keys_ready(write=False)
        generation = backend.l1_generation
        try:
            raw: list[Any] = await backend.call(lambda p: p.client.mget(fulls))
        except RedisDown:
            backend.counters.degraded_reads += len(fulls)
            return {}
        found: dict[str, Any] = {}
        now_ms = time.time() * 1000
        l1 = backend.fillable_l1(generation)
        for full, data in zip(fulls, raw, strict=True):
            value = self._accept(full, data, l1, now_ms)
            if value is not _MISSING:
                found[full] = value
        return found

    def _accept(self, full: str, data: bytes | None, l1: LocalCache | None, now_ms: float) -> Any:
        """The value Redis held for ``full`` (counted, and kept in ``l1`` if given)."""
        backend = self._backend
        if data is None or len(data) <= _EXPIRY.size:
            backend.counters.l2_misses += 1
            return _MISSING
        (expires_ms,) = _EXPIRY.unpack_from(data)
        payload = data[_EXPIRY.size :]
        if self._cipher is not None:
            try:
                payload = self._cipher.open_bytes(self._keys.tenant, self.namespace, full, payload)
            except DecryptionError:
                # Its key retired or destroyed since: a cache may always miss.
                backend.counters.l2_misses += 1
                return _MISSING
        value = backend.codec.decode(payload)
        backend.counters.l2_hits += 1
        if l1 is not None:
            left = min(backend.config.l1_ttl, (expires_ms - now_ms) / 1000)
            l1.set(full, value, ttl=left, size=len(data))
        return value

    # -- writing -------------------------------------------------------------------------------

    @observed("cache.set", system="redis")
    async def set(
        self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Cache ``value`` for ``ttl`` seconds (default ``cache.default_ttl``), labelled ``tags``."""
        # Checked before it becomes a dict key: a list would fail to hash, not be refused.
        await self._set_many({check_key(key): value}, ttl, tags)

    @observed("cache.set_many", system="redis")
    async def set_many(
        self, items: Mapping[str, Any], ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Cache several values in one Redis round trip."""
        await self._set_many(items, ttl, tags)

    async def _set_many(
        self, items: Mapping[str, Any], ttl: float | None, tags: Iterable[str]
    ) -> None:
        items = check_mapping(items, "items")
        seconds = self._ttl(ttl)
        tag_list = self._tags(tags)
        tag_keys = [self._keys.tag(t) for t in tag_list]
        backend = self._backend
        expires_ms = int(time.time() * 1000 + seconds * 1000)
        if self._sealed:
            await self._keys_ready(write=True)
        encoded: dict[str, bytes] = {}
        for key, value in items.items():
            full = self._full(key)
            payload = backend.codec.encode(value)
            if self._sealed and self._cipher is not None:
                payload = self._cipher.seal_bytes(self._keys.tenant, self.namespace, full, payload)
            encoded[full] = _EXPIRY.pack(expires_ms) + payload
        backend.counters.sets += len(encoded)
        backend.l1_changed()
        l1 = backend.usable_l1
        if l1 is not None:
            for (full, data), value in zip(encoded.items(), items.values(), strict=True):
                l1.set(
                    full,
                    value,
                    ttl=min(seconds, backend.config.l1_ttl),
                    size=len(data),
                    tags=tag_keys,
                )
        if backend.redis is None or not encoded:
            return
        millis = max(1, int(seconds * 1000))

        commands: list[Command] = [
            ("SET", full, data, "PX", millis) for full, data in encoded.items()
        ]
        for tag_key in tag_keys:
            commands += [
                ("SADD", tag_key, *encoded),
                ("PEXPIRE", tag_key, millis, "GT"),
                ("PEXPIRE", tag_key, millis, "NX"),
            ]

        try:
            await backend.call(lambda _: backend.write_and_invalidate(commands, list(encoded)))
        except RedisDown:
            backend.degraded_write()

    @observed("cache.delete", system="redis")
    async def delete(self, *keys: str) -> None:
        """Remove ``keys`` everywhere (retried when Redis returns, if it is down now)."""
        fulls = [self._full(k) for k in keys]
        await self._forget(fulls)

    async def _forget(self, fulls: list[str]) -> None:
        backend = self._backend
        backend.l1_changed()
        if backend.l1 is not None:
            for full in fulls:
                backend.l1.discard(full)
        if backend.redis is None or not fulls:
            return

        try:
            await backend.call(lambda _: backend.write_and_invalidate([("UNLINK", *fulls)], fulls))
        except RedisDown:
            backend.degraded_write()
            backend.pending_invalidations.update(fulls)

    async def get_or_set(
        self,
        key: str,
        loader: Loader,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        across_processes: bool = False,
    ) -> Any:
        """The cached value, or ``loader()``'s result, cached; concurrent misses load once.

        Within a process, concurrent callers for one key share one ``loader`` call. With
        ``across_processes``, a short Redis lock makes other processes wait for the first
        one's result instead of loading too.
        """
        check_callable(loader, "loader")
        check_bool(across_processes, "across_processes")
        full = self._full(key)
        value = self._l1_get(full)
        if value is not _MISSING:
            return value
        return await self._get_or_load(key, full, loader, ttl, tags, across_processes)

    @observed("cache.get_or_set", system="redis")
    async def _get_or_load(
        self,
        key: str,
        full: str,
        loader: Loader,
        ttl: float | None,
        tags: Iterable[str],
        across_processes: bool,
    ) -> Any:
        if self._backend.redis is not None:
            # Part of this get_or_set: not a cache.get of its own.
            value = await self._read_redis(full, _MISSING)
            if value is not _MISSING:
                return value
        inflight = self._inflight.get(full)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[full] = future
        try:
            value = await self._fill(key, full, loader, ttl, tags, across_processes)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[full]

    async def _fill(
        self,
        key: str,
        full: str,
        loader: Loader,
        ttl: float | None,
        tags: Iterable[str],
        shared: bool,
    ) -> Any:
        backend = self._backend
        lock_key = self._keys.fill_lock(self.namespace, key)
        token = uuid.uuid4().hex
        holds = False
        if shared and backend.available:
            deadline = time.monotonic() + backend.config.fill_lock_ttl
            while True:
                try:
                    holds = bool(
                        await backend.call(
                            lambda p: p.client.set(
                                lock_key,
                                token,
                                nx=True,
                                px=int(backend.config.fill_lock_ttl * 1000),
                            )
                        )
                    )
                except RedisDown:
                    break
                if holds:
                    break
                await asyncio.sleep(0.01)
                found = await self._l2_get_many([full])
                if full in found:
                    return found[full]
                if time.monotonic() > deadline:
                    break  # the other loader is slow or gone: load ourselves
        try:
            result = loader()
            value = await result if inspect.isawaitable(result) else result
            await self.set(key, value, ttl=ttl, tags=tags)
            return value
        finally:
            if holds:
                with contextlib.suppress(RedisDown):
                    await backend.call(lambda p: p.execute("DEL", lock_key))

    # -- invalidating --------------------------------------------------------------------------

    @observed("cache.invalidate", system="redis")
    async def invalidate(self, pattern: str) -> int:
        """Remove every key of this namespace matching the Redis glob ``pattern``.

        Glob characters in ``pattern`` act as wildcards; to match text literally, pass it
        through :func:`agency_data.cache.escape_glob` or use :meth:`invalidate_prefix`.
        Uses SCAN and UNLINK, never KEYS. Returns how many Redis keys went.
        """
        check_pattern(pattern)
        full_pattern = escape_glob(self._keys.cache_prefix(self.namespace)) + pattern
        return await self._invalidate_pattern(full_pattern)

    @observed("cache.invalidate_prefix", system="redis")
    async def invalidate_prefix(self, prefix: str) -> int:
        """Remove every key that starts with ``prefix`` (taken literally)."""
        check_key(prefix, "prefix")
        return await self._invalidate_pattern(
            escape_glob(self._keys.cache_prefix(self.namespace) + prefix) + "*"
        )

    @observed("cache.clear", system="redis")
    async def clear(self, namespace: str | None = None) -> int:
        """Remove every key of ``namespace`` (default: this cache's)."""
        prefix = self._keys.cache_prefix(check_namespace(namespace or self.namespace))
        return await self._invalidate_pattern(escape_glob(prefix) + "*")

    async def _invalidate_pattern(self, full_pattern: str) -> int:
        backend = self._backend
        if backend.l1 is not None:
            backend.apply({"p": full_pattern})
        if backend.redis is None:
            return 0

        async def scan_and_unlink(shared: AutoPipeline) -> int:
            redis = shared.client
            removed = 0
            batch: list[Any] = []
            async for found in redis.scan_iter(match=full_pattern, count=_SCAN_BATCH):
                batch.append(found)
                if len(batch) >= _SCAN_BATCH:
                    removed += await redis.unlink(*batch)
                    batch = []
            if batch:
                removed += await redis.unlink(*batch)
            await backend.publish({"p": full_pattern})
            return removed

        try:
            return await backend.call(scan_and_unlink)
        except RedisDown:
            backend.degraded_write()
            return 0

    @observed("cache.tagged", system="redis")
    async def tagged(self, tag: str) -> list[Any]:
        """The values of every entry set with ``tag`` (of any namespace of this tenant)."""
        backend = self._backend
        if backend.redis is None:
            return []
        tag_key = self._keys.tag(check_key(tag, "tag"))
        with redis_errors("reading tagged cache entries"):
            members = sorted(
                m.decode() if isinstance(m, bytes) else str(m)
                for m in await backend.redis.smembers(tag_key)
            )
            raws = await backend.redis.mget(members) if members else []
        await self._keys_ready(write=False)
        now_ms = time.time() * 1000
        values = []
        for full, data in zip(members, raws, strict=True):
            namespace = full.removeprefix(self._keys.prefix + "c:").split(":", 1)[0]
            raw = data.encode() if isinstance(data, str) else data
            value = self.with_namespace(namespace)._accept(full, raw, None, now_ms)
            if value is not _MISSING:
                values.append(value)
        return values

    @observed("cache.invalidate_tags", system="redis")
    async def invalidate_tags(self, *tags: str) -> int:
        """Remove every key set with any of ``tags``; returns how many Redis keys went."""
        tag_keys = [self._keys.tag(check_key(t, "tag")) for t in tags]
        if not tag_keys:
            return 0
        backend = self._backend
        # Tag keys carry the tenant: another tenant's entries with a tag of the same name stay.
        backend.apply({"t": tag_keys})
        if backend.redis is None:
            return 0

        async def run(_: AutoPipeline) -> int:
            removed = await backend.scripts.run("invalidate_tags", keys=tag_keys)
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in removed]
            await backend.publish({"t": tag_keys, "k": keys})
            return len(keys)

        try:
            return await backend.call(run)
        except RedisDown:
            backend.degraded_write()
            return 0
