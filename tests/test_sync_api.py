"""The synchronous API (agency_data.sync): the same behaviour as the async one.

Each behaviour is written once, as synchronous code taking a DataLayer, and run against both
faces (the ``face`` fixture): the generated sync twins, on their private loop; and the async
DataLayer itself, its coroutines run on the test's own loop through a portal by a small
dynamic adapter (``_Awaited``), so that the body's calls, ``with`` blocks and ``for`` loops
are the async API's awaits, ``async with`` and ``async for``. Then what only the sync face
has: threads, closing, interrupts, callbacks in the caller's thread, and the generated module
kept current.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

import agency_data.sync as sync_api
from agency_data import DataLayer as AsyncDataLayer
from agency_data.errors import (
    AgencyDataError,
    ConfigError,
    LockNotAcquired,
    NotFound,
    UsageError,
    ValidationError,
)
from agency_data.sync import DataLayer, Portal
from agency_data.sync import _generate as generator
from tests.conftest import make_config

# -- the two faces ------------------------------------------------------------------------------


class _Awaited:
    """The async object ``aio`` used as synchronous code uses the twins: each coroutine run on
    the test's loop through ``portal``, async iterators stepped, async context managers entered,
    functions handed to it made awaitable. Nothing of the sync twins is used."""

    def __init__(self, aio: Any, portal: Portal) -> None:
        self._aio = aio
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._aio, "aclose" if name == "close" else name)
        if inspect.ismethod(value) or inspect.isfunction(value):

            def call(*args: Any, **kwargs: Any) -> Any:
                args = tuple(self._function(a) for a in args)
                kwargs = {k: self._function(v) for k, v in kwargs.items()}
                return self._adapt(value(*args, **kwargs))

            return call
        return self._adapt(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._aio, name, value)

    def __enter__(self) -> _Awaited:
        self._portal.aenter(self._aio)
        return self

    def __exit__(self, *exc: Any) -> bool:
        return self._portal.aexit(self._aio, *exc)

    def _function(self, value: Any) -> Any:
        if inspect.isfunction(value):
            return self._portal.callback(value, lambda v, _: self._adapt(v))
        if isinstance(value, list) and any(inspect.isfunction(v) for v in value):
            return [self._function(v) for v in value]
        return value

    def _adapt(self, value: Any) -> Any:
        if inspect.iscoroutine(value):
            return self._adapt(self._portal.call(value))
        if hasattr(value, "__anext__"):
            return (self._adapt(item) for item in self._portal.iterate(value))
        if hasattr(value, "__aenter__") and not type(value).__module__.startswith("agency_data"):
            return self._portal.enter(value, lambda v, _: self._adapt(v))
        if hasattr(value, "__enter__"):
            # One that sets context variables (as_actor): set in the block's context, as
            # async code inside ``async with`` sets them in its task's.
            return self._portal.using(value)
        module = type(value).__module__
        if type(value).__name__ == "Transaction" or (
            module.startswith("agency_data")
            and not module.startswith("agency_data.models")
            and not isinstance(value, BaseException)
            and any(inspect.iscoroutinefunction(m) for _, m in inspect.getmembers(type(value)))
        ):
            return _Awaited(value, self._portal)
        return value


@pytest.fixture(params=["async", "sync"])
async def face(
    request: pytest.FixtureRequest, database: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    """The layer as a body sees it: the async DataLayer through ``_Awaited``, or the sync one."""
    config = make_config(database, redis_url, tmp_path)
    if request.param == "async":
        async with AsyncDataLayer(config) as layer:
            yield cast(DataLayer, _Awaited(layer, Portal.of(asyncio.get_running_loop())))
        return
    sync = await asyncio.to_thread(DataLayer, config)
    await asyncio.to_thread(sync.connect)
    try:
        yield sync
    finally:
        await asyncio.to_thread(sync.close)


def both_faces(body: Callable[[DataLayer], None]) -> Callable[[DataLayer], Any]:
    """A test running ``body`` against each face, in a thread of its own (the test's loop
    stays free to serve the async face's calls)."""

    async def test(face: DataLayer) -> None:
        await asyncio.wait_for(asyncio.to_thread(body, face), 60)

    # Named as the body, but taking the face (functools.wraps would show pytest the body's
    # signature, and so the wrong fixture).
    test.__name__, test.__qualname__, test.__doc__ = body.__name__, body.__qualname__, body.__doc__
    return test


# -- shared behaviour ---------------------------------------------------------------------------


@both_faces
def test_agents_crud_and_listing(dl: DataLayer) -> None:
    created = [
        dl.agents.create(name=f"a{i}", type="worker", capabilities={"i": i}) for i in range(5)
    ]
    assert dl.agents.get(created[0].id, cached=False) == created[0]
    updated = dl.agents.update(created[1].id, name="renamed")
    assert updated.name == "renamed"
    assert updated.version == created[1].version + 1
    page = dl.agents.list(limit=3)
    assert [a.id for a in page.items] == [a.id for a in created[:3]]
    rest = dl.agents.list(limit=3, cursor=page.next_cursor)
    assert [a.id for a in rest.items] == [a.id for a in created[3:]]
    assert dl.agents.count() == 5
    dl.agents.delete(created[0].id)
    with pytest.raises(NotFound):
        dl.agents.get(created[0].id)
    assert dl.agents.count() == 4


@both_faces
def test_tasks_are_created_claimed_completed_and_failed(dl: DataLayer) -> None:
    agent = dl.agents.create(name="w", type="worker")
    first = dl.tasks.create("job", {"n": 1}, priority=5)
    second = dl.tasks.create("job", {"n": 2}, priority=1)
    claimed = dl.tasks.claim(agent.id, ["job"], 2)
    assert [t.id for t in claimed] == [first.id, second.id]  # highest priority first
    assert all(t.status == "running" and t.lease_token is not None for t in claimed)
    done = dl.tasks.complete(claimed[0], {"ok": True})
    assert (done.status, done.result) == ("completed", {"ok": True})
    failed = dl.tasks.fail(claimed[1], "broken", retry=False)
    assert (failed.status, failed.error) == ("failed", "broken")
    assert dl.tasks.claim(agent.id, ["job"]) == []
    assert dl.tasks.get(first.id).status == "completed"


@both_faces
def test_work_on_a_task_in_a_block_and_by_a_worker(dl: DataLayer) -> None:
    agent = dl.agents.create(name="w", type="worker")
    dl.tasks.create("step", {"n": 0})
    (task,) = dl.tasks.claim(agent.id, ["step"])
    with dl.tasks.working(task) as job:
        assert job.task.id == task.id
        job.result = {"done": True}
    finished = dl.tasks.get(task.id)
    assert (finished.status, finished.result) == ("completed", {"done": True})

    created = [dl.tasks.create("w", {"n": n}).id for n in range(3)]
    handled: list[int] = []

    def handler(claimed: Any) -> dict[str, int]:
        handled.append(claimed.data["n"])
        dl.cache.set(f"handled:{claimed.data['n']}", True)  # the handler may call the API
        return {"double": claimed.data["n"] * 2}

    worker = dl.tasks.worker(handler, agent_id=agent.id, types=["w"])
    assert worker.run(max_tasks=3) == 3
    assert sorted(handled) == [0, 1, 2]
    assert worker.completed == 3
    assert [dl.tasks.get(t).result for t in created] == [{"double": n * 2} for n in range(3)]
    assert dl.cache.get("handled:2") is True


@both_faces
def test_a_collection_stores_finds_and_deletes(dl: DataLayer) -> None:
    notes = dl.embeddings.create_collection("notes", dimension=3)
    ids = notes.store_many(
        [
            {"entity_type": "note", "entity_id": str(i), "vector": [1.0, float(i), 0.0]}
            for i in range(4)
        ]
    )
    assert len(ids) == 4
    assert notes.get(ids[2]).entity_id == "2"
    nearest = notes.find_similar([1.0, 3.0, 0.0], limit=2)
    assert [r.entity_id for r in nearest] == ["3", "2"]
    assert notes.delete(ids[:2]) == 2
    assert notes.count() == 2
    with pytest.raises(NotFound):
        notes.get(ids[0])
    assert dl.embeddings.collection("notes").count() == 2


@both_faces
def test_memories_are_remembered_recalled_and_consolidated(dl: DataLayer) -> None:
    dl.memory.setup(dimension=3)
    old = datetime.now(UTC) - timedelta(days=30)
    made = [
        dl.memory.remember(
            "a1", [1.0, float(i), 0.0], text=f"note {i}", importance=0.1, at=old, dedup=False
        )
        for i in range(3)
    ]
    assert [m.event for m in made] == ["created", "created", "created"]
    (hit,) = dl.memory.recall("a1", [1.0, 2.0, 0.0], limit=1)
    assert hit.memory.text == "note 2"
    # The summariser is a plain function, run in the caller's thread.
    (summary,) = dl.memory.consolidate("a1", lambda group: " / ".join(m.text for m in group))
    assert {m.id for m in dl.memory.replaced(summary.id)} == {m.id for m in made}
    (left,) = dl.memory.list("a1")
    assert sorted(left.text.split(" / ")) == ["note 0", "note 1", "note 2"]  # type: ignore[union-attr]
    seen = [c.op for c in dl.memory.changes(since="start", wait=False)]
    assert seen[:3] == ["insert", "insert", "insert"]


@both_faces
def test_the_cache_gets_sets_and_invalidates(dl: DataLayer) -> None:
    dl.cache.set("user:1", {"name": "ada"}, tags=["users"])
    dl.cache.set("user:2", {"name": "bob"})
    assert dl.cache.get("user:1") == {"name": "ada"}
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return "loaded"

    assert dl.cache.get_or_set("lazy", load) == "loaded"
    assert dl.cache.get_or_set("lazy", load) == "loaded"
    assert len(loads) == 1
    assert dl.cache.invalidate_tags("users") >= 1
    assert dl.cache.get("user:1") is None
    assert dl.cache.invalidate_prefix("user:") >= 1
    assert dl.cache.get("user:2", "gone") == "gone"


@both_faces
def test_sessions_live_and_end(dl: DataLayer) -> None:
    session = dl.sessions.create("agent-7", {"step": 1}, ttl=60)
    assert dl.sessions.get(session.id).data == {"step": 1}
    assert dl.sessions.update(session.id, {"more": True}).data == {"step": 1, "more": True}
    assert dl.sessions.touch(session.id, ttl=120).ttl == 120
    assert [s.id for s in dl.sessions.list_by_agent("agent-7")] == [session.id]
    dl.sessions.delete(session.id)
    with pytest.raises(NotFound):
        dl.sessions.get(session.id)


@both_faces
def test_a_lock_is_held_with_a_growing_fencing_token(dl: DataLayer) -> None:
    with dl.lock("resource:7", ttl=10) as lock:
        first = lock.fencing_token
        assert isinstance(first, int)
        assert lock.held
        assert lock.locked()
        assert lock.owned()
        with pytest.raises(LockNotAcquired):
            dl.lock("resource:7", ttl=10, wait=0).acquire()
    assert not dl.lock("resource:7").locked()
    again = dl.lock("resource:7", ttl=10)
    token = again.acquire()
    assert token > first
    again.release()


@both_faces
def test_pubsub_messages_arrive_in_order(dl: DataLayer) -> None:
    received: list[Any] = []
    subscribed = threading.Event()

    def listen() -> None:
        for message in dl.pubsub.subscribe("events"):
            received.append(message.data)
            subscribed.set()
            if message.data == "last":
                return

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        # At most once: publish until the subscription is in place.
        deadline = time.monotonic() + 20
        while dl.pubsub.publish("events", "hello") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert subscribed.wait(20)
        dl.pubsub.publish("events", {"n": 1})
        dl.pubsub.publish("events", "last")
    finally:
        listener.join(20)
    assert not listener.is_alive()
    assert received[-2:] == [{"n": 1}, "last"]


@both_faces
def test_stream_messages_are_consumed_and_acknowledged(dl: DataLayer) -> None:
    for n in range(3):
        dl.streams.publish("jobs", {"n": n})
    seen = []
    for message in dl.streams.consume("jobs", "workers", "w1", block=0.2):
        seen.append(message.data["n"])
        assert dl.streams.ack("jobs", "workers", message.id) == 1
        if len(seen) == 3:
            break
    assert seen == [0, 1, 2]
    assert dl.streams.pending("jobs", "workers") == 0


@both_faces
def test_transactions_commit_and_roll_back(dl: DataLayer) -> None:
    committed: list[str] = []
    with dl.transaction() as tx:
        kept = dl.agents.create(name="kept", type="t")
        # Visible inside the block, to this block's statements.
        assert dl.agents.get(kept.id, cached=False) == kept
        assert dl.fetch_value("SELECT count(*) FROM agents") == 1
        tx.on_commit(lambda: committed.append("kept"))
        assert committed == []
    assert committed == ["kept"]

    def write_then_fail() -> None:
        with dl.transaction() as tx:
            dl.agents.create(name="lost-1", type="t")
            dl.tasks.create("lost")
            tx.on_commit(lambda: committed.append("lost"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert committed == ["kept"]
    assert [a.name for a in dl.agents.list().items] == ["kept"]
    assert dl.tasks.count() == 0
    # A nested block is a savepoint: its rollback leaves the outer block's writes.
    with dl.transaction():
        dl.agents.create(name="outer", type="t")
        with contextlib.suppress(RuntimeError), dl.transaction() as inner:
            assert inner.nested
            dl.agents.create(name="inner", type="t")
            raise RuntimeError("undo the savepoint")
    assert sorted(a.name for a in dl.agents.list().items) == ["kept", "outer"]


@both_faces
def test_run_in_transaction_takes_a_function_that_calls_the_api(dl: DataLayer) -> None:
    def write_two(tx: Any) -> int:
        assert not tx.nested
        dl.agents.create(name="one", type="t")
        dl.agents.create(name="two", type="t")
        return int(dl.fetch_value("SELECT count(*) FROM agents"))

    assert dl.run_in_transaction(write_two) == 2

    def half_then_fail(tx: Any) -> None:
        dl.agents.create(name="three", type="t")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        dl.run_in_transaction(half_then_fail)
    assert dl.agents.count() == 2
    results = dl.execute_transaction(
        [("INSERT INTO tasks (type) VALUES ('a')", None), lambda tx: dl.tasks.count()]
    )
    assert results == [1, 1]


@both_faces
def test_tenant_views_are_isolated(dl: DataLayer) -> None:
    a, b = dl.tenant("acme"), dl.tenant("globex")
    agent = a.agents.create(name="acme-agent", type="t")
    with pytest.raises(NotFound):
        b.agents.get(agent.id)
    assert (a.agents.count(), b.agents.count(), dl.agents.count()) == (1, 0, 0)
    a.cache.set("k", "acme's")
    assert b.cache.get("k") is None
    with b.transaction():
        b.tasks.create("globex-job")
        assert b.fetch_value("SELECT count(*) FROM tasks") == 1
        assert a.tasks.count() == 0
    assert a.fetch_value("SELECT count(*) FROM tasks") == 0
    assert dl.tenant("acme").tenant_id == "acme"


@both_faces
def test_errors_are_the_same_classes(dl: DataLayer) -> None:
    raised: list[str] = []
    agent = dl.agents.create(name="a", type="t")
    for call in [
        lambda: dl.agents.get(uuid.uuid4()),
        lambda: dl.agents.get("not-a-uuid"),
        lambda: dl.agents.update(agent.id, name="b", expected_version=agent.version + 5),
        lambda: dl.tasks.claim(agent.id, n=0),
        lambda: dl.cache.set("k", 1, ttl=-1),
        lambda: dl.fetch("SELECT * FROM no_such_table"),
        lambda: dl.tenant("a b"),
        lambda: dl.run_in_transaction(5),  # type: ignore[arg-type]
    ]:
        with pytest.raises(AgencyDataError) as info:
            call()
        raised.append(type(info.value).__name__)
    assert raised == [
        "NotFound",
        "ValidationError",
        "Conflict",
        "ValidationError",
        "ValidationError",
        "QueryError",
        "ValidationError",
        "ValidationError",
    ]


@both_faces
def test_the_actor_is_named_inside_and_outside_transactions(dl: DataLayer) -> None:
    actor = "SELECT current_setting('agency_data.actor', true)"
    with dl.as_actor("svc-outer"), dl.transaction():
        assert dl.fetch_value(actor) == "svc-outer"
    with dl.transaction():
        with dl.as_actor("svc-inner"):
            assert dl.fetch_value(actor) == "svc-inner"
        dl.agents.create(name="after", type="t")


# -- the sync face only -------------------------------------------------------------------------


@pytest.fixture
def sync_dl(database: str, redis_url: str, tmp_path: Path) -> Iterator[DataLayer]:
    """A connected sync DataLayer, made and closed outside any event loop."""
    with DataLayer(make_config(database, redis_url, tmp_path)) as layer:
        yield layer


def test_the_generated_module_is_current() -> None:
    current = generator.TARGET.read_text(encoding="utf-8")
    assert generator.generate() == current, (
        f"agency_data/sync/_api.py is stale: run `{generator.COMMAND}` (and commit the result)"
    )


def test_with_statement_aio_and_portal(sync_dl: DataLayer) -> None:
    assert isinstance(sync_dl.aio, AsyncDataLayer)
    assert isinstance(sync_dl.portal, Portal)
    agent = sync_dl.agents.create(name="a", type="t")
    # The async layer behind it, reached through its portal (as the integrations do).
    assert sync_dl.portal.call(sync_dl.aio.agents.get(agent.id)) == agent
    assert sync_dl.agents.aio is sync_dl.aio.agents
    assert sync_dl.agents is sync_dl.agents  # one twin per store, not one per call
    assert sync_dl.health().status in ("ok", "degraded")


def test_eight_threads_at_once(sync_dl: DataLayer) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait(10)
            mine = [sync_dl.agents.create(name=f"t{n}-{i}", type="t") for i in range(10)]
            with sync_dl.transaction():
                for agent in mine[:5]:
                    sync_dl.agents.update(agent.id, status="inactive")
                assert sync_dl.agents.count(status="inactive") >= 5
            for agent in mine:
                assert sync_dl.agents.get(agent.id, cached=False).name == agent.name
            sync_dl.cache.set(f"thread:{n}", n)
            assert sync_dl.cache.get(f"thread:{n}") == n
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sync_dl.agents.count() == 80
    assert sync_dl.agents.count(status="inactive") == 40


def test_two_threads_transactions_do_not_mix(sync_dl: DataLayer) -> None:
    inside = threading.Event()
    checked = threading.Event()
    seen: dict[str, Any] = {}

    def committer() -> None:
        with sync_dl.transaction():
            sync_dl.agents.create(name="a-committed", type="t")
            inside.set()
            assert checked.wait(20)
            seen["a sees"] = sync_dl.fetch_value("SELECT count(*) FROM agents")

    def roller() -> None:
        assert inside.wait(20)
        # Not in A's transaction: A's row is not visible, and this thread's own block is
        # its own transaction.
        seen["b before"] = sync_dl.fetch_value("SELECT count(*) FROM agents")
        with contextlib.suppress(RuntimeError), sync_dl.transaction():
            sync_dl.agents.create(name="b-rolled-back", type="t")
            seen["b inside"] = sync_dl.fetch_value("SELECT count(*) FROM agents")
            raise RuntimeError("roll back")
        checked.set()

    threads = [threading.Thread(target=committer), threading.Thread(target=roller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == {"b before": 0, "b inside": 1, "a sees": 1}
    assert [a.name for a in sync_dl.agents.list().items] == ["a-committed"]


def test_callbacks_run_in_the_calling_thread(sync_dl: DataLayer) -> None:
    me = threading.get_ident()
    where: list[int] = []

    def load() -> int:
        where.append(threading.get_ident())
        # The loader may call the sync API itself.
        return sync_dl.agents.count() + 41

    assert sync_dl.cache.get_or_set("answer", load) == 41
    with sync_dl.transaction() as tx:
        tx.on_commit(lambda: where.append(threading.get_ident()))
    assert where == [me, me]

    async def async_body(tx: Any) -> str:
        return "an async function works too"

    assert sync_dl.run_in_transaction(async_body) == "an async function works too"


def test_close_then_any_call_raises_usage_error(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    dl = DataLayer(make_config(database, redis_url, tmp_path))
    dl.connect()
    agents, stream = dl.agents, dl.streams
    dl.close()
    dl.close()  # a second close does nothing
    for call in [
        lambda: agents.count(),
        lambda: dl.fetch("SELECT 1"),
        lambda: next(stream.consume("s", "g", "c")),
        lambda: dl.transaction().__enter__(),
        lambda: dl.connect(),
    ]:
        with pytest.raises(UsageError, match="closed"):
            call()
    assert not dl.portal.loop.is_running()


def test_a_sync_call_from_inside_the_loop_is_refused(sync_dl: DataLayer) -> None:
    async def sync_call_on_the_loop() -> int:
        return sync_dl.agents.count()

    with pytest.raises(UsageError, match="await"):
        sync_dl.portal.call(sync_call_on_the_loop())
    assert sync_dl.agents.count() == 0  # and the portal still serves


def _portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "agency-data-sync"]


def test_a_failed_connect_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = _portal_threads()
    config = make_config("host=/nonexistent dbname=x user=x connect_timeout=1", "", tmp_path)
    with pytest.raises(AgencyDataError), DataLayer(config):
        pass
    assert _portal_threads() == before


class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt, raised by the test's own signal handler."""


@contextlib.contextmanager
def _interrupt_after(seconds: float) -> Iterator[None]:
    """Interrupt the main thread (as Ctrl-C does) after ``seconds``."""

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR1, previous)


def test_an_interrupted_waiting_claim_leaves_nothing_claimed(sync_dl: DataLayer) -> None:
    assert threading.current_thread() is threading.main_thread()
    agent = sync_dl.agents.create(name="w", type="t")
    started = time.monotonic()
    with pytest.raises(_Interrupted), _interrupt_after(0.5):
        sync_dl.tasks.claim(agent.id, ["job"], wait=30)
    assert time.monotonic() - started < 15
    # The claim was cancelled, and had finished cancelling when the interrupt came out: a task
    # created now is there for the next claim, not taken by the interrupted one.
    task = sync_dl.tasks.create("job")
    time.sleep(0.3)
    assert sync_dl.tasks.get(task.id).status == "pending"
    assert [t.id for t in sync_dl.tasks.claim(agent.id, ["job"])] == [task.id]


def test_an_interrupt_inside_a_transaction_block_rolls_it_back(sync_dl: DataLayer) -> None:
    def write_then_wait() -> None:
        with sync_dl.transaction():
            sync_dl.agents.create(name="never", type="t")
            time.sleep(5)

    with pytest.raises(_Interrupted), _interrupt_after(0.3):
        write_then_wait()
    assert sync_dl.agents.count() == 0
    assert sync_dl.portal.loop.is_running()  # the interrupt stayed out of the loop


async def test_waiting_through_the_portal_from_another_loop_can_be_cancelled() -> None:
    portal = Portal.start("test-portal")
    stopped = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(portal.acall(forever()), 0.2)
        assert await asyncio.to_thread(stopped.wait, 10)
    finally:
        await asyncio.to_thread(portal.close)


# -- the portal itself --------------------------------------------------------------------------

_VAR: ContextVar[str] = ContextVar("test_sync_var", default="unset")


class _Setting:
    """An async context manager that sets ``_VAR`` for its block, as a transaction does."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.token: Token[str] | None = None

    async def __aenter__(self) -> str:
        self.token = _VAR.set(self.value)
        return self.value

    async def __aexit__(self, *exc: object) -> None:
        assert self.token is not None
        _VAR.reset(self.token)


async def _read_var() -> str:
    return _VAR.get()


@pytest.fixture
def portal() -> Iterator[Portal]:
    """A portal with a loop of its own."""
    made = Portal.start("test-portal")
    yield made
    made.close()


def test_blocks_run_their_calls_in_their_context_per_thread(portal: Portal) -> None:
    with portal.enter(_Setting("outer")) as value:
        assert value == "outer"
        assert portal.call(_read_var()) == "outer"
        with portal.enter(_Setting("inner")):
            assert portal.call(_read_var()) == "inner"
            other: list[str] = []
            thread = threading.Thread(target=lambda: other.append(portal.call(_read_var())))
            thread.start()
            thread.join(10)
            assert other == ["unset"]  # another thread's calls are outside this block
        assert portal.call(_read_var()) == "outer"
    assert portal.call(_read_var()) == "unset"


def test_a_callback_with_no_caller_waiting_runs_in_a_worker_thread(portal: Portal) -> None:
    threads: list[int] = []
    callback = portal.callback(lambda: threads.append(threading.get_ident()))

    async def later() -> None:
        await asyncio.sleep(0.05)
        await callback()

    async def start_later() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(later())

    task = portal.call(start_later())

    async def finished() -> None:
        await asyncio.wait_for(task, 10)

    portal.call(finished())
    assert len(threads) == 1
    assert threads[0] not in (threading.get_ident(), portal._thread.ident if portal._thread else 0)


def test_an_interrupt_in_a_callback_cancels_the_call(portal: Portal) -> None:
    stopped = threading.Event()

    def interrupted() -> None:
        raise _Interrupted

    async def uses(callback: Callable[[], Awaitable[None]]) -> None:
        try:
            await callback()
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    with pytest.raises(_Interrupted):
        portal.call(uses(portal.callback(interrupted)))
    assert stopped.is_set()  # finished cancelling before the interrupt came out
    assert portal.call(_read_var()) == "unset"  # and the loop still serves


def test_closing_fails_the_calls_still_waiting(portal: Portal) -> None:
    errors: list[BaseException] = []
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    def wait_forever() -> None:
        try:
            portal.call(forever())
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            errors.append(exc)

    thread = threading.Thread(target=wait_forever)
    thread.start()
    assert started.wait(10)
    portal.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], UsageError)
    assert "closed" in str(errors[0])


def test_leaving_an_iteration_early_closes_the_async_generator(portal: Portal) -> None:
    closed = threading.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            for n in range(100):
                yield n
        finally:
            closed.set()

    for n in portal.iterate(numbers()):
        if n == 2:
            break
    assert closed.is_set()


def test_plain_functions_run_on_the_loop_thread(portal: Portal) -> None:
    assert portal.run_sync(threading.get_ident) == (portal._thread.ident if portal._thread else 0)


async def test_a_portal_into_a_closed_loop_refuses() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(UsageError, match="closed"):
        await asyncio.to_thread(Portal.of(loop).call, _read_var())


def test_the_sync_only_entry_points_refuse_bad_input(portal: Portal) -> None:
    async def coroutine_function() -> None:
        return None

    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: portal.call(coroutine_function), "coro"),  # the function, not its coroutine
        (lambda: portal.call(5), "coro"),  # type: ignore[arg-type]
        (lambda: portal.call(_read_var(), context=5), "context"),  # type: ignore[arg-type]
        (lambda: next(portal.iterate([1, 2])), "items"),  # type: ignore[arg-type]
        (lambda: portal.enter(5), "manager"),  # type: ignore[call-overload]
        (lambda: portal.enter(_Setting("x"), 5), "wrap"),  # type: ignore[call-overload]
        (lambda: portal.aenter(threading.Lock()), "manager"),  # type: ignore[arg-type]
        (lambda: portal.using(_Setting("x")), "manager"),  # type: ignore[arg-type]
        (lambda: portal.run_sync(5), "fn"),  # type: ignore[arg-type]
        (lambda: Portal.start(5), "name"),  # type: ignore[arg-type]
        (lambda: Portal.start(loop_factory=5), "loop_factory"),  # type: ignore[arg-type]
        (lambda: Portal.start(loop_factory=object), "loop_factory"),
        (lambda: Portal.of("loop"), "loop"),  # type: ignore[arg-type]
        (lambda: DataLayer.wrap(5, portal), "aio"),  # type: ignore[arg-type]
        (lambda: sync_api.Collection(object(), portal), "aio"),
        (lambda: sync_api.Cache(object(), "portal"), "portal"),  # type: ignore[arg-type]
    ]
    threads = len(threading.enumerate())
    for call, field in cases:
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == field, (field, str(info.value))
    assert len(threading.enumerate()) == threads  # no portal thread started by a refusal
    assert portal.call(_read_var()) == "unset"  # and nothing is stuck on the loop


def test_a_bad_config_starts_no_portal_thread(tmp_path: Path) -> None:
    before = _portal_threads()
    with pytest.raises(ConfigError):
        DataLayer(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DataLayer(make_config("", "", tmp_path), postgresql=5)
    assert _portal_threads() == before


def test_a_forked_child_is_told_to_make_its_own(portal: Portal) -> None:
    assert portal.call(_read_var()) == "unset"
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        signal.alarm(10)  # a hang kills the child, which the parent sees
        try:
            portal.call(_read_var())
        except UsageError as exc:
            os._exit(0 if "fork" in str(exc) else 2)
        os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert portal.call(_read_var()) == "unset"  # the parent's portal is untouched
