"""Distributed locks on Redis, honest about what they promise.

A lock is a key holding a random owner token, set with NX and a TTL. Releasing and extending
compare the token first (Lua), so a holder can never free a lock someone else took after its
own expired. Redis cannot stop a paused holder from acting after its TTL, which is what the
fencing token is for: each grant also increments a counter, and a write guarded by
``WHERE fence < :token`` (then storing the token) rejects the stale holder's write::

    async with dl.lock("resource:7", ttl=30, wait=5) as lock:
        await dl.execute(
            "UPDATE resources SET value = %s, fence = %s WHERE id = 7 AND fence < %s",
            [value, lock.fencing_token, lock.fencing_token],
        )

Locks fail loudly: :class:`LockNotAcquired` after ``wait``, :class:`LockNotOwned` when
releasing or extending a lock that expired meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType

from agency_data._tasks import cancel_and_wait
from agency_data.errors import LockNotAcquired, LockNotOwned, ValidationError
from agency_data.redis.keys import Keys, check_key
from agency_data.redis.scripts import ScriptRegistry
from agency_data.retry import Backoff

__all__ = ["ACQUIRE", "EXTEND", "RELEASE", "Lock"]

_log = logging.getLogger("agency_data.locks")

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def register_lock_scripts(scripts: ScriptRegistry) -> None:
    """Add the lock scripts to ``scripts``."""
    scripts.register("lock_acquire", ACQUIRE)
    scripts.register("lock_release", RELEASE)
    scripts.register("lock_extend", EXTEND)


class Lock:
    """A distributed lock; use it as ``async with dl.lock(name, ttl=..., wait=...) as lock:``."""

    def __init__(
        self,
        scripts: ScriptRegistry,
        keys: Keys,
        name: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        auto_renew: bool = False,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.name = check_key(name, "name")
        for field, value in (("ttl", ttl), ("wait", wait)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValidationError(
                    f"{field} must be a non-negative number of seconds", field=field
                )
        if ttl < 0.01:
            raise ValidationError("ttl must be at least 10 ms", field="ttl")
        self.ttl = float(ttl)
        self.wait = float(wait)
        self.auto_renew = auto_renew
        self._on_wait = on_wait
        self._scripts = scripts
        self._key = keys.lock(name)
        self._fence_key = keys.fence(name)
        self._token = uuid.uuid4().hex
        self.fencing_token: int | None = None
        self._acquired = False
        self.lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """True between a successful acquire and release (as far as this holder knows).

        ``fencing_token`` stays set after release: it names the grant this holder had.
        """
        return self._acquired and not self.lost.is_set()

    async def acquire(self) -> int:
        """Take the lock, waiting up to ``wait`` seconds; return the fencing token."""
        started = time.monotonic()
        deadline = started + self.wait
        backoff = Backoff(first=0.005, most=0.1)
        waited = False
        while True:
            granted = int(
                await self._scripts.run(
                    "lock_acquire",
                    keys=[self._key, self._fence_key],
                    args=[self._token, int(self.ttl * 1000)],
                )
            )
            if granted:
                break
            if time.monotonic() >= deadline:
                raise LockNotAcquired(
                    f"lock {self.name!r} is held by someone else; gave up after {self.wait:g} s",
                    name=self.name,
                )
            waited = True
            await backoff.sleep(deadline)
        if waited and self._on_wait is not None:
            self._on_wait(time.monotonic() - started)
        self.fencing_token = granted
        self._acquired = True
        self.lost.clear()
        if self.auto_renew:
            self._renewer = asyncio.create_task(self._renew(), name=f"renew lock {self.name}")
        return granted

    async def release(self) -> None:
        """Let go; :class:`LockNotOwned` if it expired (or was taken) meanwhile."""
        await self._stop_renewing()
        if not self._acquired:
            raise LockNotOwned(f"lock {self.name!r} is not held by this holder", name=self.name)
        released = int(
            await self._scripts.run("lock_release", keys=[self._key], args=[self._token])
        )
        self._acquired = False
        if not released:
            raise LockNotOwned(
                f"lock {self.name!r} expired before it was released (ttl {self.ttl:g} s); writes "
                "guarded by its fencing token will have been rejected. Raise ttl or use auto_renew",
                name=self.name,
            )

    async def extend(self, ttl: float | None = None) -> None:
        """Reset the lock's TTL to ``ttl`` (default: its own); :class:`LockNotOwned` if lost."""
        millis = int((self.ttl if ttl is None else ttl) * 1000)
        extended = int(
            await self._scripts.run("lock_extend", keys=[self._key], args=[self._token, millis])
        )
        if not extended:
            self.lost.set()
            raise LockNotOwned(
                f"lock {self.name!r} expired before it could be extended", name=self.name
            )

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.extend()
            except LockNotOwned:
                _log.warning("lock %r was lost while held; its holder should stop", self.name)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying until the TTL runs out
                _log.warning("could not renew lock %r: %s", self.name, exc)

    async def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        await cancel_and_wait(renewer)

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except LockNotOwned:
            if exc is None:
                raise
            # The block already failed; its own error says more than the lost lock.
            _log.warning("lock %r had expired when its failing block ended", self.name)
