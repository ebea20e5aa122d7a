"""Working the queue: claims under leases, heartbeats, results, retries and dead letters.

A claim leases each task it takes for ``lease_seconds`` and gives it a fresh token. Whatever the
worker then does to the task (heartbeat, complete, fail) names that token, and the database
accepts it only while the task is still running under it: a worker whose lease ran out and whose
task went to another cannot record a second result (:class:`~agency_data.errors.LeaseLost`).
Expired leases are rescued by the claims themselves (a statement of their own, sent before the
claim query at most every ``tasks.rescue_interval`` seconds per process and tenant) and by
:meth:`QueueOps.sweep`; no daemon is needed for correctness.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import traceback as tb
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from agency_data.errors import (
    AgencyDataError,
    BackendUnavailable,
    DecryptionError,
    QueryError,
    StorageFull,
    ValidationError,
)
from agency_data.inputs import (
    as_items,
    as_list,
    as_uuid,
    check_bool,
    check_int,
    check_seconds,
    check_text,
    encode_json,
)
from agency_data.models import Task, TaskStats
from agency_data.observability import observed
from agency_data.retry import Backoff
from agency_data.security.fields import sealed_limit
from agency_data.tasks import _sql
from agency_data.tasks.leases import AMBIGUOUS, lease_length, lost_lease
from agency_data.tasks.policies import check_lease

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.tasks.runtime import TaskRuntime

__all__ = ["MAX_CLAIM_WAIT", "Job", "QueueOps"]

_log = logging.getLogger("agency_data.tasks")
# The longest a claim waits for work: a worker's long poll, not a way to sleep for days.
MAX_CLAIM_WAIT = 3600.0
_MAX_CLAIM = 1000
_MAX_ERROR = 10_000
_MAX_TRACEBACK = 100_000
_MAX_REQUEUE = 10_000
# A claim woken by its timer looks again no sooner than this, so an expired lease that
# another claimer holds locked cannot spin the loop.
_MIN_NAP = 0.05


class QueueOps:
    """The queue half of :class:`~agency_data.tasks.TaskStore` (shares its database and tenant)."""

    _db: Database
    tenant: str
    _runtime: TaskRuntime

    # -- claiming ------------------------------------------------------------------------------

    @observed("tasks.claim")
    async def claim(
        self,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        n: int = 1,
        *,
        wait: float | None = None,
        lease_seconds: float | None = None,
        auto_heartbeat: bool = False,
    ) -> builtins.list[Task]:
        """Take up to ``n`` due tasks for ``agent_id``: highest priority first, then oldest.

        Each comes back ``running``, assigned to the agent, with ``attempts`` counted and a
        lease (``lease_token``, ``lease_expires_at``) of ``lease_seconds`` (default: the
        type's policy, else ``tasks.lease_seconds``). Keep it with :meth:`heartbeat`,
        :meth:`working` or ``auto_heartbeat=True``; finish it with :meth:`complete` or
        :meth:`fail`. With ``wait`` (seconds, up to :data:`MAX_CLAIM_WAIT`), an empty queue
        is waited on (LISTEN/NOTIFY, and a timer for the next scheduled task or lease
        expiry: no polling) until work arrives or the time is up; the result may be empty.
        Inside a transaction ``wait`` is ignored (a waiting claim would hold it open).
        A cancelled claim takes nothing: tasks its statement had taken when the cancellation
        came go back to the queue untouched (see :meth:`unclaim`) before it propagates.
        """
        agent = as_uuid(agent_id, "agent_id")
        wanted = as_list(types, "types", str)
        check_int(n, "n", 1, _MAX_CLAIM)
        if wait is not None:
            wait = check_seconds(wait, "wait", high=MAX_CLAIM_WAIT)
        lease = check_lease(lease_seconds)
        check_bool(auto_heartbeat, "auto_heartbeat")
        runtime = self._runtime
        rescue = runtime.rescue_due(self.tenant)
        wakeups = runtime.wakeups
        if not wait or wakeups is None or self._db.in_transaction:
            claimed = await self._claim_safely(agent, wanted, n, lease, rescue)
        else:
            deadline = time.monotonic() + wait
            async with wakeups.subscription(self.tenant) as woken:
                while True:
                    woken.clear()
                    claimed = await self._claim_safely(agent, wanted, n, lease, rescue)
                    remaining = deadline - time.monotonic()
                    if claimed or remaining <= 0:
                        break
                    until = await self._db.fetch_value(*_sql.next_wake(self.tenant, wanted))
                    nap = remaining if until is None else min(remaining, max(until, _MIN_NAP))
                    try:
                        async with asyncio.timeout(nap):
                            await woken.wait()
                        rescue = runtime.rescue_due(self.tenant)
                    except TimeoutError:
                        # The timer: a task fell due or a lease ran out (or the time is up).
                        rescue = True
        if auto_heartbeat:
            for task in claimed:
                runtime.leases.keep(task, lease_seconds=lease)
        return claimed

    async def _claim_safely(
        self, agent: UUID, types: list[str] | None, n: int, lease: float | None, rescue: bool
    ) -> builtins.list[Task]:
        """:meth:`_claim`, which a cancellation cannot cut off between the database taking
        tasks and the caller getting them: the claim runs to its end, what it took goes back
        to the queue untouched, and then the cancellation goes on. Without this, a claim
        cancelled while its statement ran would leave its tasks leased to nobody until the
        lease ran out (and the attempt counted)."""
        if self._db.in_transaction:
            # Cancelled, the transaction rolls back, and its claims with it.
            return await self._claim(agent, types, n, lease, rescue)
        claiming = asyncio.ensure_future(self._claim(agent, types, n, lease, rescue))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            await _shielded(self._hand_back(claiming))
            raise

    async def _hand_back(self, claiming: asyncio.Future[builtins.list[Task]]) -> None:
        try:
            claimed = await claiming
        except Exception:  # noqa: BLE001 - a failed claim took nothing, and its caller is gone
            return
        if claimed:
            try:
                await self.unclaim(claimed)
            except AgencyDataError as error:
                _log.warning(
                    "%d tasks of a cancelled claim were not handed back (%s); their leases "
                    "will run out",
                    len(claimed),
                    error,
                )

    @observed("tasks.unclaim")
    async def unclaim(self, tasks: Iterable[Task]) -> builtins.list[UUID]:
        """Hand tasks a claim returned back to the queue as if never claimed: pending at
        their place in the queue, the attempt not counted, the lease token void.

        For claims whose claimant never got them (a cancelled claim, a reply that could not
        be delivered); a worker that began on a task fails it instead. Tasks no longer held
        under the token they were claimed with are left alone. Returns the ids handed back.
        """
        held: builtins.list[tuple[UUID, UUID]] = []
        for index, task in enumerate(as_items(tasks, "tasks")):
            if not isinstance(task, Task) or task.lease_token is None:
                raise ValidationError(
                    f"tasks[{index}] must be a Task a claim returned (with its lease_token)",
                    field="tasks",
                )
            if task.tenant_id != self.tenant:
                raise ValidationError(
                    f"task {task.id} belongs to tenant {task.tenant_id!r}, not {self.tenant!r}",
                    field="tasks",
                )
            held.append((task.id, task.lease_token))
        if not held:
            return []
        rows = await self._db.fetch(*_sql.unclaim(self.tenant, held))
        for task_id, token in held:
            self._runtime.leases.finished(task_id, token)
        return [row["id"] for row in rows]

    async def _claim(
        self, agent: UUID, types: list[str] | None, n: int, lease: float | None, rescue: bool
    ) -> builtins.list[Task]:
        if rescue:
            await self._db.fetch(*_sql.rescue(self.tenant))
        query, params = _sql.claim(self.tenant, agent, types, n, lease, self._runtime.defaults)
        claimed = await self._opened_claims(await self._db.fetch(query, params))
        self._runtime.leases.remember(claimed)
        return claimed

    async def _opened_claims(self, rows: builtins.list[dict[str, Any]]) -> builtins.list[Task]:
        # One by one: a task whose data can no longer be decrypted (its key destroyed) must
        # not take the others claimed with it down. It is failed for good, saying why.
        cipher = self._db.cipher
        await cipher.ensure_rows(Task, rows, self.tenant)
        claimed: builtins.list[Task] = []
        for row in rows:
            try:
                (opened,) = cipher.open_rows(Task, [row], self.tenant)
            except DecryptionError as exc:
                await self._db.execute(
                    *_sql.fail(
                        self.tenant,
                        row["id"],
                        row["lease_token"],
                        f"its data cannot be read: {exc}",
                        None,
                        False,
                        self._runtime.defaults,
                    )
                )
                continue
            claimed.append(Task.model_validate(opened))
        return claimed

    # -- holding -------------------------------------------------------------------------------

    @observed("tasks.heartbeat")
    async def heartbeat(
        self,
        task: Task | UUID | str,
        *,
        lease_seconds: float | None = None,
        lease_token: UUID | str | None = None,
    ) -> datetime:
        """Extend a held task's lease (by ``lease_seconds`` from now); the new expiry.

        Without ``lease_seconds`` the lease is renewed with the length it was claimed with.

        :class:`~agency_data.errors.LeaseLost` if the lease is gone,
        :class:`~agency_data.errors.TaskCancelled` if the task was cancelled.
        """
        task_id, token = self._held(task, lease_token)
        # By default the lease keeps the length it was claimed (or is kept) with.
        lease = check_lease(lease_seconds) or self._runtime.leases.lease_of(task_id)
        if lease is None and isinstance(task, Task):
            lease = lease_length(task)
        if token is None:
            raise ValidationError(
                f"task {task_id} was not claimed by this process; pass the Task you claimed "
                "or its lease_token",
                field="lease_token",
            )
        held, lost = await self._runtime.leases.heartbeat(self.tenant, [(task_id, token, lease)])
        if task_id in lost:
            self._runtime.leases.release(task_id, token)
            raise lost[task_id]
        return held[task_id]

    @observed("tasks.check")
    async def check(
        self, task: Task | UUID | str, *, lease_token: UUID | str | None = None
    ) -> None:
        """Raise if the worker should stop: the task was cancelled or its lease is gone."""
        task_id, token = self._held(task, lease_token)
        row = await self._db.fetch_one(*_sql.state_of(self.tenant, task_id))
        if (
            row is None
            or row["status"] != "running"
            or (token is not None and row["lease_token"] != token)
        ):
            raise lost_lease(task_id, row, token, "check")

    @asynccontextmanager
    async def working(
        self, task: Task, *, lease_seconds: float | None = None
    ) -> AsyncIterator[Job]:
        """Work on a claimed task with its lease kept alive in the background.

        ```
        async with dl.tasks.working(task) as job:
            job.result = await summarize(task.data)
        ```

        On a clean exit the task completes with ``job.result`` (unless the block called
        ``job.complete`` or ``job.fail``). An exception fails it (error and traceback
        recorded; retried per the policy) and goes on up. If the lease is lost or the task
        is cancelled (or deleted), the block is cancelled and
        :class:`~agency_data.errors.LeaseLost` / :class:`~agency_data.errors.TaskCancelled`
        comes out of it instead. If the block is
        cancelled from outside (a worker shutting down, a timeout), the attempt counts and
        the task goes back to the queue at once (dead if that was its last attempt) rather
        than when its lease runs out. The outcome is recorded even if a second cancellation
        arrives while it is.
        """
        if not isinstance(task, Task) or task.lease_token is None:
            raise ValidationError(
                "working() takes the Task a claim returned (with its lease_token)", field="task"
            )
        if task.tenant_id != self.tenant:
            raise ValidationError(
                f"task {task.id} belongs to tenant {task.tenant_id!r}, not {self.tenant!r}",
                field="task",
            )
        lease = check_lease(lease_seconds)
        body = asyncio.current_task()
        job = Job(self, task)

        def stop(error: AgencyDataError) -> None:
            job._lost = error
            if body is not None and not job._exiting:
                job._stopped_body = True
                body.cancel()

        self._runtime.leases.keep(task, lease_seconds=lease, on_lost=stop)
        try:
            yield job
        except asyncio.CancelledError:
            job._exiting = True
            if job._stopped_body and body is not None and body.uncancel() == 0:
                assert job._lost is not None
                raise job._lost from None
            if job.finished is None and job._lost is None:
                reason = "the attempt was cancelled (the worker stopped, or a timeout cut it short)"
                await _shielded(self._give_back(task, reason))
            raise
        except Exception as exc:
            job._exiting = True
            if job.finished is None and job._lost is None:
                await _shielded(self._record_failure(task, exc))
            raise
        else:
            job._exiting = True
            if job._lost is not None:
                raise job._lost
            if job.finished is None:
                await _shielded(self._finish(job))
        finally:
            job._exiting = True
            self._runtime.leases.release(task.id, task.lease_token)

    async def _finish(self, job: Job) -> None:
        """Complete with ``job.result``: a result that cannot be stored fails the attempt, and
        a completion the database did not answer is sent again while the lease may hold (a
        resent completion is recognised), so that a passing outage does not waste the work."""
        give_up = time.monotonic() + (
            lease_length(job.task) or self._runtime.defaults.lease_seconds
        )
        backoff = Backoff(first=0.2, most=2.0)
        while True:
            try:
                await job.complete(job.result)
                return
            except ValidationError as exc:
                await self._record_failure(job.task, exc)
                raise
            except (BackendUnavailable, QueryError) as exc:
                if isinstance(exc, StorageFull) or time.monotonic() + backoff.first > give_up:
                    raise
                _log.warning("completing task %s failed (%s); sending it again", job.task.id, exc)
                await backoff.sleep(give_up)

    async def _record_failure(self, task: Task, exc: BaseException) -> None:
        try:
            await self.fail(task, exc)
        except AgencyDataError as error:
            _log.warning("could not record the failure of task %s: %s", task.id, error)

    async def _give_back(self, task: Task, reason: str) -> None:
        assert task.lease_token is not None
        try:
            await self._db.fetch_one(
                *_sql.give_back(self.tenant, task.id, task.lease_token, reason)
            )
            self._runtime.leases.finished(task.id, task.lease_token)
        except AgencyDataError as error:
            _log.warning("task %s was not handed back (%s); its lease will run out", task.id, error)

    # -- finishing -----------------------------------------------------------------------------

    @observed("tasks.complete")
    async def complete(
        self,
        task: Task | UUID | str,
        result: Any = None,
        *,
        lease_token: UUID | str | None = None,
        override: bool = False,
    ) -> Task:
        """Mark a running task completed, recording ``result`` (any JSON value).

        Pass the :class:`Task` you claimed (or its ``lease_token``; an id this process
        claimed is fenced too): if the lease was lost meanwhile, nothing changes and
        :class:`~agency_data.errors.LeaseLost` (or
        :class:`~agency_data.errors.TaskCancelled`) is raised. A bare id of a task claimed
        elsewhere completes it whoever holds it: an operator's override. ``override=True``
        makes that explicit (and unfenced even for a task this process claimed, as a
        service does for its clients): it takes a task or id, not a lease token.
        """
        task_id, token = self._held(task, lease_token, override)
        encoded = encode_json(result, "result", self._db.config.max_json_bytes)
        cipher = self._db.cipher
        if cipher.chosen("tasks", "result"):
            await cipher.ensure(self.tenant)
            sealed = cipher.seal(self.tenant, "tasks", "result", task_id, result)
            encoded = encode_json(sealed, "result", sealed_limit(self._db.config.max_json_bytes))
        done = await self._db.fetch_one(
            *_sql.complete(self.tenant, task_id, token, encoded), model=Task
        )
        if done is None:
            done = await self._refused(task_id, token, "completed", "completion")
        self._finished(task_id, token)
        return done

    @observed("tasks.fail")
    async def fail(
        self,
        task: Task | UUID | str,
        error: str | BaseException,
        *,
        retry: bool = True,
        traceback: str | None = None,
        lease_token: UUID | str | None = None,
        override: bool = False,
    ) -> Task:
        """Record a failed attempt of a running task.

        With attempts left (and ``retry``), the task goes back to ``pending``, due after the
        type's backoff (``retry_first`` doubling per attempt up to ``retry_most``, with
        jitter); out of attempts it is ``dead``; with ``retry=False`` it is ``failed`` for
        good. ``error`` is a message or the exception itself (its traceback is then kept
        too). Fenced by the lease like :meth:`complete` (``override`` as there).
        """
        task_id, token = self._held(task, lease_token, override)
        message, trace = _error_text(error, traceback)
        check_bool(retry, "retry")
        cipher = self._db.cipher
        if cipher.chosen("tasks", "error"):
            # A handler's error often quotes its data: sealed like it (traceback included).
            await cipher.ensure(self.tenant)
            message = cipher.seal(self.tenant, "tasks", "error", task_id, message, text=True)
            trace = cipher.seal(self.tenant, "tasks", "traceback", task_id, trace, text=True)
        failed = await self._db.fetch_one(
            *_sql.fail(self.tenant, task_id, token, message, trace, retry, self._runtime.defaults),
            model=Task,
        )
        if failed is None:
            failed = await self._refused(task_id, token, "failed", "failure")
        self._finished(task_id, token)
        return failed

    @observed("tasks.cancel")
    async def cancel(self, task: Task | UUID | str, reason: str | None = None) -> Task:
        """Cancel a pending or running task (its worker learns at its next heartbeat).

        Tasks that depend on it are cancelled too, saying why.
        """
        task_id = _task_id(task)
        if reason is not None:
            check_text(reason, "reason", max_length=_MAX_ERROR)
        cipher = self._db.cipher
        if cipher.chosen("tasks", "error"):
            await cipher.ensure(self.tenant)
            reason = cipher.seal(
                self.tenant, "tasks", "error", task_id, reason or "cancelled", text=True
            )
        cancelled = await self._db.fetch_one(
            *_sql.move(
                self.tenant,
                task_id,
                "cancelled",
                ["pending", "running"],
                reason=reason or "cancelled",
            ),
            model=Task,
        )
        if cancelled is None:
            return await self._refused(task_id, None, "cancelled", "cancel")
        return cancelled

    @observed("tasks.retry")
    async def retry(self, task: Task | UUID | str) -> Task:
        """Put a failed or dead task back in the queue; its next claim counts another attempt."""
        task_id = _task_id(task)
        moved = await self._db.fetch_one(
            *_sql.move(self.tenant, task_id, "pending", ["failed", "dead"]), model=Task
        )
        if moved is None:
            return await self._refused(task_id, None, "pending", "retry")
        return moved

    @observed("tasks.requeue_dead")
    async def requeue_dead(
        self,
        task_ids: Iterable[UUID | str] | None = None,
        *,
        type: str | Sequence[str] | None = None,
        limit: int = 1000,
    ) -> builtins.list[Task]:
        """Send dead tasks (these ids, these types, or all) back to the queue, oldest first.

        Each gets its full ``max_attempts`` again; the last error stays until the next.
        """
        ids = None
        if task_ids is not None:
            ids = [
                as_uuid(i, f"task_ids[{n}]")
                for n, i in enumerate(as_items(task_ids, "task_ids", most=_MAX_REQUEUE))
            ]
        types = as_list(type, "type", str)
        check_int(limit, "limit", 1, _MAX_REQUEUE)
        if ids == []:
            return []
        return await self._db.fetch(*_sql.requeue_dead(self.tenant, ids, types, limit), model=Task)

    @observed("tasks.sweep")
    async def sweep(self) -> dict[str, int]:
        """Rescue tasks whose lease ran out now: how many went back to pending, how many died.

        Claims do this by themselves; call it (or run :meth:`run_scheduler`) when no worker
        claims for a while and dead letters should show promptly.
        """
        rows = await self._db.fetch(*_sql.rescue(self.tenant))
        moved = {"pending": 0, "dead": 0}
        for row in rows:
            moved[row["status"]] += 1
        return moved

    # -- inspecting and steering ---------------------------------------------------------------

    @observed("tasks.stats")
    async def stats(self) -> TaskStats:
        """Counts by status and type, the oldest due task's wait, scheduled, blocked and
        expired-lease counts, the next lease expiry and the paused types."""
        row = await self._db.fetch_one(*_sql.stats(self.tenant))
        assert row is not None
        return TaskStats(
            counts={status: dict(types) for status, types in row["counts"].items()},
            oldest_pending_age=row["oldest_pending_age"],
            scheduled=row["scheduled"],
            blocked=row["blocked"],
            expired_leases=row["expired_leases"],
            next_lease_expiry=row["next_lease_expiry"],
            paused_types=list(row["paused_types"]),
        )

    # -- helpers -------------------------------------------------------------------------------

    def _finished(self, task_id: UUID, token: UUID | None) -> None:
        # An unfenced move (an operator's) holds no lease of this process to close.
        if token is not None:
            self._runtime.leases.finished(task_id, token)

    def _held(
        self, task: Task | UUID | str, lease_token: UUID | str | None, override: bool = False
    ) -> tuple[UUID, UUID | None]:
        """The task's id and the lease token to fence with (None: not held here)."""
        if check_bool(override, "override"):
            if lease_token is not None:
                raise ValidationError(
                    "an override is not fenced: pass override=True or a lease_token, not both",
                    field="lease_token",
                )
            return _task_id(task), None
        if lease_token is not None:
            return _task_id(task), as_uuid(lease_token, "lease_token")
        if isinstance(task, Task):
            return task.id, task.lease_token
        task_id = as_uuid(task, "task")
        token = self._runtime.leases.token(task_id)
        if token == AMBIGUOUS:
            raise ValidationError(
                f"task {task_id} was claimed here more than once (a lease ran out and it was "
                "claimed again): pass the Task you claimed, or its lease_token",
                field="task",
            )
        return task_id, token

    async def _refused(self, task_id: UUID, token: UUID | None, target: str, action: str) -> Task:
        """Why a move changed nothing, as the error to raise (or the task, if it already landed)."""
        row = await self._db.fetch_one(*_sql.state_of(self.tenant, task_id))
        if row is None or (token is not None and row["status"] == "cancelled"):
            raise lost_lease(task_id, row, token, action)
        if token is None or row["lease_token"] == token:
            # Still this holder's task (or no holder named): the state machine refuses.
            if token is not None and row["status"] == target == "completed":
                # This worker's own completion landed already (a resend): report it.
                return Task.model_validate(self._db.cipher.open_rows(Task, [row])[0])
            raise ValidationError(
                f"a task cannot go from {row['status']} to {target}", field="status"
            )
        self._runtime.leases.release(task_id, token)
        raise lost_lease(task_id, row, token, action)


class Job:
    """A claimed task inside :meth:`QueueOps.working`: its lease is kept while the block runs."""

    def __init__(self, queue: QueueOps, task: Task) -> None:
        self.task = task
        #: What the task completes with when the block ends cleanly.
        self.result: Any = None
        #: The task as finished by :meth:`complete` or :meth:`fail`, if the block called one.
        self.finished: Task | None = None
        self._queue = queue
        self._lost: AgencyDataError | None = None
        self._stopped_body = False
        self._exiting = False

    @property
    def lost(self) -> AgencyDataError | None:
        """Why the lease is gone (LeaseLost or TaskCancelled), once a heartbeat found out."""
        return self._lost

    def check(self) -> None:
        """Raise :attr:`lost` if a heartbeat found the lease gone (no round trip)."""
        if self._lost is not None:
            raise self._lost

    async def heartbeat(self) -> datetime:
        """Extend the lease now (the background heartbeats do this anyway)."""
        return await self._queue.heartbeat(self.task)

    async def complete(self, result: Any = None) -> Task:
        """Complete the task with ``result`` now."""
        self.finished = await self._queue.complete(self.task, result)
        return self.finished

    async def fail(self, error: str | BaseException, *, retry: bool = True) -> Task:
        """Record a failed attempt now (see :meth:`QueueOps.fail`)."""
        self.finished = await self._queue.fail(self.task, error, retry=retry)
        return self.finished


def _task_id(task: Task | UUID | str) -> UUID:
    return task.id if isinstance(task, Task) else as_uuid(task, "task")


def _error_text(error: Any, traceback: str | None) -> tuple[str, str | None]:
    if isinstance(error, BaseException):
        message = f"{builtins.type(error).__name__}: {error}".strip()
        if traceback is None and error.__traceback__ is not None:
            traceback = "".join(tb.format_exception(error))
    elif isinstance(error, str):
        message = error
    else:
        raise ValidationError("error must be a message (str) or an exception", field="error")
    if not message.strip():
        raise ValidationError("error must be a non-empty string", field="error")
    if len(message) > _MAX_ERROR:
        if isinstance(error, BaseException):
            message = message[: _MAX_ERROR - 1] + "…"
        else:
            raise ValidationError(
                f"error is over {_MAX_ERROR} characters; shorten it", field="error"
            )
    if traceback is not None:
        check_text(traceback, "traceback", max_length=10 * _MAX_TRACEBACK)
        if len(traceback) > _MAX_TRACEBACK:
            # The end of a traceback is where the error is.
            traceback = "…" + traceback[-(_MAX_TRACEBACK - 1) :]
    return message, traceback


async def _shielded(work: Any) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (however often);
    then the cancellation goes on."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True
            if not task.done():
                continue
        break
    if cancelled:
        raise asyncio.CancelledError
