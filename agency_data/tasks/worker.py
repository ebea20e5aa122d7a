"""A worker loop: claim tasks, run a handler on each under a kept lease, record the outcome.

```
async def summarize(task: Task) -> dict:
    return {"summary": await llm(task.data["text"])}

worker = dl.tasks.worker(summarize, agent_id=agent.id, types=["summarize"], concurrency=8)
await worker.run()            # until worker.stop() (or cancelled)
```

The handler's return value is the task's result; an exception fails the attempt (retried per
the type's policy). A lost lease or a cancelled task cancels the handler. ``stop()`` stops
claiming and lets the running handlers finish; cancelling ``run()`` cancels them, and their
tasks go straight back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from agency_data._tasks import cancel_and_wait
from agency_data.errors import (
    BackendUnavailable,
    LeaseLost,
    NotFound,
    QueryError,
    TaskCancelled,
)
from agency_data.inputs import as_list, as_uuid, check_callable, check_int, check_seconds
from agency_data.models import Task
from agency_data.retry import Backoff

if TYPE_CHECKING:
    from agency_data.tasks.queue import Job, QueueOps

__all__ = ["Handler", "Worker"]

_log = logging.getLogger("agency_data.tasks")
Handler = Callable[[Task], Awaitable[Any]]


class Worker:
    """Runs ``handler`` on claimed tasks, up to ``concurrency`` at once, until stopped."""

    def __init__(
        self,
        queue: QueueOps,
        handler: Handler,
        *,
        agent_id: UUID | str,
        types: Sequence[str] | None = None,
        concurrency: int = 1,
        lease_seconds: float | None = None,
    ) -> None:
        self._queue = queue
        self._handler = check_callable(handler, "handler")
        self._agent = as_uuid(agent_id, "agent_id")
        self._types = as_list(types, "types", str)
        self._concurrency = check_int(concurrency, "concurrency", 1, 1000)
        self._lease = (
            None
            if lease_seconds is None
            else check_seconds(lease_seconds, "lease_seconds", low=0.05, high=86_400)
        )
        self._stopping = asyncio.Event()
        #: How many tasks this worker completed, failed, and lost (lease or cancellation).
        self.completed = 0
        self.failed = 0
        self.lost = 0

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once the running handlers finish."""
        self._stopping.set()

    async def run(self, *, max_tasks: int | None = None) -> int:
        """Work until :meth:`stop` (or ``max_tasks`` tasks taken); how many were taken.

        A claim that fails (PostgreSQL unreachable, a timeout) is logged and tried again
        after a backoff: a worker outlives an outage.
        """
        if max_tasks is not None:
            check_int(max_tasks, "max_tasks", 1, 2**31 - 1)
        running: set[asyncio.Task[None]] = set()
        taken = 0
        backoff = Backoff(first=0.5, most=30.0)
        stopping = asyncio.create_task(self._stopping.wait())
        claiming: asyncio.Task[list[Task]] | None = None
        try:
            while not self._stopping.is_set() and (max_tasks is None or taken < max_tasks):
                free = self._concurrency - len(running)
                if free == 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if max_tasks is not None:
                    free = min(free, max_tasks - taken)
                claiming = asyncio.create_task(
                    self._queue.claim(
                        self._agent, self._types, free, wait=60.0, lease_seconds=self._lease
                    )
                )
                await asyncio.wait({claiming, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not claiming.done():
                    break
                try:
                    claimed = claiming.result()
                except (BackendUnavailable, QueryError) as exc:
                    _log.warning("claiming failed (%s); trying again", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            asyncio.shield(stopping), timeout=backoff.next_delay()
                        )
                    continue
                backoff.reset()
                for task in claimed:
                    taken += 1
                    runner = asyncio.create_task(self._run_one(task), name=f"task {task.id}")
                    running.add(runner)
                    runner.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
        finally:
            # A claim cut short by stop() or by cancelling run() (if it got tasks in the
            # meantime, their leases run out and they go to other workers).
            if claiming is not None and not claiming.done():
                await cancel_and_wait(claiming)
            await cancel_and_wait(stopping)
            for runner in list(running):
                await cancel_and_wait(runner)
        return taken

    async def _run_one(self, task: Task) -> None:
        job: Job | None = None
        try:
            async with self._queue.working(task, lease_seconds=self._lease) as job:
                job.result = await self._handler(task)
        except Exception as exc:  # noqa: BLE001 - recorded by working(); the loop must go on
            if _about(exc, task) or (job is not None and job.lost is not None):
                self.lost += 1
                _log.info("stopped working on task %s: %s", task.id, exc)
            else:
                self.failed += 1
                _log.exception("task %s failed", task.id)
        else:
            self.completed += 1


def _about(error: Exception, task: Task) -> bool:
    """Whether ``error`` says the task itself is gone (lost, cancelled, deleted), rather
    than something the handler ran into."""
    if isinstance(error, LeaseLost | TaskCancelled):
        return bool(error.task_id == task.id)
    return isinstance(error, NotFound) and error.entity == "task" and error.key == task.id
