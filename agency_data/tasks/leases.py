"""The leases this process holds: their tokens, and the heartbeats that keep them alive.

Every claim leases its tasks for a while and gives each a fresh token. The keeper remembers the
token of every task this process claimed, so that ``complete(task.id)`` is fenced even when the
caller passes only the id, and it heartbeats the leases it is asked to keep: all of them in one
statement per tenant, however many tasks run, a little before a third of their lease is gone.

A heartbeat that finds its lease gone (the lease ran out and another claim rescued the task, or
someone cancelled it) reports the loss to whoever kept the lease (``working()`` cancels its
body) and stops.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from agency_data._tasks import cancel_and_wait
from agency_data.actor import current_actor
from agency_data.errors import AgencyDataError, LeaseLost, NotFound, TaskCancelled
from agency_data.models import Task
from agency_data.postgres.database import Database
from agency_data.tasks import _sql

__all__ = ["AMBIGUOUS", "LeaseKeeper", "lease_length", "lost_lease"]

_log = logging.getLogger("agency_data.tasks")
# Tokens of the tasks claimed here, kept after they finish or are lost: a late call by bare id
# of a worker that lost its lease stays fenced, and a resent completion is recognised. Bounded,
# oldest first (an evicted task is still fenced when the caller passes the Task it claimed).
_MAX_TOKENS = 20_000
# A heartbeat goes out when a third of the lease is gone; ones due within a quarter of that
# step go with it, so that a thousand leases share a few statements rather than a thousand.
_BEAT_FRACTION = 1 / 3
_GATHER_FRACTION = 0.25
_MIN_STEP = 0.05

LostHook = Callable[[AgencyDataError], None]
#: The token of a task this process claimed more than once: a bare id is not enough.
AMBIGUOUS = UUID(int=0)


def lost_lease(
    task_id: UUID, row: Mapping[str, Any] | None, token: UUID | None, action: str
) -> AgencyDataError:
    """The error for a worker whose ``action`` found its lease gone; ``row`` is the task now."""
    if row is None:
        return NotFound(f"task {task_id} does not exist", entity="task", key=task_id)
    status = row["status"]
    if status == "cancelled":
        reason = row["error"]
        return TaskCancelled(
            f"task {task_id} was cancelled ({reason or 'no reason given'}); stop working on it"
            f" (the {action} changed nothing)",
            task_id=task_id,
            reason=reason,
        )
    held_by_other = token is not None and row["lease_token"] != token
    what = {
        "pending": "it went back to the queue (its lease ran out, or the attempt was failed)",
        "dead": "its lease ran out and it used up its attempts (dead)",
        "running": "it is held under another lease token (its lease ran out and it was "
        "claimed again, or the token given is not this claim's)",
        "completed": "it was completed by someone else"
        if held_by_other
        else "it is already completed",
        "failed": "it was failed by someone else" if held_by_other else "it already failed",
    }.get(status, f"it is {status}")
    return LeaseLost(
        f"task {task_id} is no longer yours: {what}; the {action} changed nothing",
        task_id=task_id,
        status=status,
    )


@dataclass(slots=True, eq=False)
class _Beat:
    tenant: str
    task_id: UUID
    token: UUID
    lease_seconds: float | None
    step: float
    due: float
    on_lost: LostHook | None = field(default=None)
    # Who claimed it (as_actor): its heartbeats are made in that name, as its writes are.
    actor: str | None = field(default=None)


class LeaseKeeper:
    """Lease tokens and background heartbeats for one DataLayer."""

    def __init__(self, db: Database, defaults: _sql.Defaults) -> None:
        self._db = db
        self._defaults = defaults
        # Each task claimed here -> its token, whether this process finished with it, and
        # the lease length it was claimed with. A task claimed again while an earlier claim
        # of it here was never finished (its lease ran out under a slow worker) maps to
        # AMBIGUOUS: a bare id cannot say which claim it speaks for.
        self._tokens: OrderedDict[UUID, tuple[UUID, bool, float | None]] = OrderedDict()
        self._beats: dict[UUID, _Beat] = {}
        # Leases kept inside a transaction: they start beating when it commits.
        self._deferred: dict[UUID, _Beat] = {}
        self._views: dict[str, Database] = {}
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # -- tokens --------------------------------------------------------------------------------

    def remember(self, tasks: Iterable[Task]) -> None:
        """Note the lease tokens of tasks this process just claimed."""
        for task in tasks:
            if task.lease_token is not None:
                known = self._tokens.get(task.id)
                ambiguous = known is not None and not known[1]
                token = AMBIGUOUS if ambiguous else task.lease_token
                self._tokens[task.id] = (token, False, lease_length(task))
                self._tokens.move_to_end(task.id)
        # Oldest first, but never a lease still kept here (its bare id must stay fenced).
        for _ in range(len(self._tokens) - _MAX_TOKENS):
            task_id, entry = self._tokens.popitem(last=False)
            if task_id in self._beats:
                self._tokens[task_id] = entry

    def token(self, task_id: UUID) -> UUID | None:
        """The lease token this process got for ``task_id`` (:data:`AMBIGUOUS` if several)."""
        known = self._tokens.get(task_id)
        return None if known is None else known[0]

    def lease_of(self, task_id: UUID) -> float | None:
        """The lease length ``task_id`` was claimed (or is kept) with here, if known."""
        beat = self._beats.get(task_id)
        if beat is not None:
            return beat.lease_seconds
        known = self._tokens.get(task_id)
        return None if known is None else known[2]

    def finished(self, task_id: UUID, token: UUID) -> None:
        """This process finished the claim ``token`` of ``task_id`` (completed, failed, gave
        it back): a later claim of the task here is not ambiguous. Its heartbeats stop."""
        known = self._tokens.get(task_id)
        if known is not None and known[0] == token:
            self._tokens[task_id] = (token, True, known[2])
        self.release(task_id, token)

    def release(self, task_id: UUID, token: UUID | None) -> None:
        """Stop heartbeating the claim ``token`` of ``task_id``; its token is kept.

        Only that claim's: a stale claim's refusal must not stop the current one's beats.
        """
        for kept in (self._beats, self._deferred):
            beat = kept.get(task_id)
            if beat is not None and beat.token == token:
                del kept[task_id]

    # -- heartbeats ----------------------------------------------------------------------------

    @property
    def keeping(self) -> int:
        """How many leases are being heartbeated."""
        return len(self._beats)

    def keep(
        self, task: Task, *, lease_seconds: float | None = None, on_lost: LostHook | None = None
    ) -> None:
        """Heartbeat ``task``'s lease in the background until :meth:`release` or a loss.

        Inside a transaction the heartbeats start when it commits (the claim is not visible
        to other connections before; its row lock keeps the task meanwhile), and never if it
        rolls back.
        """
        if task.lease_token is None:
            return
        # Each heartbeat renews the lease the claim gave (a short lease stays short).
        lease = lease_seconds or lease_length(task) or self._defaults.lease_seconds
        step = max(lease * _BEAT_FRACTION, _MIN_STEP)
        # The first one goes when a third of the lease is gone, counted from the claim: a
        # task kept a while after its claim (the third of a batch) is renewed at once.
        first = step
        if task.lease_expires_at is not None:
            left = (task.lease_expires_at - datetime.now(UTC)).total_seconds()
            first = min(step, max(0.0, left - (lease - step)))
        beat = _Beat(
            task.tenant_id,
            task.id,
            task.lease_token,
            lease,
            step,
            time.monotonic() + first,
            on_lost,
            current_actor.get(),
        )
        transaction = self._db.current_transaction()
        if transaction is not None:
            self._deferred[task.id] = beat
            transaction.on_commit(lambda: self._start(beat))
        else:
            self._start(beat)

    def _start(self, beat: _Beat) -> None:
        if beat.task_id in self._deferred:
            if self._deferred[beat.task_id] is not beat:
                return
            del self._deferred[beat.task_id]
        replaced = self._beats.get(beat.task_id)
        self._beats[beat.task_id] = beat
        if replaced is not None and replaced.token != beat.token and replaced.on_lost:
            # The same task claimed again here: the earlier claim's keeper is told.
            replaced.on_lost(
                LeaseLost(
                    f"task {beat.task_id} is no longer yours: its lease ran out and it was "
                    "claimed again",
                    task_id=beat.task_id,
                    status="running",
                )
            )
        self._changed.set()
        if self._runner is None or self._runner.done():
            # In a context of its own: a copy of the caller's would carry its transaction (a
            # context variable), and every heartbeat would run on that connection long after.
            self._runner = asyncio.create_task(
                self._run(), name="agency-data lease heartbeats", context=contextvars.Context()
            )

    async def heartbeat(
        self, tenant: str, beats: list[tuple[UUID, UUID, float | None]]
    ) -> tuple[dict[UUID, datetime], dict[UUID, AgencyDataError]]:
        """Extend leases now: the new expiry of those still held, and why the others are not."""
        db = self._view(tenant)
        rows = await db.fetch(*_sql.heartbeat(tenant, beats, self._defaults))
        held = {row["id"]: row["lease_expires_at"] for row in rows}
        lost: dict[UUID, AgencyDataError] = {}
        missing = [task_id for task_id, _, _ in beats if task_id not in held]
        if missing:
            found = {row["id"]: row for row in await db.fetch(*_sql.holders(tenant, missing))}
            tokens = {task_id: token for task_id, token, _ in beats}
            for task_id in missing:
                lost[task_id] = lost_lease(
                    task_id, found.get(task_id), tokens[task_id], "heartbeat"
                )
        return held, lost

    async def aclose(self) -> None:
        """Stop heartbeating (the leases then run out in their own time)."""
        runner, self._runner = self._runner, None
        self._beats.clear()
        self._deferred.clear()
        await cancel_and_wait(runner)

    def _view(self, tenant: str) -> Database:
        view = self._views.get(tenant)
        if view is None:
            view = self._views[tenant] = self._db.for_tenant(tenant)
        return view

    async def _run(self) -> None:
        while self._beats:
            self._changed.clear()
            now = time.monotonic()
            due = [b for b in self._beats.values() if b.due <= now + b.step * _GATHER_FRACTION]
            if not due:
                # Woken by the earliest, whose window then gathers those due soon after it.
                wake = min(b.due for b in self._beats.values())
                try:
                    async with asyncio.timeout(max(0.0, wake - now)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            by_claimant: dict[tuple[str, str | None], list[_Beat]] = {}
            for beat in due:
                by_claimant.setdefault((beat.tenant, beat.actor), []).append(beat)
            for (tenant, actor), group in by_claimant.items():
                token = current_actor.set(actor)
                try:
                    await self._send(tenant, group)
                finally:
                    current_actor.reset(token)

    async def _send(self, tenant: str, group: list[_Beat]) -> None:
        try:
            _, lost = await self.heartbeat(
                tenant, [(b.task_id, b.token, b.lease_seconds) for b in group]
            )
        except AgencyDataError as exc:
            # The lease may still hold: try again soon, and let the database decide later.
            _log.warning("heartbeat of %d task leases failed (%s); retrying", len(group), exc)
            retry_at = time.monotonic() + min(1.0, min(b.step for b in group))
            for beat in group:
                beat.due = retry_at
            return
        now = time.monotonic()
        for beat in group:
            error = lost.get(beat.task_id)
            if error is None:
                beat.due = now + beat.step
            elif self._beats.get(beat.task_id) is beat:
                # Still kept: not a task its worker finished while this heartbeat was out.
                del self._beats[beat.task_id]
                if isinstance(error, NotFound):
                    error = LeaseLost(
                        f"task {beat.task_id} is no longer yours: it was deleted",
                        task_id=beat.task_id,
                    )
                _log.warning("%s", error)
                if beat.on_lost is not None:
                    beat.on_lost(error)


def lease_length(task: Task) -> float | None:
    """The lease a claim gave ``task``, in seconds (None if it has none)."""
    if task.lease_expires_at is None or task.started_at is None:
        return None
    seconds = (task.lease_expires_at - task.started_at).total_seconds()
    return seconds if seconds > 0 else None
