"""Workers that die: kill -9 and SIGSTOP of real worker processes holding leased tasks.

The acceptance test of the task queue (issue 11): worker processes (tests/task_worker_process.py)
are killed at random moments, one of them between its claim and its first heartbeat; the
survivors finish every task exactly once, after the dead workers' leases run out, with no
daemon but their own claims. A worker stopped past its lease and resumed cannot record its
late completion over the one of the worker that took the task over.

Every completion is audited in ``crash_log``: a ``completing`` row committed before the call,
and a ``completed`` row once it landed (in the same transaction as the completion, except
under ``working()``, where it follows it), so that no completion goes uncounted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.errors import LeaseLost
from tests.conftest import ROLES, DatabaseDsn, make_config, other_connection

LEASE = 1.5
# What "a small margin" is on a slow, shared 2-core runner: the work left after the last kill
# plus the rescue, with room to spare. Speed is not what these tests check.
MARGIN = 20.0
# How much earlier than a lease's end a second claim may appear to happen: the two claim times
# are taken by two processes after their claims returned, and the first may be late to say so.
CLOCK_SLACK = 0.75
SCRIPT = Path(__file__).with_name("task_worker_process.py")
TASKS_PER_RUN = 30


@pytest.fixture
def crash_log(database: DatabaseDsn) -> DatabaseDsn:
    """The audit table the workers write (no tenant column, so no row-level security)."""
    with psycopg.connect(database.owner, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE crash_log (id bigserial PRIMARY KEY, task_id uuid NOT NULL, "
            "pid integer NOT NULL, token uuid, event text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        conn.execute(f"GRANT SELECT, INSERT ON crash_log TO {ROLES.app}")
        conn.execute(f"GRANT USAGE ON SEQUENCE crash_log_id_seq TO {ROLES.app}")
    return database


@dataclass
class WorkerProcess:
    """One worker process, its JSON events as they come, and what the test did to it."""

    mode: str
    process: asyncio.subprocess.Process
    stderr: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self) -> str:
        tail = self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""
        return (
            f"worker {self.pid} ({self.mode}, returncode {self.process.returncode}): "
            f"events {self.events}\nstderr: {tail}"
        )

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    async def read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith("{"):
                self.events.append(json.loads(text))
                self.changed.set()
        self.changed.set()

    async def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first ``event`` this worker reports (it failing to is an assertion error)."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.changed.clear()
                    found = self.of(event)
                    if found:
                        return found[0]
                    if self.reader.done():
                        raise AssertionError(f"no {event!r} before the end: {self.describe()}")
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {event!r} within {timeout} s: {self.describe()}") from None

    async def exit_code(self, timeout: float = 60.0) -> int:
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                assert self.reader is not None
                await self.reader
        except TimeoutError:
            raise AssertionError(f"did not exit within {timeout} s: {self.describe()}") from None
        return code

    def kill(self) -> bool:
        """SIGKILL now; whether it was still running."""
        if self.process.returncode is not None:
            return False
        self.killed_at = time.time()
        self.process.send_signal(signal.SIGKILL)
        return True


@asynccontextmanager
async def worker_pool() -> AsyncIterator[list[WorkerProcess]]:
    """A list for :func:`start_worker` to add to; every worker in it is reaped at the end."""
    workers: list[WorkerProcess] = []
    try:
        yield workers
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGKILL)
        for worker in workers:
            await worker.process.wait()
            if worker.reader is not None:
                await worker.reader


async def start_worker(
    workers: list[WorkerProcess],
    database: str,
    redis_url: str,
    tmp_path: Path,
    mode: str,
    **env: str,
) -> WorkerProcess:
    stderr = tmp_path / f"worker-{len(workers)}-{mode}.stderr"
    with stderr.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            str(SCRIPT),
            mode,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            env={
                **os.environ,
                "CRASH_DSN": str(database),
                "CRASH_REDIS_URL": redis_url,
                "CRASH_LEASE": str(LEASE),
                **env,
            },
        )
    worker = WorkerProcess(mode, process, stderr)
    worker.reader = asyncio.create_task(worker.read())
    workers.append(worker)
    return worker


async def crash_rows(dl: DataLayer) -> list[dict[str, Any]]:
    return await dl.fetch("SELECT task_id, pid, token, event FROM crash_log ORDER BY id")


@pytest.mark.parametrize("run", [1, 2, 3])
async def test_killed_workers_tasks_are_completed_exactly_once_by_the_survivors(
    dl: DataLayer, crash_log: DatabaseDsn, redis_url: str, tmp_path: Path, run: int
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    note = f"(run {run}, seed {seed})"
    async with worker_pool() as workers:
        # One worker stalls right after its claim (its loop blocked: no heartbeat goes out);
        # the others work through the queue, half with auto heartbeats, half under working().
        modes = ["stall"] + ["auto", "working"] * 3 + [rng.choice(["auto", "working"])]
        for mode in modes:
            await start_worker(workers, crash_log, redis_url, tmp_path, mode)
        for worker in workers:
            await worker.wait_for("ready")
        staller = workers[0]

        # Mostly short work, and some longer than the lease: kept only by heartbeats.
        works = [
            2.5 if i % 6 == 5 else round(rng.uniform(0.05, 0.6), 3) for i in range(TASKS_PER_RUN)
        ]
        tasks = await dl.tasks.create_many(
            [{"type": "crash", "data": {"work": w}, "max_attempts": 50} for w in works]
        )
        created = time.monotonic()
        # Drawn up front, so that the seed alone says who dies when.
        stall_kill = rng.uniform(0.0, 0.3)
        victims = rng.sample(workers[1:], rng.choice([1, 2]))
        moments = [rng.uniform(0.2, 2.5) for _ in victims]

        async def kill_after_claim() -> None:
            await staller.wait_for("claimed")
            await asyncio.sleep(stall_kill)
            assert staller.kill(), staller.describe()

        async def kill_at(worker: WorkerProcess, at: float) -> None:
            await asyncio.sleep(max(0.0, created + at - time.monotonic()))
            worker.kill()

        await asyncio.gather(
            kill_after_claim(), *(kill_at(v, at) for v, at in zip(victims, moments, strict=True))
        )
        killed = [w for w in workers if w.killed_at is not None]
        last_kill = time.monotonic()
        survivors = [w for w in workers if w.killed_at is None]
        assert len(survivors) >= 5, note

        # No sweeper runs: the survivors' own claims rescue the dead workers' tasks.
        deadline = last_kill + LEASE + MARGIN
        while await dl.tasks.count(status=["pending", "running"]) > 0:
            left = await dl.tasks.list(status=["pending", "running"])
            assert time.monotonic() < deadline, (
                f"tasks still unfinished {LEASE + MARGIN} s after the last kill {note}: "
                f"{[(t.id, t.status, t.attempts) for t in left.items]}\n"
                + "\n".join(w.describe() for w in workers)
            )
            await asyncio.sleep(0.1)
        for worker in survivors:
            code = await worker.exit_code()
            assert code == 0, worker.describe()
            assert worker.of("done"), worker.describe()

    final = {t.id: t for t in await dl.tasks.get_many([t.id for t in tasks])}
    log = await crash_rows(dl)
    completions = [r for r in log if r["event"] == "completed"]
    by_task = Counter(r["task_id"] for r in completions)
    survivor_pids = {w.pid for w in survivors}
    assert len(final) == TASKS_PER_RUN
    working_killed = {w.pid for w in killed if w.mode == "working"}
    for task in final.values():
        # Completed, and by exactly one completion that landed: the one its result names.
        rows = [r for r in log if r["task_id"] == task.id]
        assert task.status == "completed", (task, note)
        assert by_task[task.id] <= 1, (task.id, rows, note)
        if by_task[task.id] == 1:
            (winner,) = [r for r in completions if r["task_id"] == task.id]
            assert task.result == {"by": winner["pid"]}, (task, winner, note)
        else:
            # Only under working(), whose completion row follows the completion, and only if
            # the worker was killed in between.
            assert task.result is not None, (task, note)
            assert task.result["by"] in working_killed, (task, rows, note)
            assert (task.result["by"], "completing") in [(r["pid"], r["event"]) for r in rows]
    # Every worker that lived was told the truth: its reported completions are exactly the
    # ones that landed, and each refused one was completed by somebody else.
    for worker in survivors:
        said = {UUID(e["task"]) for e in worker.of("completed")}
        landed = {r["task_id"] for r in completions if r["pid"] == worker.pid}
        assert said == landed, (worker.describe(), note)
        for event in worker.of("lease_lost"):
            assert final[UUID(event["task"])].result != {"by": worker.pid}, note

    # What the killed workers held went to another worker, after a second attempt: mostly a
    # survivor, or a worker that completed it before it was killed in turn.
    rescued = 0
    all_pids = {w.pid for w in workers}
    for worker in killed:
        landed = {t.id for t in final.values() if t.result == {"by": worker.pid}}
        for event in worker.of("claimed"):
            task = final[UUID(event["task"])]
            if task.id in landed:
                continue
            rescued += 1
            assert task.result is not None, note
            assert task.result["by"] in all_pids - {worker.pid}, (task, worker.describe(), note)
            assert task.attempts >= 2, (task, note)
    (stalled,) = staller.of("claimed")
    # The task of the worker killed between its claim and its first heartbeat, above all: done
    # by a survivor, or by a worker killed later, after it had completed it (CI met one).
    rescuer = {w.pid: w for w in workers}[final[UUID(stalled["task"])].result["by"]]
    assert rescuer is not staller, note
    assert staller.killed_at is not None, note
    if rescuer.pid not in survivor_pids:
        assert rescuer.killed_at is not None, note
        assert rescuer.killed_at > staller.killed_at, note
    assert rescued >= 1, note

    # Nobody took a task from a live lease: every second claim of a task came a lease later.
    claims: dict[str, list[float]] = {}
    for worker in workers:
        for event in worker.of("claimed"):
            claims.setdefault(event["task"], []).append(event["t"])
    for task_id, times in claims.items():
        times.sort()
        for first, then in itertools.pairwise(times):
            assert then - first >= LEASE - CLOCK_SLACK, (task_id, times, note)


async def test_a_worker_stopped_past_its_lease_cannot_complete_late(
    dl: DataLayer, crash_log: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    task = await dl.tasks.create("crash", {"work": 0.0})
    async with worker_pool() as workers:
        late = await start_worker(
            workers, crash_log, redis_url, tmp_path, "late", CRASH_LATE_WORK="3"
        )
        claimed = await late.wait_for("claimed")
        late.process.send_signal(signal.SIGSTOP)
        try:
            held = await dl.tasks.get(task.id)
            assert held.status == "running", late.describe()
            token = await dl.fetch_value("SELECT lease_token FROM tasks WHERE id = %s", [task.id])
            assert str(token) == claimed["token"]

            # Another worker takes the task once the lease has run out, and completes it.
            rescuer = await start_worker(workers, crash_log, redis_url, tmp_path, "once")
            assert await rescuer.exit_code() == 0, rescuer.describe()
            retaken = await rescuer.wait_for("claimed")
            assert retaken["attempts"] == 2
            assert retaken["t"] - claimed["t"] >= LEASE - CLOCK_SLACK
            done = await dl.tasks.get(task.id)
            assert done.status == "completed"
            assert done.result == {"by": rescuer.pid}
        finally:
            late.process.send_signal(signal.SIGCONT)

        # The stopped worker wakes up and completes: refused, and it says so.
        assert await late.exit_code() == 0, late.describe()
        (lost,) = late.of("lease_lost")
        assert lost["error"] == "LeaseLost"
        assert lost["status"] == "completed"
        assert not late.of("completed")

    after = await dl.tasks.get(task.id)
    assert after == done
    log = [(r["pid"], r["event"]) for r in await crash_rows(dl)]
    # It did try (the row before its call is there); only the rescuer's completion landed.
    assert (late.pid, "completing") in log
    assert (late.pid, "completed") not in log
    assert [e for e in log if e[1] == "completed"] == [(rescuer.pid, "completed")]


async def test_complete_by_id_stays_fenced_after_a_heartbeat_found_the_lease_lost(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # "An id this process claimed is fenced too", also once a heartbeat (explicit here; the
    # background one does the same) found the lease gone: the stalled worker's late
    # complete(task.id) must not go through as an operator's override, over the task another
    # worker now holds. (It did while a lost lease's token was forgotten.)
    task = await dl.tasks.create("crash")
    async with DataLayer(make_config(database, redis_url, tmp_path)) as other:
        me = await dl.agents.create(name="stalled", type="worker")
        them = await other.agents.create(name="rescuer", type="worker")
        (mine,) = await dl.tasks.claim(me.id, ["crash"], lease_seconds=0.2)
        await asyncio.sleep(0.5)
        (theirs,) = await other.tasks.claim(them.id, ["crash"], wait=10, lease_seconds=30)
        assert theirs.id == mine.id == task.id
        with pytest.raises(LeaseLost):
            await dl.tasks.heartbeat(task.id)

        outcome = "completed"
        try:
            await dl.tasks.complete(task.id, {"by": "stalled"})
        except LeaseLost:
            outcome = "refused"
        now = await other.tasks.get(task.id)
        token = await other.fetch_value("SELECT lease_token FROM tasks WHERE id = %s", [task.id])
        assert (outcome, now.status, now.result, token) == (
            "refused",
            "running",
            None,
            theirs.lease_token,
        )
        await other.tasks.complete(theirs, {"by": "rescuer"})


async def test_a_claim_without_wait_takes_the_task_it_rescues(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # A worker polling claim() without wait (while batch := await claim(...)) must get the
    # task whose lease it rescues, not stop with it left behind. (It did while the rescue ran
    # in a CTE of the claim statement, whose other parts do not see its update.)
    task = await dl.tasks.create("crash")
    me = await dl.agents.create(name="stalled", type="worker")
    await dl.tasks.claim(me.id, ["crash"], lease_seconds=0.2)
    await asyncio.sleep(0.5)
    async with DataLayer(make_config(database, redis_url, tmp_path)) as other:
        them = await other.agents.create(name="rescuer", type="worker")
        claimed = await other.tasks.claim(them.id, ["crash"])
        assert [t.id for t in claimed] == [task.id]


async def test_working_block_that_completed_is_not_told_its_lease_was_lost(
    dl: DataLayer,
) -> None:
    # A heartbeat in flight while job.complete() runs finds the task completed (by this very
    # worker). That is not a lost lease: the block must not be cancelled with LeaseLost for
    # a task whose completion landed.
    agent = await dl.agents.create(name="w", type="worker")
    task = await dl.tasks.create("crash")
    (claimed,) = await dl.tasks.claim(agent.id, ["crash"])
    release = asyncio.Event()
    locked = asyncio.Event()

    async def hold_row() -> None:
        async with other_connection(dl) as conn:
            await conn.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", [task.id])
            locked.set()
            await release.wait()

    async def work() -> str:
        try:
            async with dl.tasks.working(claimed, lease_seconds=0.6) as job:
                await job.complete({"by": "me"})
                await asyncio.sleep(1.0)  # more work after the completion, e.g. notifying
        except LeaseLost:
            return "told the lease was lost"
        return "completed"

    holder = asyncio.create_task(hold_row())
    await locked.wait()
    worker = asyncio.create_task(work())
    # The completion waits on the row lock first; the next heartbeat (a third of the lease
    # later) queues behind it.
    for _ in range(500):
        waiting = await dl.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        if waiting >= 2:
            break
        await asyncio.sleep(0.02)
    else:
        raise RuntimeError("the completion and the heartbeat never both waited on the row")
    release.set()
    await holder
    outcome = await worker
    done = await dl.tasks.get(task.id)
    assert (done.status, done.result) == ("completed", {"by": "me"})
    assert outcome == "completed"
