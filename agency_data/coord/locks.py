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
releasing or extending a lock that expired meanwhile. A cancelled ``acquire()`` never leaves
the lock held: if the grant raced the cancellation, it is given back before the cancellation
propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from agency_data._tasks import cancel_and_wait
from agency_data.errors import LockNotAcquired, LockNotOwned, ValidationError
from agency_data.inputs import check_bool, check_seconds
from agency_data.observability import Telemetry, observed
from agency_data.redis.client import cancelling
from agency_data.redis.keys import Keys, check_key
from agency_data.redis.scripts import ScriptRegistry
from agency_data.retry import Backoff

__all__ = ["ACQUIRE", "EXTEND", "RELEASE", "Lock", "register_lock_scripts"]

_log = logging.getLogger("agency_data.locks")
# Give-backs still running after their acquire() ended; held so they are not collected.
_GIVING_BACK: set[asyncio.Future[None]] = set()

MAX_TTL = 30 * 24 * 3600.0
MAX_WAIT = 24 * 3600.0
MIN_TTL = 0.01

# Returns {fencing token, expiry in Unix ms}, or 0. redis-py resends a command whose reply
# timed out, so a call may run twice: the second finds its own token and reports that grant.
# A token given back (KEYS[3] set by GIVE_BACK) is never granted: a cancelled acquire still
# queued in Redis behind a slow command may run after the give-back sent on another connection.
ACQUIRE = """
if redis.call('EXISTS', KEYS[3]) == 1 then
    return 0
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return {tonumber(redis.call('GET', KEYS[2])), redis.call('PEXPIRETIME', KEYS[1])}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {redis.call('INCR', KEYS[2]), redis.call('PEXPIRETIME', KEYS[1])}
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# ARGV[3] == '1' replaces the TTL; otherwise ARGV[2] ms are added to the expiry the holder
# last saw (ARGV[4], Unix ms), as an absolute time, so that a resent call cannot add twice.
# Returns the new expiry, or 0 when the lock is not the holder's.
EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[3] == '1' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
    local target = tonumber(ARGV[4]) + tonumber(ARGV[2])
    if redis.call('PEXPIRETIME', KEYS[1]) < target then
        redis.call('PEXPIREAT', KEYS[1], target)
    end
end
return redis.call('PEXPIRETIME', KEYS[1])
"""
GIVE_BACK = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
OWNER = """
return redis.call('GET', KEYS[1])
"""


def register_lock_scripts(scripts: ScriptRegistry) -> None:
    """Add the lock scripts to ``scripts``."""
    scripts.register("lock_acquire", ACQUIRE)
    scripts.register("lock_release", RELEASE)
    scripts.register("lock_extend", EXTEND)
    scripts.register("lock_owner", OWNER)
    scripts.register("lock_give_back", GIVE_BACK)


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
        telemetry: Telemetry | None = None,
        holder: str | None = None,
    ) -> None:
        self._telemetry = telemetry if telemetry is not None else Telemetry.off()
        self.name = check_key(name, "name")
        self.ttl = check_seconds(ttl, "ttl", low=MIN_TTL, high=MAX_TTL)
        self.wait = check_seconds(wait, "wait", high=MAX_WAIT)
        self.auto_renew = check_bool(auto_renew, "auto_renew")
        self._on_wait = on_wait
        self._scripts = scripts
        self._keys = keys
        self._key = keys.lock(name)
        self._fence_key = keys.fence(name)
        self._token = uuid.uuid4().hex if holder is None else _check_holder(holder)
        self.fencing_token: int | None = None
        self._expires_ms = 0
        # A handle made with a holder token speaks for that grant (made by another handle,
        # perhaps in another process); Redis decides on release or extend whether it holds.
        self._acquired = holder is not None
        self.lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """True between a successful acquire and release (as far as this holder knows).

        ``fencing_token`` stays set after release: it names the grant this holder had.
        Ask Redis with :meth:`owned`.
        """
        return self._acquired and not self.lost.is_set()

    @property
    def holder(self) -> str:
        """The token naming this holder's grant: whoever presents it may extend or release
        the lock (``Lock(..., holder=...)``), so keep it as secret as the lock is exclusive."""
        return self._token

    @property
    def expires_at(self) -> datetime | None:
        """When the grant expires, as last seen by this handle (None: not known here)."""
        if not self._expires_ms:
            return None
        return datetime.fromtimestamp(self._expires_ms / 1000, UTC)

    async def locked(self) -> bool:
        """Whether anyone holds the lock now (asked of Redis)."""
        return await self._owner() is not None

    async def owned(self) -> bool:
        """Whether this holder holds the lock now (asked of Redis, not remembered)."""
        return await self._owner() == self._token

    @observed("lock.acquire", system="redis")
    async def acquire(self) -> int:
        """Take the lock, waiting up to ``wait`` seconds; return the fencing token."""
        if self._acquired:
            raise LockNotAcquired(
                f"lock {self.name!r} is already held by this holder; release it first",
                name=self.name,
            )
        started = time.monotonic()
        deadline = started + self.wait
        backoff = Backoff(first=0.005, most=0.1)
        try:
            while True:
                granted = await self._scripts.run(
                    "lock_acquire",
                    keys=[self._key, self._fence_key, self._revoked_key(self._token)],
                    args=[self._token, int(self.ttl * 1000)],
                )
                if cancelling():
                    # redis-py can swallow a cancellation that lands mid-read and retry.
                    raise asyncio.CancelledError
                if granted:
                    break
                if time.monotonic() >= deadline:
                    raise LockNotAcquired(
                        f"lock {self.name!r} is held by someone else; gave up after "
                        f"{self.wait:g} s",
                        name=self.name,
                    )
                await backoff.sleep(deadline)
        except LockNotAcquired:
            raise
        except BaseException:
            # The request may have reached Redis and granted the lock all the same.
            await self._give_back()
            raise
        if backoff.attempts and self._on_wait is not None:
            self._on_wait(time.monotonic() - started)
        fence, expires_ms = (int(part) for part in granted)
        self.fencing_token = fence
        self._expires_ms = expires_ms
        self._acquired = True
        self.lost.clear()
        if self.auto_renew:
            self._renewer = asyncio.create_task(self._renew(), name=f"renew lock {self.name}")
        return fence

    @observed("lock.release", system="redis")
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

    @observed("lock.extend", system="redis")
    async def extend(self, additional: float | None = None, *, replace_ttl: bool = False) -> None:
        """Give the lock ``additional`` seconds more; :class:`LockNotOwned` if it was lost.

        With ``replace_ttl`` the lock's time left becomes ``additional`` instead (as in
        redis-py). Without ``additional``, the time left is reset to the lock's own ``ttl``.
        """
        check_bool(replace_ttl, "replace_ttl")
        if additional is None:
            seconds, replace = self.ttl, True
        else:
            seconds = check_seconds(additional, "additional", low=MIN_TTL, high=MAX_TTL)
            replace = replace_ttl
        if not self._acquired:
            raise LockNotOwned(f"lock {self.name!r} is not held by this holder", name=self.name)
        if not replace and not self._expires_ms:
            raise ValidationError(
                "this handle was made from a holder token and does not know the expiry to add "
                "to: pass replace_ttl=True (the time left becomes `additional`)",
                field="replace_ttl",
            )
        expires_ms = int(
            await self._scripts.run(
                "lock_extend",
                keys=[self._key],
                args=[
                    self._token,
                    int(seconds * 1000),
                    "1" if replace else "0",
                    self._expires_ms,
                ],
            )
        )
        if expires_ms > 0:
            self._expires_ms = expires_ms
        else:
            self.lost.set()
            raise LockNotOwned(
                f"lock {self.name!r} expired before it could be extended", name=self.name
            )

    def _revoked_key(self, token: str) -> str:
        return self._keys.lock_revoked(self.name, token)

    async def _owner(self) -> str | None:
        owner = await self._scripts.run("lock_owner", keys=[self._key])
        return owner.decode() if isinstance(owner, bytes) else owner

    async def _give_back(self) -> None:
        # In a task of its own: a second cancellation of the caller must not stop it, and when
        # Redis is slow it keeps trying until the grant it may have made has expired anyway.
        token, self._token = self._token, uuid.uuid4().hex  # the next acquire is a new grant
        task = asyncio.ensure_future(self._release_until_expired(token))
        _GIVING_BACK.add(task)
        task.add_done_callback(_GIVING_BACK.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def _release_until_expired(self, token: str) -> None:
        deadline = time.monotonic() + self.ttl
        backoff = Backoff(first=0.01, most=0.5)
        while True:
            try:
                await self._scripts.run(
                    "lock_give_back",
                    keys=[self._key, self._revoked_key(token)],
                    args=[token, int(self.ttl * 1000) + 1000],
                )
                return
            except Exception as exc:  # noqa: BLE001 - retried until the grant has expired
                if time.monotonic() >= deadline:
                    _log.warning("could not give back lock %r (%r); it expired", self.name, exc)
                    return
            await backoff.sleep(deadline)

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
            if cancelling():
                # A cancellation redis-py swallowed mid-read must still end the renewal.
                raise asyncio.CancelledError

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


def _check_holder(holder: object) -> str:
    # The tokens this module makes: 32 lowercase hex digits (uuid4().hex).
    if not isinstance(holder, str) or len(holder) != 32 or holder.strip("0123456789abcdef"):
        raise ValidationError(
            "holder must be the token a lock's acquire gave (32 hexadecimal digits)",
            field="holder",
        )
    return holder
