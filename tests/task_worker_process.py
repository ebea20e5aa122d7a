"""A task worker as an OS process of its own, for the crash tests (tests/test_task_crashes.py).

``python -u tests/task_worker_process.py MODE`` with the database in ``CRASH_DSN``, Redis in
``CRASH_REDIS_URL`` and the lease (seconds) in ``CRASH_LEASE``. It writes one JSON line per
event on stdout (``ready``, ``claimed``, ``completed``, ``lease_lost``, ``done``), each with
the process id and the wall-clock time. Before each completion it appends a ``completing`` row
to the ``crash_log`` table (committed on its own), and a ``completed`` row once it landed: in
the same transaction as the completion in ``auto`` mode, right after it under ``working()``.

Modes:

- ``auto``: claim one task at a time with ``auto_heartbeat=True``, work ``data["work"]``
  seconds, complete it; exit 0 once nothing is pending or running.
- ``working``: the same under ``dl.tasks.working()``.
- ``stall``: claim one task (auto heartbeats), then block the event loop: no heartbeat can
  go out, as when a process dies between its claim and its first heartbeat (the test kills it).
- ``late``: claim one task, work ``CRASH_LATE_WORK`` seconds, then complete it passing the
  Task; report the outcome (exit 0 for LeaseLost, 1 if the completion landed).
- ``once``: claim one task (waiting up to 30 s), complete it at once, exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

from agency_data import DataLayer, DataLayerConfig
from agency_data.errors import LeaseLost, TaskCancelled
from agency_data.models import Task

PID = os.getpid()
LEASE = float(os.environ.get("CRASH_LEASE", "1.5"))


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "pid": PID, "t": time.time(), **fields}), flush=True)


def config() -> DataLayerConfig:
    return DataLayerConfig(
        postgresql={"dsn": os.environ["CRASH_DSN"], "pool_min_size": 1, "pool_max_size": 3},
        redis={"url": os.environ["CRASH_REDIS_URL"]},
        migration={"auto_migrate": False, "backup_before_migration": False},
        embedded={"data_dir": os.path.join(tempfile.gettempdir(), f"unused-embedded-{PID}")},
    )


async def log(dl: DataLayer, task: Task, event: str) -> None:
    await dl.execute(
        "INSERT INTO crash_log (task_id, pid, token, event) VALUES (%s, %s, %s, %s)",
        [task.id, PID, task.lease_token, event],
    )


async def finish(dl: DataLayer, task: Task) -> bool:
    """Complete ``task`` (audited); whether the completion landed."""
    await log(dl, task, "completing")
    try:
        async with dl.transaction():
            await log(dl, task, "completed")
            await dl.tasks.complete(task, {"by": PID})
    except (LeaseLost, TaskCancelled) as lost:
        say("lease_lost", task=str(task.id), error=type(lost).__name__, status=lost_status(lost))
        await log(dl, task, "lease_lost")
        return False
    say("completed", task=str(task.id))
    return True


def lost_status(error: Exception) -> str | None:
    return getattr(error, "status", None)


async def claim_one(dl: DataLayer, agent: Any, wait: float, auto: bool) -> Task | None:
    claimed = await dl.tasks.claim(
        agent.id, ["crash"], 1, wait=wait, lease_seconds=LEASE, auto_heartbeat=auto
    )
    if not claimed:
        return None
    (task,) = claimed
    say("claimed", task=str(task.id), token=str(task.lease_token), attempts=task.attempts)
    return task


async def loop(dl: DataLayer, agent: Any, mode: str) -> None:
    while True:
        task = await claim_one(dl, agent, 1.0, auto=mode == "auto")
        if task is None:
            left = await dl.tasks.count(status=["pending", "running"])
            if left == 0 and await dl.tasks.count() > 0:
                return
            continue
        if mode == "auto":
            await asyncio.sleep(task.data["work"])
            await finish(dl, task)
            continue
        # As a Worker does: the block's result is the completion, made as the block ends.
        try:
            async with dl.tasks.working(task, lease_seconds=LEASE) as job:
                await asyncio.sleep(task.data["work"])
                await log(dl, task, "completing")
                job.result = {"by": PID}
        except (LeaseLost, TaskCancelled) as lost:
            say("lease_lost", task=str(task.id), error=type(lost).__name__)
            await log(dl, task, "lease_lost")
        else:
            # After the completion landed, not with it: a kill in between leaves no row.
            await log(dl, task, "completed")
            say("completed", task=str(task.id))


async def main(mode: str) -> int:
    async with asyncio.timeout(120), DataLayer(config()) as dl:
        agent = await dl.agents.create(name=f"worker-{PID}", type="worker")
        say("ready", mode=mode)
        if mode in ("auto", "working"):
            await loop(dl, agent, mode)
            say("done")
            return 0
        task = await claim_one(dl, agent, 30.0, auto=mode != "once")
        if task is None:
            say("nothing")
            return 2
        if mode == "stall":
            time.sleep(60)  # noqa: ASYNC251 - on purpose: the event loop (and its heartbeats) stop
            return 4
        if mode == "late":
            await asyncio.sleep(float(os.environ.get("CRASH_LATE_WORK", "3")))
            return 1 if await finish(dl, task) else 0
        if mode == "once":
            return 0 if await finish(dl, task) else 1
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
