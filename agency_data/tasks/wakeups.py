"""Waking workers when tasks become pending, and the outbox relay and change-feed readers when
a transaction that wrote to them commits: one LISTEN connection per DataLayer.

The database sends ``NOTIFY agency_data_tasks, '<tenant>'`` whenever a statement leaves pending
tasks behind (a trigger of the task lifecycle migration), and ``NOTIFY agency_data_outbox`` or
``agency_data_changes`` when a transaction with outbox messages or captured changes commits
(migration 0016). Waiters register *before* they look, so a notification that arrives between
an empty look and the wait is not lost.

LISTEN needs a session of its own: through PgBouncer's transaction pooling, notifications reach
whichever client holds the server connection at that moment, or nobody. Without a direct
connection (``TaskWakeups(None)``), waiters are woken every :data:`POLL_INTERVAL` seconds to
look again instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import psycopg
from psycopg import AsyncConnection

from agency_data._tasks import cancel_and_wait
from agency_data.retry import Backoff

__all__ = ["CHANGES", "CHANNEL", "OUTBOX", "POLL_INTERVAL", "TaskWakeups"]

CHANNEL = "agency_data_tasks"
OUTBOX = "agency_data_outbox"
CHANGES = "agency_data_changes"
# Seconds between wake-ups when there is no direct connection to LISTEN on.
POLL_INTERVAL = 0.5
_log = logging.getLogger("agency_data.tasks")


class TaskWakeups:
    """Tenant-keyed events, set by notifications from PostgreSQL (or by a timer, polling).

    ``conninfo`` must reach PostgreSQL directly; None polls every ``poll_interval`` seconds.
    """

    def __init__(self, conninfo: str | None, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._conninfo = conninfo
        self._poll_interval = poll_interval
        # Keyed by tenant; None: waiters for captured changes (any tenant's).
        self._waiters: dict[str | None, set[asyncio.Event]] = {}
        self._on_outbox: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def subscription(self, tenant: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set whenever ``tenant`` gets pending work, while the block runs."""
        return self._subscription(tenant)

    def changes(self) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set whenever a transaction with captured changes commits, while the
        block runs."""
        return self._subscription(None)

    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop, quickly) whenever a transaction with outbox
        messages commits."""
        self._on_outbox.append(callback)
        self._ensure_listener()

    @asynccontextmanager
    async def _subscription(self, tenant: str | None) -> AsyncIterator[asyncio.Event]:
        self._ensure_listener()
        event = asyncio.Event()
        self._waiters.setdefault(tenant, set()).add(event)
        try:
            # Wait (briefly) for LISTEN to be in place, so the first notification is not missed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), timeout=2.0)
            yield event
        finally:
            waiters = self._waiters.get(tenant)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[tenant]

    async def aclose(self) -> None:
        """Stop listening."""
        listener, self._listener = self._listener, None
        await cancel_and_wait(listener)

    @property
    def polling(self) -> bool:
        """True when waiters are woken by a timer, having no direct connection to LISTEN on."""
        return self._conninfo is None

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            if self._conninfo is None:
                self._listener = asyncio.create_task(self._poll(), name="agency-data task polls")
            else:
                self._listener = asyncio.create_task(
                    self._listen(self._conninfo), name="agency-data task wakeups"
                )

    async def _poll(self) -> None:
        # Nothing to miss between a claim and the wait: the next tick looks again anyway.
        self._listening.set()
        while True:
            await asyncio.sleep(self._poll_interval)
            self._wake_all()

    async def _listen(self, conninfo: str) -> None:
        backoff = Backoff(first=0.1, most=5.0)
        while True:
            try:
                async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute("LISTEN " + CHANNEL)
                    await conn.execute("LISTEN " + OUTBOX)
                    await conn.execute("LISTEN " + CHANGES)
                    self._listening.set()
                    backoff.reset()
                    # A reconnect may have missed notifications: wake everyone to look again.
                    self._wake_all()
                    async for notify in conn.notifies():
                        if notify.channel == OUTBOX:
                            for callback in self._on_outbox:
                                callback()
                        elif notify.channel == CHANGES:
                            for event in self._waiters.get(None, ()):
                                event.set()
                        else:
                            for event in self._waiters.get(notify.payload, ()):
                                event.set()
            except psycopg.Error as exc:
                self._listening.clear()
                _log.warning("task wake-up listener lost its connection (%s); retrying", exc)
                await backoff.sleep()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
        for callback in self._on_outbox:
            callback()
