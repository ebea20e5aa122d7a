"""The task queue where it used to break: background heartbeats and transactions, workers
through outages and cancellation, results that cannot be stored, late or ambiguous holders,
schedules with bad rules. Each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from agency_data import DataLayer, Task, TaskStatus
from agency_data.errors import Conflict, LeaseLost, ValidationError
from agency_data.migrations import BUILTIN_SOURCE, MigrationRunner
from agency_data.tasks import next_tick
from tests.conftest import ROLES, DatabaseDsn, make_config
from tests.task_support import FAST_RESCUE, agent, seconds_left


@pytest.fixture
async def fast(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path, tasks={**FAST_RESCUE, "lease_seconds": 1.0})
    async with DataLayer(config) as layer:
        yield layer


@pytest.fixture
async def other(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(database, redis_url, tmp_path / "other", tasks=FAST_RESCUE)
    async with DataLayer(config) as layer:
        yield layer


async def test_heartbeats_never_run_in_a_callers_transaction(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    # One connection, so that a leaked transaction would be the one tenant a gets next.
    config = make_config(
        database,
        redis_url,
        tmp_path,
        tasks=FAST_RESCUE,
        postgresql={"pool_min_size": 1, "pool_max_size": 1},
    )
    async with DataLayer(config) as dl:
        b = dl.tenant("b")
        worker = (await b.agents.create(name="w", type="worker")).id
        await b.tasks.create("first")
        await b.tasks.create("second")
        async with b.transaction():
            (first,) = await b.tasks.claim(
                worker, ["first"], auto_heartbeat=True, lease_seconds=0.6
            )
            await b.tasks.complete(first)
        (second,) = await b.tasks.claim(worker, ["second"], auto_heartbeat=True, lease_seconds=0.6)
        a = dl.tenant("a")
        async with a.transaction() as tx:
            await a.fetch_value("SELECT 1")
            await asyncio.sleep(1.0)  # several heartbeats of b's task go out meanwhile
            cursor = await tx.conn.execute(
                "SELECT current_setting('agency_data.tenant') AS tenant, "
                "(SELECT count(*) FROM tasks) AS tasks"
            )
            assert await cursor.fetchone() == {"tenant": "a", "tasks": 0}
        assert await seconds_left(b, second.id) > 0.2, "the heartbeats landed"


async def test_a_cancelled_worker_leaves_no_claim_behind(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    handled: list[UUID] = []

    async def handler(task: Task) -> int:
        handled.append(task.id)
        return 1

    running = asyncio.create_task(dl.tasks.worker(handler, agent_id=worker_id).run())
    await asyncio.sleep(0.5)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    task = await dl.tasks.create("job")
    await asyncio.sleep(1.0)
    assert (await dl.tasks.get(task.id)).status is TaskStatus.PENDING
    assert handled == []


async def test_a_result_that_cannot_be_stored_fails_the_attempt(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    await dl.tasks.create("job")
    (task,) = await dl.tasks.claim(worker_id)
    with pytest.raises(ValidationError):
        async with dl.tasks.working(task) as job:
            job.result = object()
    now = await dl.tasks.get(task.id)
    assert now.status is TaskStatus.PENDING
    assert now.error is not None
    assert "result" in now.error


async def test_a_heartbeat_renews_the_lease_it_was_claimed_with(fast: DataLayer) -> None:
    worker_id = await agent(fast)
    await fast.tasks.create("job")
    (task,) = await fast.tasks.claim(worker_id, lease_seconds=9.0)
    async with fast.tasks.working(task) as job:
        await job.heartbeat()
        assert await seconds_left(fast, task.id) > 8.0, "not the 1 s default"
    held = await fast.tasks.claim(worker_id, lease_seconds=9.0) or []
    assert held == []


async def test_a_worker_outlives_a_query_timeout(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, postgresql={"statement_timeout": 0.5})
    async with DataLayer(config) as dl:
        worker_id = await agent(dl)
        await dl.tasks.create("job")

        async def handler(task: Task) -> str:
            return "done"

        worker = dl.tasks.worker(handler, agent_id=worker_id)
        async with await psycopg.AsyncConnection.connect(database.superuser) as blocker:
            await blocker.execute("LOCK TABLE task_types IN ACCESS EXCLUSIVE MODE")
            running = asyncio.create_task(worker.run(max_tasks=1))
            await asyncio.sleep(1.5)  # claims time out meanwhile
            assert not running.done()
            await blocker.rollback()
        assert await asyncio.wait_for(running, timeout=30) == 1
        assert worker.completed == 1


async def test_a_task_deleted_under_its_worker_counts_as_lost(fast: DataLayer) -> None:
    worker_id = await agent(fast)
    task = await fast.tasks.create("job")
    started = asyncio.Event()

    async def handler(task: Task) -> None:
        started.set()
        await asyncio.sleep(10)

    worker = fast.tasks.worker(handler, agent_id=worker_id, lease_seconds=0.6)
    running = asyncio.create_task(worker.run(max_tasks=1))
    await started.wait()
    await fast.tasks.delete(task.id)
    await asyncio.wait_for(running, timeout=10)
    assert (worker.completed, worker.failed, worker.lost) == (0, 0, 1)


async def test_a_task_always_cut_short_ends_dead(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    task = await dl.tasks.create("job", max_attempts=2)
    for _ in range(2):
        (claimed,) = await dl.tasks.claim(worker_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1), dl.tasks.working(claimed):
                await asyncio.sleep(5)
    now = await dl.tasks.get(task.id)
    assert (now.status, now.attempts) == (TaskStatus.DEAD, 2)
    assert now.error is not None
    assert "cancelled" in now.error


async def test_requeue_dead_tells_a_keyless_task_from_a_key_equal_to_its_id(
    dl: DataLayer,
) -> None:
    worker_id = await agent(dl)
    a = await dl.tasks.create("job", max_attempts=1)
    await dl.tasks.create("job", max_attempts=1, key=str(a.id))
    for claimed in await dl.tasks.claim(worker_id, n=2):
        await dl.tasks.fail(claimed, "boom")
    assert len(await dl.tasks.requeue_dead()) == 2


async def test_working_a_task_claimed_a_while_ago_renews_it_at_once(
    fast: DataLayer, other: DataLayer
) -> None:
    worker_id = await agent(fast)
    await fast.tasks.create("job")
    (task,) = await fast.tasks.claim(worker_id, lease_seconds=3.0)
    await asyncio.sleep(2.7)  # less than a third of the lease left
    async with fast.tasks.working(task) as job:
        await asyncio.sleep(0.6)
        assert await other.tasks.claim(worker_id) == []
        assert await other.tasks.claim(worker_id) == [], "the lease was renewed in time"
        job.result = 1
    assert (await fast.tasks.get(task.id)).status is TaskStatus.COMPLETED


async def test_a_read_task_does_not_act_as_its_holder(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    await dl.tasks.create("job")
    (task,) = await dl.tasks.claim(worker_id)
    read = await dl.tasks.get(task.id)
    assert read.lease_token is None
    await dl.tasks.complete(read, {"by": "operator"})  # an override, unfenced
    with pytest.raises(LeaseLost, match="someone else"):
        await dl.tasks.complete(task, {"by": "worker"})
    assert (await dl.tasks.get(task.id)).result == {"by": "operator"}


async def test_a_bare_id_claimed_twice_here_is_ambiguous(fast: DataLayer) -> None:
    worker_id = await agent(fast)
    await fast.tasks.create("job")
    (first,) = await fast.tasks.claim(worker_id, lease_seconds=0.3)
    await asyncio.sleep(0.6)
    second = await fast.tasks.claim(worker_id)
    assert [t.id for t in second] == [first.id]
    with pytest.raises(ValidationError, match="claimed here more than once"):
        await fast.tasks.complete(first.id, {"by": "first"})
    with pytest.raises(LeaseLost):
        await fast.tasks.complete(first, {"by": "first"})
    done = await fast.tasks.complete(second[0], {"by": "second"})
    assert done.result == {"by": "second"}


async def test_a_key_taken_is_refused_in_words(dl: DataLayer) -> None:
    await dl.tasks.create("a", key="k")
    with pytest.raises(Conflict, match="already holds key 'k'"):
        await dl.tasks.create("a", key="k", on_conflict="raise")


def test_next_tick_refuses_bad_rules_with_typed_errors() -> None:
    utc = datetime(2024, 1, 1, tzinfo=UTC)
    cases: list[dict[str, Any]] = [
        {"after": datetime(2024, 1, 1), "cron": None, "every": 5.0},
        {"after": utc, "cron": None, "every": None},
        {"after": utc, "cron": "nope", "every": None},
        {"after": utc, "cron": "* * * * *", "every": None, "zone": "Nope/Nope"},
        {"after": utc, "cron": "0 0 * * * 0 2027", "every": None},
        {"after": utc, "cron": "H * * * *", "every": None},
        {"after": utc, "cron": "0 0 31 2 *", "every": None},
    ]
    for case in cases:
        with pytest.raises(ValidationError):
            next_tick(**case)


async def test_a_broken_schedule_does_not_stop_the_others(dl: DataLayer) -> None:
    await dl.tasks.schedule("ok", type="fine", every=0.05)
    await dl.tasks.schedule("x" * 190, type="long-name", every=0.05)
    await dl.tasks.schedule("rule-gone", type="broken", every=0.05)
    # A rule that has stopped matching any date (as a stored rule could).
    await dl.execute(
        "UPDATE task_schedules SET cron = '0 0 31 2 *', every_seconds = NULL "
        "WHERE name = 'rule-gone'"
    )
    await asyncio.sleep(0.2)
    enqueued = await dl.tasks.run_due_schedules()
    assert {t.type for t in enqueued} == {"fine", "long-name", "broken"}
    assert all(t.key is not None and len(t.key) <= 200 for t in enqueued)
    schedules = {s.name: s for s in await dl.tasks.schedules()}
    assert schedules["rule-gone"].next_run_at.year == 9999, "it waits until changed"
    assert schedules["ok"].next_run_at.year < 9999


async def test_the_upgrade_leases_running_tasks_and_keeps_their_history(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    runner = MigrationRunner(database.owner, [BUILTIN_SOURCE], role=ROLES)
    await runner.down(to="0008")  # before the task queue (0009) and what came after
    async with await psycopg.AsyncConnection.connect(database.superuser, autocommit=True) as c:
        await c.execute(
            "INSERT INTO tasks (type, status, attempts, created_at, updated_at) VALUES "
            "('old', 'running', 1, '2020-01-01Z', '2020-01-02Z'), "
            "('old', 'completed', 1, '2020-01-01Z', '2020-01-03Z')"
        )
    await runner.up()
    config = make_config(database, redis_url, tmp_path, tasks=FAST_RESCUE)
    async with DataLayer(config) as dl:
        rows = await dl.fetch(
            "SELECT status, updated_at, run_at, created_at, "
            "extract(epoch FROM lease_expires_at - clock_timestamp())::float8 AS left "
            "FROM tasks ORDER BY updated_at"
        )
        assert [r["updated_at"].day for r in rows] == [2, 3], "history kept"
        assert all(r["run_at"] == r["created_at"] for r in rows)
        running, completed = rows
        assert 290 < running["left"] <= 300, "a running task gets five minutes to finish"
        assert completed["left"] is None
        # Once the five minutes are up (forced here), it is rescued like any other.
        await dl.execute(
            "UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
            "WHERE status = 'running'"
        )
        assert await dl.tasks.sweep() == {"pending": 1, "dead": 0}


async def test_a_stale_claims_refusal_leaves_the_live_claims_heartbeats(
    fast: DataLayer,
) -> None:
    worker_id = await agent(fast)
    await fast.tasks.create("job")
    (first,) = await fast.tasks.claim(worker_id, lease_seconds=0.3)
    await asyncio.sleep(0.6)
    (second,) = await fast.tasks.claim(worker_id, lease_seconds=1.0)  # rescued, claimed again
    assert second.id == first.id
    async with fast.tasks.working(second) as job:
        with pytest.raises(LeaseLost):
            await fast.tasks.complete(first, "stale")
        await asyncio.sleep(2.5)  # more than twice the lease
        assert await fast.tasks.sweep() == {"pending": 0, "dead": 0}
        job.result = "fresh"
    assert (await fast.tasks.get(second.id)).result == "fresh"


async def test_working_inside_a_transaction_beats_after_it_commits(fast: DataLayer) -> None:
    worker_id = await agent(fast)
    await fast.tasks.create("job")
    async with fast.transaction():
        (task,) = await fast.tasks.claim(worker_id, lease_seconds=1.0)
        async with fast.tasks.working(task) as job:
            await asyncio.sleep(1.0)  # past a third of the lease: no heartbeat may go yet
            job.result = "ok"
    assert (await fast.tasks.get(task.id)).status is TaskStatus.COMPLETED


async def test_a_handlers_own_not_found_is_a_failure_not_a_lost_task(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    task = await dl.tasks.create("job")

    async def handler(task: Task) -> None:
        await dl.agents.get(uuid4())  # NotFound about an agent, not about the task

    worker = dl.tasks.worker(handler, agent_id=worker_id)
    await worker.run(max_tasks=1)
    assert (worker.failed, worker.lost) == (1, 0)
    assert "does not exist" in str((await dl.tasks.get(task.id)).error)


async def test_a_heartbeat_by_id_keeps_the_claimed_length(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    await dl.tasks.create("job")
    (task,) = await dl.tasks.claim(worker_id, lease_seconds=600)
    await dl.tasks.heartbeat(task.id)
    assert await seconds_left(dl, task.id) > 590


async def test_a_schedule_with_data_now_too_big_skips_only_itself(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as roomy:
        await roomy.tasks.schedule("big", type="big", every=0.2, data={"x": "a" * 2000})
        await roomy.tasks.schedule("small", type="small", every=0.2)
    config = make_config(
        database, redis_url, tmp_path / "tight", postgresql={"max_json_bytes": 500}
    )
    async with DataLayer(config) as dl:
        await asyncio.sleep(0.5)
        scheduler = asyncio.create_task(dl.tasks.run_scheduler())
        await asyncio.sleep(1.5)
        assert not scheduler.done()
        scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler
        assert await dl.tasks.count(type="small") >= 2
        assert await dl.tasks.count(type="big") == 0


def test_next_tick_at_the_end_of_time_is_a_validation_error() -> None:
    end = datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC)
    for rule in ({"every": 60.0, "cron": None}, {"cron": "* * * * *", "every": None}):
        with pytest.raises(ValidationError):
            next_tick(end, **rule)
