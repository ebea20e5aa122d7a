"""Claims that never reach their claimant, and locks held across requests.

A cancelled claim must not leave tasks leased to nobody (the HTTP long-poll relies on it), and
``unclaim`` hands a claim back as if it had not happened; a lock handle made from a holder
token speaks for that grant and no other.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from agency_data import DataLayer
from agency_data.errors import LockNotOwned, ValidationError

pytestmark = pytest.mark.timeout(120)


async def test_a_cancelled_waiting_claim_takes_nothing(dl: DataLayer) -> None:
    tasks = dl.tenant("acme").tasks
    agent = (await dl.tenant("acme").agents.create("w", "worker")).id
    waiting = asyncio.create_task(tasks.claim(agent, ["job"], wait=30))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    task = await tasks.create("job")
    assert (await tasks.get(task.id)).status == "pending"
    (claimed,) = await tasks.claim(agent, ["job"])
    assert claimed.id == task.id
    assert claimed.attempts == 1


async def test_claims_cancelled_at_any_moment_leave_no_task_leased_to_nobody(
    dl: DataLayer,
) -> None:
    tasks = dl.tenant("acme").tasks
    agent = (await dl.tenant("acme").agents.create("w", "worker")).id
    rng = random.Random(7)
    delivered: set[uuid.UUID] = set()
    # Cancellations land before, during and after the claim statement; whatever a claim
    # took either reached its caller or went back to the queue with no attempt counted.
    for _ in range(40):
        await tasks.create("job")
        claiming = asyncio.create_task(tasks.claim(agent, ["job"], n=1))
        await asyncio.sleep(rng.uniform(0, 0.004))
        claiming.cancel()
        try:
            got = await claiming
        except asyncio.CancelledError:
            continue
        delivered.update(t.id for t in got)
    page = await tasks.list(type="job", limit=1000)
    for task in page.items:
        if task.id in delivered:
            assert task.status == "running"
            assert task.attempts == 1
        else:
            assert (task.status, task.attempts) == ("pending", 0), task
            assert task.lease_token is None


async def test_unclaim_puts_a_claim_back_untouched_and_only_under_its_token(
    dl: DataLayer,
) -> None:
    tasks = dl.tenant("acme").tasks
    first = await tasks.create("job", max_attempts=1)
    second = await tasks.create("job")
    agent = (await dl.tenant("acme").agents.create("w", "worker")).id
    claimed = await tasks.claim(agent, ["job"], n=2)
    assert {t.id for t in claimed} == {first.id, second.id}
    assert await tasks.unclaim(claimed[:1]) == [claimed[0].id]
    back = await tasks.get(claimed[0].id)
    assert back.status == "pending"
    assert back.attempts == 0
    assert back.lease_token is None
    # Its last attempt was not spent: it can be claimed again, ahead as before.
    (again,) = await tasks.claim(agent, ["job"])
    assert again.id == claimed[0].id
    assert again.attempts == 1
    # A stale token hands nothing back: the task stays with its current holder.
    assert await tasks.unclaim(claimed[:1]) == []
    await tasks.check(again)  # still held under its own token
    assert await tasks.unclaim([]) == []
    with pytest.raises(ValidationError):
        await tasks.unclaim([first])  # not a claim: no lease token
    with pytest.raises(ValidationError):
        await dl.tenant("globex").tasks.unclaim([again])


async def test_a_lock_handle_made_from_its_holder_token_extends_and_releases_it(
    dl: DataLayer,
) -> None:
    scope = dl.tenant("acme")
    lock = scope.lock("res", ttl=5)
    fence = await lock.acquire()
    assert lock.expires_at is not None
    holder = lock.holder
    intruder = scope.lock("res", holder=uuid.uuid4().hex)
    with pytest.raises(LockNotOwned):
        await intruder.extend(10, replace_ttl=True)
    with pytest.raises(LockNotOwned):
        await intruder.release()
    assert await lock.owned()
    again = scope.lock("res", holder=holder)
    with pytest.raises(ValidationError):
        await again.extend(10)  # no known expiry to add to
    await again.extend(60, replace_ttl=True)
    assert again.expires_at is not None
    assert again.expires_at > lock.expires_at
    # Another tenant's lock of the same name is another lock: the token means nothing there.
    with pytest.raises(LockNotOwned):
        await dl.tenant("globex").lock("res", holder=holder).release()
    await again.release()
    assert not await lock.locked()
    assert await scope.lock("res").acquire() == fence + 1
    for bad in ("", "x" * 32, holder.upper(), 7):
        with pytest.raises(ValidationError):
            scope.lock("res", holder=bad)  # type: ignore[arg-type]


async def test_an_override_completes_a_task_this_process_claimed_whoever_holds_it(
    dl: DataLayer,
) -> None:
    scope = dl.tenant("acme")
    tasks = scope.tasks
    agent = (await scope.agents.create("w", "worker")).id
    task = await tasks.create("job")
    (first,) = await tasks.claim(agent, ["job"], lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await tasks.sweep() == {"pending": 1, "dead": 0}
    (second,) = await tasks.claim(agent, ["job"])
    # Claimed here twice: a bare id says not which claim it speaks for.
    with pytest.raises(ValidationError):
        await tasks.complete(task.id, "x")
    with pytest.raises(ValidationError):
        await tasks.complete(task.id, "x", override=True, lease_token=second.lease_token)
    done = await tasks.complete(task.id, "by hand", override=True)
    assert done.status == "completed"
    assert done.result == "by hand"
    assert first.lease_token != second.lease_token
