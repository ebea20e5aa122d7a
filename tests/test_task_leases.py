"""Task leases end to end: tokens and fencing, rescue, retries and dead letters, cancellation,
working(), the worker loop, stats, pausing, cut-short calls and bad inputs.

Everything runs against the real servers. Lease expiry is either real (a short lease and a
generous sleep) or forced by moving ``lease_expires_at`` into the past with raw SQL; no test
depends on a tight timing bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from agency_data import DataLayer, NotFound, Task, TaskStatus, ValidationError
from agency_data.errors import Conflict, LeaseLost, TaskCancelled
from tests.conftest import DatabaseDsn, make_config
from tests.task_support import FAST_RESCUE, agent, seconds_left, token_of


@pytest.fixture
async def fast(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A DataLayer whose every claim rescues expired leases, with a 45 s default lease."""
    config = make_config(
        database, redis_url, tmp_path, tasks={**FAST_RESCUE, "lease_seconds": 45.0}
    )
    async with DataLayer(config) as layer:
        yield layer


@pytest.fixture
async def other(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A second DataLayer on the same database: another worker process."""
    config = make_config(database, redis_url, tmp_path / "other", tasks=FAST_RESCUE)
    async with DataLayer(config) as layer:
        yield layer


async def expire(dl: DataLayer, task_id: UUID) -> None:
    """Make a running task's lease run out now (as if its worker had stopped heartbeating)."""
    await dl.execute(
        "UPDATE tasks SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE id = %s",
        [task_id],
    )


async def claim_rescued(dl: DataLayer, worker: UUID, **options: Any) -> list[Task]:
    """Claim once an expired lease may be rescued; a second claim if the first only rescued.

    (A claim rescues at most every ``rescue_interval``; and one that rescues does not take the
    rescued task itself, see test_a_single_claim_after_expiry_takes_the_rescued_task.)
    """
    await asyncio.sleep(FAST_RESCUE["rescue_interval"] * 2)
    return await dl.tasks.claim(worker, **options) or await dl.tasks.claim(worker, **options)


def lease_length(task: Task) -> float:
    assert task.lease_expires_at is not None
    assert task.started_at is not None
    return (task.lease_expires_at - task.started_at).total_seconds()


async def wait_until(check: Any, timeout: float = 10.0) -> None:
    """Poll ``check()`` (an async predicate) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- 1. leases ---------------------------------------------------------------------------------


async def test_claim_gives_a_lease_of_the_configured_length(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (claimed,) = await dl.tasks.claim(worker)
    assert claimed.id == task.id
    assert claimed.status is TaskStatus.RUNNING
    assert isinstance(claimed.lease_token, UUID)
    assert claimed.lease_expires_at is not None
    # tasks.lease_seconds defaults to 60.
    assert 59.0 < lease_length(claimed) <= 60.0
    stored = await dl.tasks.get(task.id)
    assert await token_of(dl, stored.id) == claimed.lease_token
    assert stored.lease_expires_at == claimed.lease_expires_at


async def test_lease_length_from_config_call_and_policy(fast: DataLayer) -> None:
    worker = await agent(fast)
    await fast.tasks.create(type="plain")
    (plain,) = await fast.tasks.claim(worker, types=["plain"])
    assert 44.0 < lease_length(plain) <= 45.0, "tasks.lease_seconds of the config"

    await fast.tasks.create(type="plain")
    (short,) = await fast.tasks.claim(worker, types=["plain"], lease_seconds=5)
    assert 4.0 < lease_length(short) <= 5.0, "the call's lease_seconds"
    assert short.lease_token != plain.lease_token

    policy = await fast.tasks.set_policy("slow", lease_seconds=12.5)
    assert policy.lease_seconds == 12.5
    await fast.tasks.create_many([{"type": "slow"}, {"type": "slow"}])
    (by_policy,) = await fast.tasks.claim(worker, types=["slow"])
    assert 11.5 < lease_length(by_policy) <= 12.5, "the type's policy"
    (by_call,) = await fast.tasks.claim(worker, types=["slow"], lease_seconds=3)
    assert 2.0 < lease_length(by_call) <= 3.0, "the call wins over the policy"
    # A heartbeat without lease_seconds renews the lease the claim gave, not the policy's.
    await fast.tasks.heartbeat(by_call)
    assert 2.0 < await seconds_left(fast, by_call.id) <= 3.0


async def test_heartbeat_moves_the_expiry_later(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (claimed,) = await dl.tasks.claim(worker, lease_seconds=5)
    assert claimed.lease_expires_at is not None
    await asyncio.sleep(0.05)
    expiry = await dl.tasks.heartbeat(claimed, lease_seconds=30)
    assert expiry > claimed.lease_expires_at + timedelta(seconds=20)
    stored = await dl.tasks.get(task.id)
    assert stored.lease_expires_at == expiry
    assert await token_of(dl, stored.id) == claimed.lease_token
    assert stored.status is TaskStatus.RUNNING
    assert stored.attempts == 1

    # By bare id (the token this process remembered) and by explicit token.
    again = await dl.tasks.heartbeat(task.id, lease_seconds=40)
    assert again > expiry
    third = await dl.tasks.heartbeat(task.id, lease_seconds=50, lease_token=claimed.lease_token)
    assert third > again
    assert (await dl.tasks.get(task.id)).lease_expires_at == third


async def test_expired_lease_is_rescued_by_a_later_claim(fast: DataLayer, other: DataLayer) -> None:
    first = await agent(fast, "first")
    second = await agent(fast, "second")
    task = await fast.tasks.create(type="t", data={"n": 1})
    (held,) = await fast.tasks.claim(first, lease_seconds=0.3)
    await asyncio.sleep(0.8)  # the lease runs out; nobody heartbeats

    (taken,) = await claim_rescued(other, second)
    assert taken.id == task.id
    assert taken.agent_id == second
    assert taken.attempts == 2
    assert taken.lease_token is not None
    assert taken.lease_token != held.lease_token

    await _old_holder_changes_nothing(fast, held, taken)


async def test_a_single_claim_after_expiry_takes_the_rescued_task(fast: DataLayer) -> None:
    worker = await agent(fast)
    task = await fast.tasks.create(type="t")
    (held,) = await fast.tasks.claim(worker, lease_seconds=0.2)
    await asyncio.sleep(0.6)
    # The only task in the queue is there to be taken (its lease ran out): one claim gets it.
    claimed = await fast.tasks.claim(worker)
    assert [t.id for t in claimed] == [task.id]
    assert claimed[0].attempts == 2
    assert claimed[0].lease_token != held.lease_token


async def _old_holder_changes_nothing(dl: DataLayer, held: Task, now: Task) -> None:
    """The old holder of ``held`` is refused everything; the row stays as ``now``."""
    with pytest.raises(LeaseLost) as info:
        await dl.tasks.complete(held, {"by": "old"})
    assert info.value.status == "running"
    assert info.value.task_id == held.id
    assert isinstance(info.value, Conflict)
    with pytest.raises(LeaseLost):
        await dl.tasks.fail(held, "old holder failed")
    with pytest.raises(LeaseLost):
        await dl.tasks.heartbeat(held)
    with pytest.raises(LeaseLost):
        await dl.tasks.check(held)
    with pytest.raises(LeaseLost):
        await dl.tasks.complete(held.id, {"by": "old"}, lease_token=held.lease_token)
    stored = await dl.tasks.get(held.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(dl, stored.id) == now.lease_token
    assert stored.lease_expires_at == now.lease_expires_at
    assert stored.agent_id == now.agent_id
    assert stored.attempts == now.attempts
    assert stored.result is None
    assert stored.error == now.error


async def test_expired_lease_is_rescued_by_sweep(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.2)
    await asyncio.sleep(0.6)
    assert (await dl.tasks.stats()).expired_leases == 1
    assert await dl.tasks.sweep() == {"pending": 1, "dead": 0}
    assert await dl.tasks.sweep() == {"pending": 0, "dead": 0}

    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.PENDING
    assert await token_of(dl, stored.id) is None
    assert stored.lease_expires_at is None
    assert stored.attempts == 1
    assert stored.error is not None
    assert "lost its lease" in stored.error

    with pytest.raises(LeaseLost) as info:
        await dl.tasks.complete(held, {"late": True})
    assert info.value.status == "pending"
    with pytest.raises(LeaseLost):
        await dl.tasks.fail(held, "late")
    with pytest.raises(LeaseLost):
        await dl.tasks.heartbeat(held)
    after = await dl.tasks.get(task.id)
    assert after.status is TaskStatus.PENDING
    assert after.result is None
    assert after.error == stored.error
    assert after.updated_at == stored.updated_at


async def test_old_holder_by_bare_id_stays_fenced(fast: DataLayer, other: DataLayer) -> None:
    first = await agent(fast, "first")
    second = await agent(fast, "second")
    task = await fast.tasks.create(type="t")
    await fast.tasks.claim(first)
    await expire(fast, task.id)
    (taken,) = await claim_rescued(other, second)
    assert taken.id == task.id

    # The process that claimed it remembers its (now stale) token: fenced.
    with pytest.raises(LeaseLost):
        await fast.tasks.complete(task.id, {"by": "old"})
    stored = await fast.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(fast, stored.id) == taken.lease_token


async def test_old_holder_by_bare_id_stays_fenced_after_the_first_refusal(
    fast: DataLayer, other: DataLayer
) -> None:
    first = await agent(fast, "first")
    second = await agent(fast, "second")
    task = await fast.tasks.create(type="t")
    await fast.tasks.claim(first)
    await expire(fast, task.id)
    (taken,) = await claim_rescued(other, second)

    with pytest.raises(LeaseLost):
        await fast.tasks.complete(task.id, {"by": "old"})
    # The old worker gives up and reports the failure, by id as before.
    with pytest.raises(LeaseLost):
        await fast.tasks.fail(task.id, "giving up")
    stored = await fast.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(fast, stored.id) == taken.lease_token


async def test_complete_with_task_bare_id_and_token(dl: DataLayer) -> None:
    worker = await agent(dl)
    a, b, c = await dl.tasks.create_many([{"type": "t", "data": {"n": n}} for n in range(3)])
    claimed = {t.id: t for t in await dl.tasks.claim(worker, n=3)}
    assert set(claimed) == {a.id, b.id, c.id}

    by_task = await dl.tasks.complete(claimed[a.id], {"via": "task"})
    by_id = await dl.tasks.complete(b.id, {"via": "id"})
    by_token = await dl.tasks.complete(
        str(c.id), {"via": "token"}, lease_token=str(claimed[c.id].lease_token)
    )
    for done, via in ((by_task, "task"), (by_id, "id"), (by_token, "token")):
        assert done.status is TaskStatus.COMPLETED
        assert done.result == {"via": via}
        assert done.finished_at is not None
        assert done.lease_expires_at is None
        assert (await dl.tasks.get(done.id)).result == {"via": via}

    # A resend by the same holder reports the completion that landed; nothing changes.
    again = await dl.tasks.complete(claimed[a.id], {"via": "resend"})
    assert again == by_task
    again = await dl.tasks.complete(c.id, {"x": 1}, lease_token=claimed[c.id].lease_token)
    assert again == by_token
    assert (await dl.tasks.get(a.id)).result == {"via": "task"}
    # Failing what the holder itself completed is refused by the state machine.
    with pytest.raises(ValidationError, match="cannot go from completed to failed") as refused:
        await dl.tasks.fail(claimed[a.id], "too late")
    assert refused.value.field == "status"
    assert (await dl.tasks.get(a.id)).status is TaskStatus.COMPLETED


async def test_wrong_token_is_refused(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker)
    with pytest.raises(LeaseLost) as info:
        await dl.tasks.complete(task.id, {"x": 1}, lease_token=uuid4())
    assert info.value.status == "running"
    with pytest.raises(LeaseLost):
        await dl.tasks.heartbeat(task.id, lease_token=uuid4())
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(dl, stored.id) == held.lease_token
    assert stored.result is None


async def test_bare_id_claimed_elsewhere_completes_unfenced(
    dl: DataLayer, other: DataLayer
) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await other.tasks.claim(worker)
    # This process never claimed it: the bare id is an operator's override.
    done = await dl.tasks.complete(task.id, {"by": "operator"})
    assert done.status is TaskStatus.COMPLETED
    assert done.result == {"by": "operator"}
    # The holder's own attempt is over; its heartbeat is refused.
    with pytest.raises(LeaseLost):
        await other.tasks.heartbeat(held)
    assert (await dl.tasks.get(task.id)).result == {"by": "operator"}


async def test_holder_learns_its_task_was_completed_by_someone_else(
    dl: DataLayer, other: DataLayer
) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await other.tasks.claim(worker)
    await dl.tasks.complete(task.id, {"by": "operator"})
    with pytest.raises(LeaseLost) as info:
        await other.tasks.complete(held, {"by": "holder"})
    assert info.value.status == "completed"


# -- 2. out of attempts ------------------------------------------------------------------------


async def test_lease_running_out_twice_with_two_attempts_is_dead(fast: DataLayer) -> None:
    worker = await agent(fast)
    task = await fast.tasks.create(type="t", max_attempts=2)
    assert task.max_attempts == 2
    (first,) = await fast.tasks.claim(worker, lease_seconds=0.2)
    assert first.attempts == 1
    await asyncio.sleep(0.5)
    (second,) = await claim_rescued(fast, worker, lease_seconds=0.2)
    assert second.attempts == 2
    await asyncio.sleep(0.5)
    assert await fast.tasks.sweep() == {"pending": 0, "dead": 1}

    dead = await fast.tasks.get(task.id)
    assert dead.status is TaskStatus.DEAD
    assert dead.attempts == 2
    assert dead.finished_at is not None
    assert dead.error is not None
    assert "attempt 2" in dead.error
    assert "lost its lease" in dead.error
    assert await fast.tasks.claim(worker) == []
    with pytest.raises(LeaseLost) as info:
        await fast.tasks.complete(second, {"late": True})
    assert info.value.status == "dead"
    assert (await fast.tasks.get(task.id)).status is TaskStatus.DEAD


async def test_claim_rescues_into_dead_when_out_of_attempts(fast: DataLayer) -> None:
    worker = await agent(fast)
    task = await fast.tasks.create(type="t", max_attempts=1)
    await fast.tasks.claim(worker)
    await expire(fast, task.id)
    assert await claim_rescued(fast, worker) == []
    assert (await fast.tasks.get(task.id)).status is TaskStatus.DEAD


# -- 3. retries --------------------------------------------------------------------------------


async def test_fail_backs_off_then_dies(dl: DataLayer) -> None:
    worker = await agent(dl)
    await dl.tasks.set_policy("flaky", retry_first=0.2, retry_most=0.8)
    task = await dl.tasks.create(type="flaky", max_attempts=5)
    jitter = dl.config.tasks.retry_jitter
    assert jitter == 0.2
    for attempt in range(1, 5):
        (claimed,) = await dl.tasks.claim(worker, types=["flaky"], wait=10)
        assert claimed.id == task.id
        assert claimed.attempts == attempt
        failed = await dl.tasks.fail(claimed, f"boom {attempt}")
        assert failed.status is TaskStatus.PENDING
        assert failed.error == f"boom {attempt}"
        assert failed.lease_token is None
        assert failed.run_at is not None
        step = min(0.2 * 2 ** (attempt - 1), 0.8)
        delay = (failed.run_at - failed.updated_at).total_seconds()
        assert step * (1 - jitter) - 0.02 <= delay <= step * (1 + jitter) + 0.02, (attempt, delay)
        # Not claimable before its time (checked where the wait is long enough to be sure).
        if delay > 0.5:
            assert await dl.tasks.claim(worker, types=["flaky"]) == []
    (last,) = await dl.tasks.claim(worker, types=["flaky"], wait=10)
    assert last.attempts == 5
    dead = await dl.tasks.fail(last, "boom 5")
    assert dead.status is TaskStatus.DEAD
    assert dead.error == "boom 5"
    assert dead.finished_at is not None
    assert await dl.tasks.claim(worker, types=["flaky"]) == []


async def test_fail_without_retry_is_failed_for_good_and_retry_brings_it_back(
    dl: DataLayer,
) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t", max_attempts=5)
    (claimed,) = await dl.tasks.claim(worker)
    failed = await dl.tasks.fail(claimed, "bad input", retry=False)
    assert failed.status is TaskStatus.FAILED
    assert failed.error == "bad input"
    assert failed.attempts == 1
    assert await dl.tasks.claim(worker) == []

    back = await dl.tasks.retry(task.id)
    assert back.status is TaskStatus.PENDING
    (again,) = await dl.tasks.claim(worker)
    assert again.attempts == 2
    assert (await dl.tasks.complete(again, "ok")).result == "ok"
    with pytest.raises(ValidationError):
        await dl.tasks.retry(task.id)


def raise_bad_input() -> None:
    raise ValueError("the input was bad")


async def test_fail_with_an_exception_records_message_and_traceback(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (claimed,) = await dl.tasks.claim(worker)
    try:
        raise_bad_input()
    except ValueError as exc:
        failed = await dl.tasks.fail(claimed, exc)
    assert failed.status is TaskStatus.PENDING
    assert failed.error == "ValueError: the input was bad"
    assert failed.traceback is not None
    assert "raise_bad_input" in failed.traceback
    assert "ValueError" in failed.traceback
    stored = await dl.tasks.get(task.id)
    assert stored.error == failed.error
    assert stored.traceback == failed.traceback

    # An explicit traceback wins; a message alone has none.
    await dl.execute("UPDATE tasks SET run_at = clock_timestamp() WHERE id = %s", [task.id])
    (again,) = await dl.tasks.claim(worker)
    failed = await dl.tasks.fail(again, ValueError("no trace"), traceback="my trace")
    assert failed.error == "ValueError: no trace"
    assert failed.traceback == "my trace"


async def test_requeue_dead_by_ids_and_by_type(dl: DataLayer) -> None:
    worker = await agent(dl)
    tasks = await dl.tasks.create_many(
        [{"type": "a", "max_attempts": 1}] * 2 + [{"type": "b", "max_attempts": 1}] * 2
    )
    alive = await dl.tasks.create(type="a", delay=3600)
    for _ in tasks:
        (claimed,) = await dl.tasks.claim(worker)
        assert (await dl.tasks.fail(claimed, "no")).status is TaskStatus.DEAD
    assert await dl.tasks.count(status="dead") == 4

    assert await dl.tasks.requeue_dead([]) == []
    (one,) = await dl.tasks.requeue_dead([tasks[0].id, alive.id])
    assert one.id == tasks[0].id
    assert one.status is TaskStatus.PENDING
    assert one.attempts == 0
    assert one.error == "no"
    assert (await dl.tasks.get(alive.id)).status is TaskStatus.PENDING

    by_type = await dl.tasks.requeue_dead(type="b")
    assert {t.id for t in by_type} == {tasks[2].id, tasks[3].id}
    assert all(t.status is TaskStatus.PENDING and t.attempts == 0 for t in by_type)
    assert (await dl.tasks.get(tasks[1].id)).status is TaskStatus.DEAD

    requeued = await dl.tasks.claim(worker, n=10)
    assert {t.id for t in requeued} == {tasks[0].id, tasks[2].id, tasks[3].id}
    assert all(t.attempts == 1 for t in requeued)
    for t in requeued:
        await dl.tasks.complete(t, "ok")

    (rest,) = await dl.tasks.requeue_dead()
    assert rest.id == tasks[1].id
    assert await dl.tasks.count(status="dead") == 0


async def test_retry_of_a_dead_task(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t", max_attempts=1)
    (claimed,) = await dl.tasks.claim(worker)
    assert (await dl.tasks.fail(claimed, "x")).status is TaskStatus.DEAD
    back = await dl.tasks.retry(task)
    assert back.status is TaskStatus.PENDING
    assert back.finished_at is None
    (again,) = await dl.tasks.claim(worker)
    assert again.id == task.id
    assert again.attempts == 2
    with pytest.raises(ValidationError):
        await dl.tasks.retry(task)  # running now


# -- 4. cancellation seen by the worker --------------------------------------------------------


async def test_cancelled_running_task_tells_its_worker(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker)
    cancelled = await dl.tasks.cancel(task.id, "the user gave up")
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error == "the user gave up"

    with pytest.raises(TaskCancelled) as info:
        await dl.tasks.heartbeat(held)
    assert info.value.reason == "the user gave up"
    assert info.value.task_id == task.id
    assert isinstance(info.value, Conflict)
    with pytest.raises(TaskCancelled) as info:
        await dl.tasks.complete(held, {"x": 1})
    assert info.value.reason == "the user gave up"
    with pytest.raises(TaskCancelled):
        await dl.tasks.check(held)
    with pytest.raises(TaskCancelled):
        await dl.tasks.fail(held, "whatever")
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.CANCELLED
    assert stored.result is None
    assert stored.error == "the user gave up"


async def test_check_passes_while_held(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker)
    await dl.tasks.check(held)
    await dl.tasks.check(task.id)
    with pytest.raises(LeaseLost):
        await dl.tasks.check(task.id, lease_token=uuid4())


async def test_working_body_is_cancelled_when_the_task_is(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.6)
    reached_end = False
    started = time.monotonic()
    with pytest.raises(TaskCancelled) as info:  # noqa: PT012 - the block is the unit under test
        async with dl.tasks.working(held):
            await dl.tasks.cancel(task.id, "no longer needed")
            await asyncio.sleep(10)
            reached_end = True
    assert not reached_end
    assert time.monotonic() - started < 5
    assert info.value.reason == "no longer needed"
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.CANCELLED
    assert stored.error == "no longer needed"
    # The test's own task was not left cancelled.
    await asyncio.sleep(0.05)
    assert asyncio.current_task() is not None
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# -- 5. working() ------------------------------------------------------------------------------


async def test_working_clean_exit_completes(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t", data={"n": 21})
    (held,) = await dl.tasks.claim(worker)
    async with dl.tasks.working(held) as job:
        assert job.task == held
        assert job.lost is None
        job.check()
        job.result = {"answer": held.data["n"] * 2}
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.COMPLETED
    assert stored.result == {"answer": 42}

    # A block that completes (or fails) itself is not completed again.
    task2 = await dl.tasks.create(type="t")
    (held2,) = await dl.tasks.claim(worker)
    async with dl.tasks.working(held2) as job:
        await job.fail("explicit", retry=False)
        job.result = "ignored"
    stored = await dl.tasks.get(task2.id)
    assert stored.status is TaskStatus.FAILED
    assert stored.error == "explicit"
    assert stored.result is None


async def explode_in_body() -> None:
    raise RuntimeError("the body broke")


async def test_working_exception_fails_the_attempt_and_goes_on(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker)
    with pytest.raises(RuntimeError, match="the body broke"):
        async with dl.tasks.working(held):
            await explode_in_body()
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.PENDING
    assert stored.attempts == 1
    assert stored.error == "RuntimeError: the body broke"
    assert stored.traceback is not None
    assert "explode_in_body" in stored.traceback
    assert await token_of(dl, stored.id) is None


async def test_working_lease_lost_inside_raises_lease_lost(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.6)
    reached_end = False
    started = time.monotonic()
    with pytest.raises(LeaseLost) as info:  # noqa: PT012 - the block is the unit under test
        async with dl.tasks.working(held):
            await expire(dl, task.id)
            assert await dl.tasks.sweep() == {"pending": 1, "dead": 0}
            await asyncio.sleep(10)
            reached_end = True
    assert not reached_end
    assert time.monotonic() - started < 5
    assert info.value.status == "pending"
    stored = await dl.tasks.get(task.id)
    # Neither failed nor handed back by the lost worker: the rescue's record stands.
    assert stored.status is TaskStatus.PENDING
    assert stored.attempts == 1
    assert stored.error is not None
    assert "lost its lease" in stored.error
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0


async def test_working_cancelled_from_outside_hands_the_task_back(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=30)

    async def body() -> None:
        async with dl.tasks.working(held):
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(body(), timeout=0.3)
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.PENDING, "back at once, not after the 30 s lease"
    assert await token_of(dl, stored.id) is None
    assert stored.attempts == 1, "the attempt counts (a task always cut short must end)"
    assert stored.error is not None
    assert "stopped" in stored.error
    (again,) = await dl.tasks.claim(worker)
    assert again.id == task.id
    assert again.attempts == 2
    with pytest.raises(LeaseLost):
        await dl.tasks.complete(held, "stale")


async def test_working_keeps_the_claims_lease_length(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.6)
    async with dl.tasks.working(held) as job:
        await asyncio.sleep(0.8)
        assert job.lost is None
        left = await seconds_left(dl, task.id)
    assert left < 5, f"a crashed worker would hold the task {left:.0f} s, not 0.6 s"


async def test_working_keeps_a_short_lease_alive(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.6)
    async with dl.tasks.working(held, lease_seconds=0.6) as job:
        await asyncio.sleep(2)
        assert job.lost is None
        assert await dl.tasks.sweep() == {"pending": 0, "dead": 0}
        stored = await dl.tasks.get(task.id)
        assert stored.status is TaskStatus.RUNNING
        assert await token_of(dl, stored.id) == held.lease_token
        job.result = "kept"
    assert (await dl.tasks.get(task.id)).result == "kept"


async def test_auto_heartbeat_keeps_a_short_lease_alive(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=0.6, auto_heartbeat=True)
    assert held.lease_expires_at is not None
    await asyncio.sleep(2)
    assert await dl.tasks.sweep() == {"pending": 0, "dead": 0}
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(dl, stored.id) == held.lease_token
    assert stored.lease_expires_at is not None
    assert stored.lease_expires_at > held.lease_expires_at + timedelta(seconds=1)
    assert 0 < await seconds_left(dl, task.id) <= 0.6, "extended by the claim's lease"
    done = await dl.tasks.complete(task.id, "done")
    assert done.status is TaskStatus.COMPLETED
    # Heartbeats stop with the completion: nothing goes on touching the row.
    await asyncio.sleep(0.5)
    assert (await dl.tasks.get(task.id)).updated_at == done.updated_at


# -- 6. the worker loop ------------------------------------------------------------------------


async def test_worker_runs_tasks_with_the_handlers_results(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    tasks = await dl.tasks.create_many([{"type": "double", "data": {"n": n}} for n in range(10)])
    bystander = await dl.tasks.create(type="other")
    running = 0
    most = 0

    async def handler(task: Task) -> dict[str, int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"double": task.data["n"] * 2}

    worker = dl.tasks.worker(handler, agent_id=worker_id, types=["double"], concurrency=4)
    taken = await asyncio.wait_for(worker.run(max_tasks=10), timeout=30)
    assert taken == 10
    assert worker.completed == 10
    assert worker.failed == 0
    assert 1 <= most <= 4
    for task in tasks:
        stored = await dl.tasks.get(task.id)
        assert stored.status is TaskStatus.COMPLETED
        assert stored.result == {"double": task.data["n"] * 2}
        assert stored.agent_id == worker_id
    assert (await dl.tasks.get(bystander.id)).status is TaskStatus.PENDING


async def test_worker_retries_a_raising_handlers_tasks(dl: DataLayer) -> None:
    worker_id = await agent(dl)
    await dl.tasks.set_policy("mixed", retry_first=60, retry_most=60)
    tasks = await dl.tasks.create_many(
        [{"type": "mixed", "data": {"n": n, "bad": n % 2 == 1}} for n in range(6)]
    )

    async def handler(task: Task) -> str:
        if task.data["bad"]:
            raise KeyError(f"no such thing {task.data['n']}")
        return "fine"

    worker = dl.tasks.worker(handler, agent_id=worker_id, types=["mixed"], concurrency=4)
    assert await asyncio.wait_for(worker.run(max_tasks=6), timeout=30) == 6
    assert worker.completed == 3
    assert worker.failed == 3
    for task in tasks:
        stored = await dl.tasks.get(task.id)
        if task.data["bad"]:
            assert stored.status is TaskStatus.PENDING
            assert stored.attempts == 1
            assert stored.error == f"KeyError: 'no such thing {task.data['n']}'"
            assert stored.traceback is not None
            assert "handler" in stored.traceback
            assert stored.run_at is not None
            assert stored.run_at > stored.updated_at
        else:
            assert stored.status is TaskStatus.COMPLETED
            assert stored.result == "fine"


async def test_worker_stop_returns(dl: DataLayer) -> None:
    worker_id = await agent(dl)

    async def handler(task: Task) -> str:
        await asyncio.sleep(0.3)
        return "finished"

    idle = dl.tasks.worker(handler, agent_id=worker_id, types=["nothing"])
    run = asyncio.create_task(idle.run())
    await asyncio.sleep(0.3)
    assert not run.done()
    idle.stop()
    assert await asyncio.wait_for(run, timeout=10) == 0

    # Stopping mid-task lets the handler finish and record its result.
    task = await dl.tasks.create(type="slow")
    busy = dl.tasks.worker(handler, agent_id=worker_id, types=["slow"])
    run = asyncio.create_task(busy.run())

    async def started() -> bool:
        return (await dl.tasks.get(task.id)).status is TaskStatus.RUNNING

    await wait_until(started)
    busy.stop()
    assert await asyncio.wait_for(run, timeout=10) == 1
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.COMPLETED
    assert stored.result == "finished"


# -- 7. stats, pause and resume ----------------------------------------------------------------


async def test_stats(dl: DataLayer) -> None:
    worker = await agent(dl)
    empty = await dl.tasks.stats()
    assert empty.counts == {}
    assert empty.oldest_pending_age is None
    assert (empty.scheduled, empty.blocked, empty.expired_leases) == (0, 0, 0)
    assert empty.next_lease_expiry is None
    assert empty.paused_types == []

    oldest = await dl.tasks.create(type="a")
    await asyncio.sleep(0.3)
    await dl.tasks.create(type="a")
    await dl.tasks.create(type="b", delay=3600)
    await dl.tasks.create(type="c", depends_on=[oldest.id])
    await dl.tasks.create_many([{"type": "r1"}, {"type": "r2"}, {"type": "done"}])
    (expired,) = await dl.tasks.claim(worker, types=["r1"])
    await expire(dl, expired.id)
    (live,) = await dl.tasks.claim(worker, types=["r2"], lease_seconds=30)
    (finished,) = await dl.tasks.claim(worker, types=["done"])
    await dl.tasks.complete(finished, None)
    await dl.tasks.pause("zzz")
    await dl.tasks.pause("p")

    stats = await dl.tasks.stats()
    assert stats.counts == {
        "pending": {"a": 2, "b": 1, "c": 1},
        "running": {"r1": 1, "r2": 1},
        "completed": {"done": 1},
    }
    assert stats.total("pending") == 4
    assert stats.total("dead") == 0
    assert stats.oldest_pending_age is not None
    assert 0.3 <= stats.oldest_pending_age < 30
    assert stats.scheduled == 1
    assert stats.blocked == 1
    assert stats.expired_leases == 1
    assert stats.next_lease_expiry == live.lease_expires_at
    assert stats.paused_types == ["p", "zzz"]

    await dl.tasks.resume("zzz")
    assert (await dl.tasks.stats()).paused_types == ["p"]


async def test_pause_hides_a_type_everywhere_and_resume_wakes_waiters(
    dl: DataLayer, other: DataLayer
) -> None:
    worker = await agent(dl)
    policy = await dl.tasks.pause("p")
    assert policy.paused is True
    assert (await other.tasks.policy("p")).paused is True
    task = await dl.tasks.create(type="p")
    await dl.tasks.create(type="q")

    assert await dl.tasks.claim(worker, types=["p"]) == []
    assert [t.type for t in await dl.tasks.claim(worker, n=10)] == ["q"]
    assert await other.tasks.claim(worker, n=10) == []
    assert await other.tasks.claim(worker, types=["p"], wait=0.3) == []

    waiting = asyncio.create_task(other.tasks.claim(worker, types=["p"], wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    resumed = await dl.tasks.resume("p")
    assert resumed.paused is False
    claimed = await asyncio.wait_for(waiting, timeout=15)
    assert [t.id for t in claimed] == [task.id]
    assert time.monotonic() - started < 10, "woken by resume, not by the end of the wait"


# -- 8. cutting waiting calls short ------------------------------------------------------------


async def test_cut_short_claim_wait_claims_nothing(dl: DataLayer) -> None:
    worker = await agent(dl)
    await dl.tasks.pause("paused")
    before = {
        t.id: t
        for t in await dl.tasks.create_many(
            [{"type": "other"}, {"type": "paused"}, {"type": "wanted", "delay": 3600}]
        )
    }
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(dl.tasks.claim(worker, types=["wanted"], wait=10), timeout=0.2)
    assert time.monotonic() - started < 5
    assert await dl.tasks.count(status="running") == 0
    for task in await dl.tasks.get_many(list(before)):
        assert task == before[task.id], "untouched"

    # The layer still works: a new claim sees new work at once.
    fresh = await dl.tasks.create(type="wanted")
    claimed = await dl.tasks.claim(worker, types=["wanted"], wait=5)
    assert [t.id for t in claimed] == [fresh.id]


@pytest.mark.parametrize("timeout", [0.0, 0.0005, 0.001, 0.002, 0.005, 0.02])
async def test_cut_short_heartbeat_and_complete_stay_consistent(
    dl: DataLayer, timeout: float
) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    (held,) = await dl.tasks.claim(worker, lease_seconds=30)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(dl.tasks.heartbeat(held, lease_seconds=40), timeout=timeout)
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await token_of(dl, stored.id) == held.lease_token
    assert await dl.tasks.heartbeat(held, lease_seconds=50) > held.lease_expires_at  # type: ignore[operator]

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(dl.tasks.complete(held, {"r": 1}), timeout=timeout)
    stored = await dl.tasks.get(task.id)
    assert stored.status in (TaskStatus.RUNNING, TaskStatus.COMPLETED)
    if stored.status is TaskStatus.COMPLETED:
        assert stored.result == {"r": 1}
    # Sending it again lands it, or reports the completion that landed.
    done = await dl.tasks.complete(held, {"r": 1})
    assert done.status is TaskStatus.COMPLETED
    assert done.result == {"r": 1}
    assert await dl.fetch_value("SELECT 1") == 1


# -- 9. bad inputs -----------------------------------------------------------------------------


BAD_LEASES: list[Any] = [0, -1, math.nan, math.inf, "x", 10**9, True, 0.01]


@pytest.mark.parametrize("lease", BAD_LEASES)
async def test_bad_lease_seconds_are_refused(dl: DataLayer, lease: Any) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")
    with pytest.raises(ValidationError) as info:
        await dl.tasks.claim(worker, lease_seconds=lease)
    assert info.value.field == "lease_seconds"
    assert (await dl.tasks.get(task.id)).status is TaskStatus.PENDING

    (held,) = await dl.tasks.claim(worker)
    for call in (
        lambda: dl.tasks.heartbeat(held, lease_seconds=lease),
        lambda: dl.tasks.set_policy("t", lease_seconds=lease),
    ):
        with pytest.raises(ValidationError) as info:
            await call()
        assert info.value.field == "lease_seconds"
    with pytest.raises(ValidationError) as info:
        async with dl.tasks.working(held, lease_seconds=lease):
            pytest.fail("the block must not run")
    assert info.value.field == "lease_seconds"
    with pytest.raises(ValidationError) as info:
        dl.tasks.worker(lambda t: asyncio.sleep(0), agent_id=worker, lease_seconds=lease)
    assert info.value.field == "lease_seconds"
    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert stored.lease_expires_at == held.lease_expires_at
    assert await dl.tasks.policies() == []


async def test_bad_arguments_name_their_field(dl: DataLayer) -> None:
    worker = await agent(dl)
    task = await dl.tasks.create(type="t")

    async def refused(field: str, call: Any) -> None:
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.field == field, (field, info.value)

    await refused("auto_heartbeat", dl.tasks.claim(worker, auto_heartbeat="yes"))  # type: ignore[arg-type]
    await refused("auto_heartbeat", dl.tasks.claim(worker, auto_heartbeat=1))  # type: ignore[arg-type]
    assert (await dl.tasks.get(task.id)).status is TaskStatus.PENDING
    # Never claimed here, and no token given: nothing to fence with.
    await refused("lease_token", dl.tasks.heartbeat(task.id))
    await refused("lease_token", dl.tasks.heartbeat(task.id, lease_token="not-a-uuid"))
    await refused("task", dl.tasks.heartbeat("not-a-uuid"))

    (held,) = await dl.tasks.claim(worker)
    await refused("error", dl.tasks.fail(held, 5))  # type: ignore[arg-type]
    await refused("error", dl.tasks.fail(held, None))  # type: ignore[arg-type]
    await refused("error", dl.tasks.fail(held, "   "))
    await refused("retry", dl.tasks.fail(held, "x", retry="no"))  # type: ignore[arg-type]
    await refused("traceback", dl.tasks.fail(held, "x", traceback=5))  # type: ignore[arg-type]
    await refused("result", dl.tasks.complete(held, {"x": math.nan}))
    await refused("reason", dl.tasks.cancel(held, 5))  # type: ignore[arg-type]

    await refused("type", dl.tasks.set_policy(""))
    await refused("max_attempts", dl.tasks.set_policy("t", max_attempts=0))
    await refused("max_attempts", dl.tasks.set_policy("t", max_attempts=1001))
    await refused("max_attempts", dl.tasks.set_policy("t", max_attempts=2.5))  # type: ignore[arg-type]
    await refused("retry_first", dl.tasks.set_policy("t", retry_first=-1))
    await refused("retry_first", dl.tasks.set_policy("t", retry_first=math.nan))
    await refused("retry_first", dl.tasks.set_policy("t", retry_first=86_401))
    await refused("retry_most", dl.tasks.set_policy("t", retry_most=-0.5))
    await refused("retry_most", dl.tasks.set_policy("t", retry_most=3_000_000))
    await refused("retry_most", dl.tasks.set_policy("t", retry_most="1"))  # type: ignore[arg-type]
    await refused("type", dl.tasks.pause(""))
    await refused("type", dl.tasks.resume(5))  # type: ignore[arg-type]
    assert await dl.tasks.policies() == []

    with pytest.raises(ValidationError) as info:
        async with dl.tasks.working(task.id):  # type: ignore[arg-type]
            pytest.fail("the block must not run")
    assert info.value.field == "task"
    pending = await dl.tasks.create(type="u")
    with pytest.raises(ValidationError) as info:
        async with dl.tasks.working(pending):  # never claimed: no lease token
            pytest.fail("the block must not run")
    assert info.value.field == "task"

    stored = await dl.tasks.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert stored.error is None
    assert stored.result is None
    assert stored.lease_expires_at == held.lease_expires_at
    with pytest.raises(NotFound):
        await dl.tasks.heartbeat(uuid4(), lease_token=uuid4())
