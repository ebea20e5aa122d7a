"""``/v1/locks/{name}``: distributed locks held across requests.

A lock over HTTP outlives the request that took it, so what the library keeps inside its
``Lock`` handle, the random token naming the grant, is handed to the client as ``holder``:
extending or releasing needs it, and a client without it (of this tenant or another) is told
``409 LockNotOwned`` while the lock stays as it was. ``fencing_token`` rises with every grant,
for guarding writes (see :mod:`agency_data.coord.locks`). A lock not granted within ``wait``
is ``423 LockNotAcquired``; a lock is never left held for a client that left while waiting.
A name is one path segment: names with a slash are for the library only.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from agency_data.coord.locks import MAX_TTL, MAX_WAIT, MIN_TTL
from agency_data.errors import LockNotAcquired, LockNotOwned
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant
from agency_data.service.routes._waiting import ClientGone, longest_wait, while_connected

__all__ = ["LocksController"]

_HOLDER = r"^[0-9a-f]{32}$"


class Acquire(BaseModel):
    """How long to hold the lock, and how long to wait for it (capped below the service's
    request timeout)."""

    model_config = ConfigDict(extra="forbid")

    ttl: float = Field(30.0, ge=MIN_TTL, le=MAX_TTL)
    wait: float = Field(0.0, ge=0, le=MAX_WAIT)


class Grant(BaseModel):
    """A granted lock: keep ``holder`` to extend or release it."""

    name: str
    holder: str
    fencing_token: int
    expires_at: datetime | None


class Extension(BaseModel):
    """The holder's token, and the lock's new time left (seconds from now)."""

    model_config = ConfigDict(extra="forbid")

    holder: str = Field(pattern=_HOLDER)
    ttl: float = Field(ge=MIN_TTL, le=MAX_TTL)


class Extended(BaseModel):
    """When the lock now expires."""

    name: str
    expires_at: datetime | None


class Release(BaseModel):
    """The holder's token."""

    model_config = ConfigDict(extra="forbid")

    holder: str = Field(pattern=_HOLDER)


class LockState(BaseModel):
    """Whether anyone holds the lock now."""

    name: str
    locked: bool


class LocksController(Controller):
    """Locks of the caller's tenant (a name is a lock of this tenant only)."""

    path = "/v1/locks"
    tags = ["locks"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/{name:str}", guards=[writes], status_code=200, summary="Acquire a lock")
    async def acquire_lock(
        self,
        request: Request[Any, Any, Any],
        tenant: Tenant,
        name: FromPath[str],
        data: JSONBody[Acquire | None] = None,
    ) -> Grant:
        """Take the lock, waiting up to ``wait`` seconds; ``423`` if someone else holds it."""
        wanted = data if data is not None else Acquire()
        lock = tenant.lock(name, ttl=wanted.ttl, wait=longest_wait(request, wanted.wait))

        async def let_go(_: int) -> None:
            # Granted as the client left: nobody has the token, so it is let go now.
            with contextlib.suppress(LockNotOwned):
                await lock.release()

        try:
            fence = await while_connected(request, lock.acquire(), let_go)
        except ClientGone:
            # An answer for nobody: the lock was not left held.
            raise LockNotAcquired(f"lock {name!r}: the client left", name=name) from None
        return Grant(name=name, holder=lock.holder, fencing_token=fence, expires_at=lock.expires_at)

    @post("/{name:str}/extend", guards=[writes], status_code=200, summary="Extend a lock")
    async def extend_lock(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[Extension]
    ) -> Extended:
        """Set the lock's time left to ``ttl``; ``409`` unless ``holder`` holds it."""
        lock = tenant.lock(name, holder=data.holder)
        await lock.extend(data.ttl, replace_ttl=True)
        return Extended(name=name, expires_at=lock.expires_at)

    @post("/{name:str}/release", guards=[writes], status_code=204, summary="Release a lock")
    async def release_lock(
        self, tenant: Tenant, name: FromPath[str], data: JSONBody[Release]
    ) -> None:
        """Let go of the lock; ``409`` unless ``holder`` holds it (it may have expired)."""
        await tenant.lock(name, holder=data.holder).release()

    @get("/{name:str}", guards=[reads], summary="Whether a lock is held")
    async def lock_state(self, tenant: Tenant, name: FromPath[str]) -> LockState:
        """Whether anyone holds the lock now."""
        return LockState(name=name, locked=await tenant.lock(name).locked())
