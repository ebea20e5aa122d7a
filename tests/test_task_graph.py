"""Tasks over time and in graphs: due times, periodic schedules, uniqueness keys, dependencies.

Everything runs against the real servers, several DataLayers (and, for schedules, several OS
processes) at once where the guarantee is about concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from agency_data import Conflict, DataLayer, NotFound, Task, TaskStatus, ValidationError
from agency_data.tasks import next_tick
from tests.conftest import make_config

PARIS = "Europe/Paris"


@pytest.fixture
async def dl2(database: str, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    """A second DataLayer on the same database: another process, as far as the server knows."""
    async with DataLayer(make_config(database, redis_url, tmp_path)) as layer:
        yield layer


@pytest.fixture
async def agent(dl: DataLayer) -> UUID:
    return (await dl.agents.create(name="worker", type="worker")).id


async def claim_all(dl: DataLayer, agent: UUID) -> list[Task]:
    """Everything claimable now (made running)."""
    return await dl.tasks.claim(agent, n=1000)


async def run_one(dl: DataLayer, agent: UUID, expected: Task) -> None:
    """Claim exactly ``expected`` (nothing else is claimable) and complete it."""
    claimed = await claim_all(dl, agent)
    assert [t.id for t in claimed] == [expected.id]
    await dl.tasks.complete(claimed[0], result={"done": True})


async def server_now(dl: DataLayer) -> datetime:
    now = await dl.fetch_value("SELECT clock_timestamp()")
    assert isinstance(now, datetime)
    return now


async def task_count(dl: DataLayer) -> int:
    return int(await dl.fetch_value("SELECT count(*) FROM tasks"))


# -- 1. due times --------------------------------------------------------------------------------


async def test_run_at_and_delay_hide_a_task_until_due(dl: DataLayer, agent: UUID) -> None:
    now = await server_now(dl)
    at = await dl.tasks.create(type="at", run_at=now + timedelta(seconds=2))
    later = await dl.tasks.create(type="delay", delay=2.0)
    overdue = await dl.tasks.create(type="overdue", run_at=now - timedelta(hours=1))
    assert at.run_at == now + timedelta(seconds=2)
    assert later.run_at is not None
    assert later.run_at >= later.created_at + timedelta(seconds=1.9)
    assert (await dl.tasks.stats()).scheduled == 2

    # Only the task whose time has passed is claimable.
    assert [t.id for t in await claim_all(dl, agent)] == [overdue.id]
    assert await claim_all(dl, agent) == []

    claimed: dict[UUID, Task] = {}
    deadline = time.monotonic() + 20
    while len(claimed) < 2 and time.monotonic() < deadline:
        claimed.update({t.id: t for t in await claim_all(dl, agent)})
        await asyncio.sleep(0.1)
    assert set(claimed) == {at.id, later.id}
    for task in claimed.values():
        # Measured by the server's clock: never handed out before its due time.
        assert task.started_at is not None
        assert task.run_at is not None
        assert task.started_at >= task.run_at


async def test_bad_due_times_are_refused(dl: DataLayer) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValidationError) as info:
        await dl.tasks.create(type="t", run_at=now + timedelta(seconds=5), delay=5)
    assert info.value.field == "delay"
    with pytest.raises(ValidationError, match="naive") as naive:
        await dl.tasks.create(type="t", run_at=datetime.now() + timedelta(seconds=5))
    assert naive.value.field == "run_at"
    with pytest.raises(ValidationError) as many:
        await dl.tasks.create_many([{"type": "t"}, {"type": "t", "run_at": "tomorrow"}])
    assert many.value.field == "items[1].run_at"
    for delay in (-1, float("nan"), float("inf"), 86_400 * 400):
        with pytest.raises(ValidationError):
            await dl.tasks.create(type="t", delay=delay)
    assert await task_count(dl) == 0


async def test_a_waiting_claim_wakes_when_a_scheduled_task_falls_due(
    dl: DataLayer, agent: UUID
) -> None:
    task = await dl.tasks.create(type="soon", delay=0.7)
    assert await claim_all(dl, agent) == []
    started = time.monotonic()
    claimed = await dl.tasks.claim(agent, wait=5)
    waited = time.monotonic() - started
    assert [t.id for t in claimed] == [task.id]
    assert claimed[0].started_at is not None
    assert task.run_at is not None
    assert claimed[0].started_at >= task.run_at, "not handed out before it was due"
    # Nothing else happened: only the claim's own timer can have woken it, well before the
    # wait ran out.
    assert waited < 4.0


# -- 2. periodic schedules ---------------------------------------------------------------------

SCHEDULER = textwrap.dedent(
    """
    import asyncio, sys
    from agency_data import DataLayer

    async def main():
        dsn, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
        async with DataLayer(
            postgresql={"dsn": dsn, "pool_min_size": 1, "pool_max_size": 2},
            redis={"url": url},
            migration={"auto_migrate": False, "backup_before_migration": False},
        ) as dl:
            await dl.fetch_value("SELECT 1")
            print("ready", flush=True)
            sys.stdin.readline()
            try:
                async with asyncio.timeout(seconds):
                    await dl.tasks.run_scheduler()
            except TimeoutError:
                pass
        print("done", flush=True)

    asyncio.run(main())
    """
)


async def test_three_scheduler_processes_enqueue_each_tick_once(
    dl: DataLayer, agent: UUID, database: str, redis_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    children = [
        subprocess.Popen(  # noqa: ASYNC220 - other processes are the point of the test
            [sys.executable, str(script), str(database), redis_url, "5.5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    seen: list[Task] = []
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == "ready", await asyncio.to_thread(child.communicate, None, 30)
        await dl.tasks.schedule("tick", type="tick", every=1.0, data={"from": "schedule"})
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()

        # Work the ticks off as they come, so that their keys are free again: a tick enqueued
        # twice would show as two tasks, not be folded into one by the live-key index.
        finished = asyncio.gather(
            *(asyncio.to_thread(child.communicate, None, 60) for child in children)
        )
        while not finished.done():
            for task in await dl.tasks.claim(agent, types=["tick"], n=10, wait=0.3):
                seen.append(task)
                await dl.tasks.complete(task)
        outputs = await finished
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip().splitlines()[-1] == "done"
    seen.extend(await claim_all(dl, agent))

    tasks = (await dl.tasks.list(type="tick", limit=100)).items
    assert {t.id for t in tasks} == {t.id for t in seen}
    keys = Counter(t.key for t in tasks)
    assert all(n == 1 for n in keys.values()), f"a tick was enqueued twice: {keys}"
    prefix = "schedule:tick:"
    ticks = sorted(datetime.fromisoformat(str(k).removeprefix(prefix)) for k in keys)
    assert all(str(k).startswith(prefix) for k in keys)
    assert len(ticks) >= 3, f"only {len(ticks)} ticks in 5.5 s"
    steps = {b - a for a, b in itertools.pairwise(ticks)}
    assert steps == {timedelta(seconds=1)}, f"ticks missing or doubled: {ticks}"
    assert all(t.timestamp() == int(t.timestamp()) for t in ticks), "aligned to the epoch"
    for task in tasks:
        tick = datetime.fromisoformat(str(task.key).removeprefix(prefix))
        assert task.created_at >= tick, "enqueued before its tick"
        assert task.data == {"from": "schedule"}
    (schedule,) = await dl.tasks.schedules()
    assert schedule.last_run_at == ticks[-1]
    assert schedule.last_task_id in {t.id for t in tasks}


async def test_bad_schedules_are_refused(dl: DataLayer) -> None:
    for cron in ("not a cron", "61 * * * *", "* * *", "* * * * * * * *", ""):
        with pytest.raises(ValidationError) as info:
            await dl.tasks.schedule("s", type="t", cron=cron)
        assert info.value.field == "cron", cron
    with pytest.raises(ValidationError):
        await dl.tasks.schedule("s", type="t", cron="* * * * *", every=60)
    with pytest.raises(ValidationError):
        await dl.tasks.schedule("s", type="t")
    for every in (0, -5, float("nan")):
        with pytest.raises(ValidationError):
            await dl.tasks.schedule("s", type="t", every=every)
    with pytest.raises(ValidationError) as zone:
        await dl.tasks.schedule("s", type="t", cron="* * * * *", timezone="Mars/Olympus_Mons")
    assert zone.value.field == "timezone"
    for name in ("", "   "):
        with pytest.raises(ValidationError):
            await dl.tasks.schedule(name, type="t", every=60)
    assert await dl.tasks.schedules() == []


async def test_a_cron_that_never_fires_is_refused(dl: DataLayer) -> None:
    with pytest.raises(ValidationError):
        await dl.tasks.schedule("never", type="t", cron="0 0 31 2 *")
    assert await dl.tasks.schedules() == []


def test_next_tick_of_cron_rules() -> None:
    def at(*args: int, zone: str = "UTC") -> datetime:
        return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc, arg-type]

    every5 = "*/5 * * * *"
    assert next_tick(at(2024, 1, 1, 10, 2), cron=every5, every=None) == at(2024, 1, 1, 10, 5)
    # Strictly after: a time on a tick gets the following one.
    assert next_tick(at(2024, 1, 1, 10, 5), cron=every5, every=None) == at(2024, 1, 1, 10, 10)
    assert next_tick(at(2024, 1, 1, 23, 58), cron=every5, every=None) == at(2024, 1, 2)
    # An aware time in another zone is the same instant.
    paris_noon = at(2024, 1, 1, 12, 2, zone=PARIS)
    assert next_tick(paris_noon, cron=every5, every=None) == at(2024, 1, 1, 11, 5)
    # Six fields: seconds last.
    secs = "* * * * * */10"
    assert next_tick(at(2024, 1, 1, 10, 2, 3), cron=secs, every=None) == at(2024, 1, 1, 10, 2, 10)

    # "9 o'clock" is read in the schedule's zone: 08:00 UTC in winter, 07:00 UTC in summer.
    nine = "0 9 * * *"
    assert next_tick(at(2024, 1, 15), cron=nine, every=None) == at(2024, 1, 15, 9)
    assert next_tick(at(2024, 1, 15), cron=nine, every=None, zone=PARIS) == at(2024, 1, 15, 8)
    assert next_tick(at(2024, 7, 15), cron=nine, every=None, zone=PARIS) == at(2024, 7, 15, 7)
    # The answer is in UTC whatever the zone.
    assert next_tick(at(2024, 7, 15), cron=nine, every=None, zone=PARIS).utcoffset() == (
        timedelta(0)
    )
    # Hourly across the spring-forward gap: every real hour once, none invented.
    hourly, tick, seen = "0 * * * *", at(2024, 3, 30, 23, 30), []
    for _ in range(4):
        tick = next_tick(tick, cron=hourly, every=None, zone=PARIS)
        seen.append(tick)
    assert seen == [at(2024, 3, 31, h) for h in range(4)]


def test_next_tick_of_every_rules() -> None:
    def epoch(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    assert next_tick(epoch(1000.5), cron=None, every=60) == epoch(1020)
    assert next_tick(epoch(1020), cron=None, every=60) == epoch(1080)
    assert next_tick(epoch(1019.999999), cron=None, every=60) == epoch(1020)
    # Aligned to the Unix epoch, not to the zone of the time given: 10:02 in Paris is 09:02 UTC.
    paris = datetime(2024, 1, 1, 10, 2, tzinfo=ZoneInfo(PARIS))
    assert next_tick(paris, cron=None, every=3600) == datetime(2024, 1, 1, 10, tzinfo=UTC)
    now = datetime.now(UTC)
    for every in (1.0, 7, 86_400):
        tick = next_tick(now, cron=None, every=every)
        assert now < tick <= now + timedelta(seconds=every)
        assert tick.timestamp() % every == 0
    # Two processes asking at different moments between two ticks agree on the tick.
    assert next_tick(epoch(1_700_000_000.2), cron=None, every=5) == next_tick(
        epoch(1_700_000_004.9), cron=None, every=5
    )


def test_next_tick_of_a_fractional_every_is_strictly_after() -> None:
    after = datetime.fromtimestamp(1_700_000_000.1, UTC)
    assert next_tick(after, cron=None, every=0.1) > after


async def test_schedule_upsert_list_and_unschedule(dl: DataLayer) -> None:
    jan = await dl.tasks.schedule("report", type="report", cron="0 0 1 1 *", data={"v": 1})
    now = await server_now(dl)
    assert jan.next_run_at == next_tick(now, cron="0 0 1 1 *", every=None)
    assert jan.last_run_at is None
    assert jan.timezone == "UTC"

    # Only the task changes: the next tick stays where it was.
    changed = await dl.tasks.schedule(
        "report", type="report-v2", cron="0 0 1 1 *", data={"v": 2}, priority=7, max_attempts=2
    )
    assert changed.next_run_at == jan.next_run_at
    assert (changed.type, changed.data, changed.priority, changed.max_attempts) == (
        "report-v2",
        {"v": 2},
        7,
        2,
    )
    # The rule changes: the next tick moves to the new rule's.
    july = await dl.tasks.schedule("report", type="report-v2", cron="0 0 1 7 *")
    assert july.next_run_at != jan.next_run_at
    assert (july.next_run_at.month, july.next_run_at.day, july.next_run_at.hour) == (7, 1, 0)
    # So does the zone alone: midnight in Paris is 22:00 UTC the day before (summer time).
    paris = await dl.tasks.schedule("report", type="report-v2", cron="0 0 1 7 *", timezone=PARIS)
    assert paris.next_run_at == july.next_run_at - timedelta(hours=2)
    # And a switch from cron to every.
    hourly = await dl.tasks.schedule("report", type="report-v2", every=3600)
    assert hourly.cron is None
    assert hourly.every_seconds == 3600
    assert hourly.next_run_at.timestamp() % 3600 == 0
    assert hourly.next_run_at - await server_now(dl) <= timedelta(hours=1)

    await dl.tasks.schedule("alpha", type="a", every=60)
    other = dl.tenant("other")
    await other.tasks.schedule("hidden", type="a", every=60)
    assert [s.name for s in await dl.tasks.schedules()] == ["alpha", "report"]
    assert [s.name for s in await other.tasks.schedules()] == ["hidden"]

    await dl.tasks.unschedule("report")
    assert [s.name for s in await dl.tasks.schedules()] == ["alpha"]
    with pytest.raises(NotFound):
        await dl.tasks.unschedule("report")
    with pytest.raises(NotFound):
        await dl.tasks.unschedule("hidden")  # another tenant's
    assert [s.name for s in await other.tasks.schedules()] == ["hidden"]


async def make_due(dl: DataLayer, name: str) -> datetime:
    """Move the schedule's next tick into the past; that tick."""
    tick = await dl.fetch_value(
        "UPDATE task_schedules SET next_run_at = date_trunc('milliseconds', clock_timestamp()) "
        "- interval '1 second' WHERE name = %s RETURNING next_run_at",
        [name],
    )
    assert isinstance(tick, datetime)
    return tick


async def test_run_due_schedules_enqueues_a_tick_once_under_concurrency(
    dl: DataLayer, dl2: DataLayer
) -> None:
    await dl.tasks.schedule("hourly", type="report", every=3600, data={"x": 1})
    assert await dl.tasks.run_due_schedules() == []  # not due yet
    rounds = 8
    for _ in range(rounds):
        tick = await make_due(dl, "hourly")
        results = await asyncio.gather(
            *(dl.tasks.run_due_schedules() for _ in range(5)),
            *(dl2.tasks.run_due_schedules() for _ in range(5)),
        )
        enqueued = [task for result in results for task in result]
        assert len(enqueued) == 1, enqueued
        (task,) = enqueued
        assert task.key == f"schedule:hourly:{tick.isoformat()}"
        assert (task.type, task.data, task.status) == ("report", {"x": 1}, TaskStatus.PENDING)
        (schedule,) = await dl.tasks.schedules()
        assert schedule.last_run_at == tick
        assert schedule.last_task_id == task.id
        assert schedule.next_run_at > tick
        assert schedule.next_run_at.timestamp() % 3600 == 0
    assert await dl.tasks.count(type="report") == rounds


# -- 3. uniqueness keys --------------------------------------------------------------------------


async def twenty(
    dl: DataLayer, dl2: DataLayer, submit: Callable[[DataLayer, int], Awaitable[Task]]
) -> list[Task | BaseException]:
    """20 concurrent submissions, half through each DataLayer."""
    return await asyncio.gather(
        *(submit(dl if i % 2 else dl2, i) for i in range(20)), return_exceptions=True
    )


async def test_twenty_submitters_with_one_key_get_one_task(dl: DataLayer, dl2: DataLayer) -> None:
    results = await twenty(
        dl, dl2, lambda layer, i: layer.tasks.create(type="t", data={"i": i}, key="k")
    )
    assert all(isinstance(r, Task) for r in results), results
    ids = {r.id for r in results if isinstance(r, Task)}
    assert len(ids) == 1
    assert await dl.tasks.count() == 1


async def test_twenty_submitters_raise_one_wins(dl: DataLayer, dl2: DataLayer) -> None:
    results = await twenty(
        dl,
        dl2,
        lambda layer, i: layer.tasks.create(type="t", data={"i": i}, key="k", on_conflict="raise"),
    )
    won = [r for r in results if isinstance(r, Task)]
    lost = [r for r in results if not isinstance(r, Task)]
    assert len(won) == 1
    assert len(lost) == 19
    assert all(isinstance(r, Conflict) for r in lost), lost
    (task,) = (await dl.tasks.list()).items
    assert task.id == won[0].id
    assert task.data == won[0].data


async def test_twenty_submitters_replace_a_pending_task(dl: DataLayer, dl2: DataLayer) -> None:
    first = await dl.tasks.create(type="t", data={"i": -1}, key="k")
    results = await twenty(
        dl,
        dl2,
        lambda layer, i: layer.tasks.create(
            type="t", data={"i": i}, priority=i, key="k", on_conflict="replace"
        ),
    )
    assert all(isinstance(r, Task) for r in results), results
    assert {r.id for r in results if isinstance(r, Task)} == {first.id}
    (task,) = (await dl.tasks.list()).items
    assert task.id == first.id
    assert task.data["i"] in range(20)
    assert task.priority == task.data["i"], "one submission's values, not a mix"
    assert task.status is TaskStatus.PENDING


async def test_keys_of_running_and_finished_tasks(dl: DataLayer, agent: UUID) -> None:
    task = await dl.tasks.create(type="t", data={"v": 1}, key="k")
    (running,) = await dl.tasks.claim(agent)
    with pytest.raises(Conflict) as info:
        await dl.tasks.create(type="t", data={"v": 2}, key="k", on_conflict="replace")
    assert info.value.field == "key"
    with pytest.raises(Conflict):
        await dl.tasks.create(type="t", key="k", on_conflict="raise")
    # "return" hands back the running task.
    assert (await dl.tasks.create(type="t", key="k")).id == task.id
    current = await dl.tasks.get(task.id)
    assert current.data == {"v": 1}
    assert current.status is TaskStatus.RUNNING
    assert await dl.tasks.count() == 1

    await dl.tasks.complete(running)
    again = await dl.tasks.create(type="t", data={"v": 3}, key="k", on_conflict="raise")
    assert again.id != task.id
    assert again.status is TaskStatus.PENDING
    # A cancelled (or failed) task frees its key as well.
    await dl.tasks.cancel(again)
    third = await dl.tasks.create(type="t", key="k", on_conflict="raise")
    assert third.id not in {task.id, again.id}
    assert await dl.tasks.count() == 3
    assert await dl.tasks.count(status=["pending", "running"]) == 1


async def test_keyed_batches_are_all_or_nothing(dl: DataLayer) -> None:
    taken = await dl.tasks.create(type="t", key="taken")
    with pytest.raises(ValidationError) as twice:
        await dl.tasks.create_many([{"type": "t", "key": "a"}, {"type": "t", "key": "a"}])
    assert twice.value.field == "key"
    assert await task_count(dl) == 1

    batch: list[dict[str, Any]] = [
        {"type": "t", "key": "new-1"},
        {"type": "t"},
        {"type": "t", "key": "taken", "data": {"mine": True}},
        {"type": "t", "key": "new-2"},
    ]
    with pytest.raises(Conflict):
        await dl.tasks.create_many(batch, on_conflict="raise")
    assert await task_count(dl) == 1, "nothing of the batch was written"

    # With "return", the taken key yields the live task and the rest is created.
    made = await dl.tasks.create_many(batch)
    assert [t.key for t in made] == ["new-1", None, "taken", "new-2"]
    assert made[2].id == taken.id
    assert made[2].data == {}
    assert await task_count(dl) == 4


async def test_a_dead_keyed_task_cannot_come_back_while_its_key_is_taken(
    dl: DataLayer, agent: UUID
) -> None:
    dead = await dl.tasks.create(type="t", key="k", max_attempts=1)
    (held,) = await dl.tasks.claim(agent)
    assert (await dl.tasks.fail(held, "boom")).status is TaskStatus.DEAD
    live = await dl.tasks.create(type="t", key="k", on_conflict="raise")
    with pytest.raises(Conflict):
        await dl.tasks.retry(dead.id)
    assert (await dl.tasks.get(dead.id)).status is TaskStatus.DEAD
    assert (await dl.tasks.get(live.id)).status is TaskStatus.PENDING


async def test_requeue_dead_skips_a_task_whose_key_is_taken(dl: DataLayer, agent: UUID) -> None:
    await dl.tasks.create(type="t", key="k", max_attempts=1)
    other = await dl.tasks.create(type="t", key="other", max_attempts=1)
    for held in await dl.tasks.claim(agent, n=2):
        await dl.tasks.fail(held, "boom")
    await dl.tasks.create(type="t", key="k")
    requeued = await dl.tasks.requeue_dead()
    assert [t.id for t in requeued] == [other.id]


async def test_a_keyed_create_with_an_ended_dependency_returns_the_live_task(
    dl: DataLayer,
) -> None:
    ended = await dl.tasks.create(type="root")
    await dl.tasks.cancel(ended)
    live = await dl.tasks.create(type="t", key="k")
    again = await dl.tasks.create(type="t", key="k", depends_on=[ended.id])
    assert again.id == live.id
    assert await dl.tasks.count(type="t") == 1


# -- 4. dependencies -------------------------------------------------------------------------


async def test_a_chain_runs_in_order(dl: DataLayer, agent: UUID) -> None:
    a = await dl.tasks.create(type="step", data={"n": "a"})
    b = await dl.tasks.create(type="step", data={"n": "b"}, depends_on=[a.id])
    c = await dl.tasks.create(type="step", data={"n": "c"}, depends_on=[str(b.id)])
    assert (a.blocked_by, b.blocked_by, c.blocked_by) == (0, 1, 1)
    assert (await dl.tasks.stats()).blocked == 2
    assert await dl.tasks.dependencies(c.id) == [b.id]
    assert await dl.tasks.dependencies(a.id) == []

    await run_one(dl, agent, a)
    assert (await dl.tasks.get(c.id)).blocked_by == 1
    await run_one(dl, agent, b)
    await run_one(dl, agent, c)
    finished = {t.id: t for t in await dl.tasks.get_many([a.id, b.id, c.id])}
    assert all(t.status is TaskStatus.COMPLETED for t in finished.values())
    start = {key: finished[t.id].started_at for key, t in {"a": a, "b": b, "c": c}.items()}
    end = {key: finished[t.id].finished_at for key, t in {"a": a, "b": b, "c": c}.items()}
    assert end["a"] <= start["b"]  # type: ignore[operator]
    assert end["b"] <= start["c"]  # type: ignore[operator]


async def test_fan_in_waits_for_every_dependency(dl: DataLayer, agent: UUID) -> None:
    a, b, c = await dl.tasks.create_many([{"type": "part", "data": {"n": i}} for i in range(3)])
    d = await dl.tasks.create(type="join", depends_on=[a.id, b.id, c.id, a.id])
    assert d.blocked_by == 3
    assert await dl.tasks.dependencies(d.id) == sorted([a.id, b.id, c.id])

    parts = await claim_all(dl, agent)
    assert {t.id for t in parts} == {a.id, b.id, c.id}
    by_id = {t.id: t for t in parts}
    for done in (a, b):
        await dl.tasks.complete(by_id[done.id])
        assert await claim_all(dl, agent) == []
    assert (await dl.tasks.get(d.id)).blocked_by == 1
    await dl.tasks.complete(by_id[c.id])
    assert [t.id for t in await claim_all(dl, agent)] == [d.id]


async def test_a_whole_graph_in_one_batch(dl: DataLayer, agent: UUID) -> None:
    ids = {name: uuid.uuid4() for name in "abcde"}
    # Listed children first: the batch is ordered by its dependencies, not by the list.
    items: list[dict[str, Any]] = [
        {"id": ids["e"], "type": "g", "data": {"n": "e"}, "depends_on": [ids["c"], ids["d"]]},
        {"id": ids["c"], "type": "g", "data": {"n": "c"}, "depends_on": [ids["a"], ids["b"]]},
        {"id": ids["d"], "type": "g", "data": {"n": "d"}, "depends_on": [str(ids["b"])]},
        {"id": str(ids["a"]), "type": "g", "data": {"n": "a"}},
        {"id": ids["b"], "type": "g", "data": {"n": "b"}},
    ]
    made = await dl.tasks.create_many(items)
    assert sorted(t.id for t in made) == sorted(ids.values())
    assert {t.data["n"]: t.blocked_by for t in made} == {"a": 0, "b": 0, "c": 2, "d": 1, "e": 2}
    assert await dl.tasks.dependencies(ids["e"]) == sorted([ids["c"], ids["d"]])

    order: list[set[str]] = []
    while claimed := await claim_all(dl, agent):
        order.append({t.data["n"] for t in claimed})
        for task in claimed:
            await dl.tasks.complete(task)
    assert order == [{"a", "b"}, {"c", "d"}, {"e"}]


async def test_a_linked_batch_is_returned_in_the_order_given(dl: DataLayer) -> None:
    parent, child = uuid.uuid4(), uuid.uuid4()
    made = await dl.tasks.create_many(
        [{"id": child, "type": "t", "depends_on": [parent]}, {"id": parent, "type": "t"}]
    )
    assert [t.id for t in made] == [child, parent]


async def test_depending_on_a_completed_task(dl: DataLayer, agent: UUID) -> None:
    a = await dl.tasks.create(type="first")
    await run_one(dl, agent, a)
    b = await dl.tasks.create(type="second", depends_on=[a.id])
    assert b.blocked_by == 0
    assert [t.id for t in await claim_all(dl, agent)] == [b.id]


async def test_unknown_and_foreign_dependencies_write_nothing(dl: DataLayer) -> None:
    mine = await dl.tasks.create(type="t")
    theirs = await dl.tenant("other").tasks.create(type="t")
    for missing in (uuid.uuid4(), theirs.id):
        with pytest.raises(NotFound) as info:
            await dl.tasks.create(type="t", depends_on=[mine.id, missing])
        assert str(missing) in str(info.value)
        with pytest.raises(NotFound):
            await dl.tasks.create_many(
                [
                    {"type": "t", "key": "k"},
                    {"type": "t", "depends_on": [mine.id]},
                    {"type": "t", "depends_on": [missing]},
                ]
            )
    assert await task_count(dl) == 1
    assert await dl.tenant("other").tasks.count() == 1
    assert (await dl.tenant("other").tasks.get(theirs.id)).status is TaskStatus.PENDING
    assert await dl.fetch_value("SELECT count(*) FROM task_dependencies") == 0


async def test_cycles_and_self_dependencies_are_refused(dl: DataLayer) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with pytest.raises(ValidationError, match="cycle") as cycle:
        await dl.tasks.create_many(
            [
                {"id": a, "type": "t", "depends_on": [c]},
                {"id": b, "type": "t", "depends_on": [a]},
                {"id": c, "type": "t", "depends_on": [b]},
            ]
        )
    assert cycle.value.field == "depends_on"
    with pytest.raises(ValidationError, match="cycle"):
        await dl.tasks.create_many(
            [{"id": a, "type": "t", "depends_on": [b]}, {"id": b, "type": "t", "depends_on": [a]}]
        )
    with pytest.raises(ValidationError, match="itself"):
        await dl.tasks.create_many([{"id": a, "type": "t", "depends_on": [a]}])
    with pytest.raises(ValidationError):
        await dl.tasks.create_many([{"id": a, "type": "t"}, {"id": a, "type": "t"}])
    # A key on a task of the batch that others of the batch depend on is refused as well.
    with pytest.raises(ValidationError):
        await dl.tasks.create_many(
            [{"id": a, "type": "t", "key": "k"}, {"id": b, "type": "t", "depends_on": [a]}]
        )
    assert await task_count(dl) == 0


async def chain(dl: DataLayer, label: str) -> tuple[Task, Task, Task, Task]:
    """root <- child <- grandchild, and an unrelated task."""
    root = await dl.tasks.create(type=f"{label}-root", max_attempts=1)
    child = await dl.tasks.create(type=f"{label}-child", depends_on=[root.id])
    grandchild = await dl.tasks.create(type=f"{label}-grandchild", depends_on=[child.id])
    bystander = await dl.tasks.create(type=f"{label}-bystander")
    return root, child, grandchild, bystander


async def assert_cascaded(dl: DataLayer, root: Task, descendants: list[Task], word: str) -> None:
    for task in await dl.tasks.get_many([t.id for t in descendants]):
        assert task.status is TaskStatus.CANCELLED, task
        assert task.error is not None
        assert str(root.id) in task.error, task.error
        assert word in task.error, task.error


@pytest.mark.parametrize("ending", ["dead", "failed", "cancelled", "cancelled-running"])
async def test_a_dependency_that_does_not_complete_cancels_its_dependents(
    dl: DataLayer, agent: UUID, ending: str
) -> None:
    root, child, grandchild, bystander = await chain(dl, ending)
    if ending == "cancelled":
        await dl.tasks.cancel(root, reason="not needed")
    else:
        (held,) = await dl.tasks.claim(agent, types=[root.type])
        if ending == "dead":
            ended = await dl.tasks.fail(held, "boom")  # out of attempts (max_attempts=1)
        elif ending == "failed":
            ended = await dl.tasks.fail(held, "boom", retry=False)
        else:
            ended = await dl.tasks.cancel(held.id, reason="stop")
        assert ended.status.value == ending.split("-")[0]
    await assert_cascaded(dl, root, [child, grandchild], ending.split("-")[0])
    assert (await dl.tasks.get(bystander.id)).status is TaskStatus.PENDING
    assert [t.id for t in await claim_all(dl, agent)] == [bystander.id]


async def test_a_dependent_of_an_ended_task_is_born_cancelled(dl: DataLayer, agent: UUID) -> None:
    root = await dl.tasks.create(type="root")
    await dl.tasks.cancel(root)
    late = await dl.tasks.create(type="late", depends_on=[root.id])
    assert late.status is TaskStatus.CANCELLED
    assert late.error is not None
    assert str(root.id) in late.error
    assert await claim_all(dl, agent) == []


async def test_a_dependent_born_cancelled_has_a_finish_time(dl: DataLayer) -> None:
    root = await dl.tasks.create(type="root")
    await dl.tasks.cancel(root)
    late = await dl.tasks.create(type="late", depends_on=[root.id])
    assert late.status is TaskStatus.CANCELLED
    assert late.finished_at is not None


async def test_deleting_an_unfinished_dependency_cancels_its_dependents(
    dl: DataLayer, agent: UUID
) -> None:
    root, child, grandchild, bystander = await chain(dl, "delete")
    await dl.tasks.delete(root.id)
    await assert_cascaded(dl, root, [child, grandchild], "deleted")
    assert [t.id for t in await claim_all(dl, agent)] == [bystander.id]

    # A completed dependency can go: its dependents no longer wait on it.
    done = await dl.tasks.create(type="done")
    await run_one(dl, agent, done)
    after = await dl.tasks.create(type="after", depends_on=[done.id])
    await dl.tasks.delete(done.id)
    assert (await dl.tasks.get(after.id)).status is TaskStatus.PENDING
    assert [t.id for t in await claim_all(dl, agent)] == [after.id]


async def test_deleting_a_graph_in_one_statement(dl: DataLayer) -> None:
    root, child, grandchild, _ = await chain(dl, "a")
    other_root, other_child, other_grandchild, _ = await chain(dl, "b")
    # Everything at once: dependencies and dependents go in the same statement.
    deleted = await dl.execute(
        "DELETE FROM tasks WHERE id = ANY(%s)", [[root.id, child.id, grandchild.id]]
    )
    assert deleted == 3
    # A dependency and its dependent go, the dependent's own dependent stays, cancelled.
    await dl.execute("DELETE FROM tasks WHERE id = ANY(%s)", [[other_root.id, other_child.id]])
    orphan = await dl.tasks.get(other_grandchild.id)
    assert orphan.status is TaskStatus.CANCELLED
    assert orphan.error is not None
    assert "deleted" in orphan.error
    assert str(other_child.id) in orphan.error or str(other_root.id) in orphan.error
    await dl.execute("DELETE FROM tasks")
    assert await task_count(dl) == 0
    assert await dl.fetch_value("SELECT count(*) FROM task_dependencies") == 0


async def test_a_dependent_created_while_its_dependency_ends_is_never_stuck(
    dl: DataLayer, dl2: DataLayer, agent: UUID
) -> None:
    rounds = 25
    for n in range(rounds):
        dependency = await dl.tasks.create(type="dep", data={"n": n})
        (held,) = await dl.tasks.claim(agent, types=["dep"])
        dependent, done = await asyncio.gather(
            dl.tasks.create(type="dependent", data={"n": n}, depends_on=[dependency.id]),
            dl2.tasks.complete(held),
        )
        assert done.status is TaskStatus.COMPLETED
        current = await dl.tasks.get(dependent.id)
        assert current.status is TaskStatus.PENDING
        assert current.blocked_by == 0, f"round {n}: blocked by a completed task"
        assert [t.id for t in await dl.tasks.claim(agent, types=["dependent"])] == [dependent.id]

    # The same race against the ways a dependency ends without completing.
    for n in range(rounds):
        dependency = await dl.tasks.create(type="dep", data={"n": n})
        (held,) = await dl.tasks.claim(agent, types=["dep"])
        end = (
            dl2.tasks.fail(held, "boom", retry=False)
            if n % 2
            else dl2.tasks.cancel(held.id, reason="stop")
        )
        dependent, _ = await asyncio.gather(
            dl.tasks.create(type="doomed", depends_on=[dependency.id]), end
        )
        current = await dl.tasks.get(dependent.id)
        assert current.status is TaskStatus.CANCELLED, f"round {n}: {current}"
    assert await dl.tasks.count(type="doomed", status="pending") == 0


async def test_a_dependent_created_while_its_dependency_is_deleted(
    dl: DataLayer, dl2: DataLayer
) -> None:
    refused = created = 0
    for n in range(20):
        dependency = await dl.tasks.create(type="dep", data={"n": n})
        made, _ = await asyncio.gather(
            dl.tasks.create(type="orphan", depends_on=[dependency.id]),
            dl2.tasks.delete(dependency.id),
            return_exceptions=True,
        )
        if isinstance(made, NotFound):
            refused += 1
            continue
        assert isinstance(made, Task), made
        created += 1
        assert (await dl.tasks.get(made.id)).status is TaskStatus.CANCELLED
    assert refused + created == 20
    assert await dl.tasks.count(type="orphan", status="pending") == 0
