"""Leases kept alive: 1,000 running tasks heartbeated about every second.

The library's way (``claim(..., auto_heartbeat=True)``: the process's lease keeper extends every
lease that falls due within a short window in one statement) beside the naive way (each task's
own ``dl.tasks.heartbeat(task)`` once a second): heartbeat statements and leases extended per
second, their round-trip time, what they cost the server (CPU, WAL, HOT share of the updates)
and this process (CPU), leases lost, and what each takes from a concurrent claim + complete
workload of 4 workers, measured in the same run with nothing held, in rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psutil

from agency_data import DataLayer
from agency_data.errors import AgencyDataError, Conflict
from agency_data.models import Task
from bench.context import Bench
from bench.harness import Result

HELD = 1_000
# Background heartbeats go a third of the way into the lease: a 3 s lease is beaten every 1 s.
LEASE = 3.0
BEAT = LEASE / 3
CLAIMERS = 4
# Pending tasks kept ahead of the claimers, so that no timed round runs the queue dry.
_QUEUE_DEPTH = 15_000
MODES = ("none", "batched", "naive")


@dataclass
class _Beats:
    """Every heartbeat statement the lease keeper sent (batched and naive go through it)."""

    statements: int = 0
    extended: int = 0
    lost: int = 0
    seconds: float = 0.0

    def copy(self) -> _Beats:
        return _Beats(self.statements, self.extended, self.lost, self.seconds)


@contextlib.contextmanager
def _counting(dl: DataLayer) -> Iterator[_Beats]:
    """Count the heartbeat statements of ``dl``'s lease keeper while the block runs."""
    # The private seam: LeaseKeeper.heartbeat is where both the background runner and
    # dl.tasks.heartbeat() send their statement (one per call, however many leases).
    keeper = dl.tasks._runtime.leases
    original = keeper.heartbeat
    beats = _Beats()

    async def counted(
        tenant: str, batch: list[tuple[UUID, UUID, float | None]]
    ) -> tuple[dict[UUID, datetime], dict[UUID, AgencyDataError]]:
        started = time.perf_counter()
        held, lost = await original(tenant, batch)
        beats.seconds += time.perf_counter() - started
        beats.statements += 1
        beats.extended += len(held)
        beats.lost += len(lost)
        return held, lost

    keeper.heartbeat = counted  # type: ignore[method-assign,assignment]
    try:
        yield beats
    finally:
        del keeper.heartbeat


class _ServerCpu:
    """CPU seconds used by the embedded server's processes (None when the server is elsewhere)."""

    def __init__(self, postmaster: psutil.Process | None) -> None:
        self.postmaster = postmaster

    @classmethod
    async def find(cls, dl: DataLayer) -> _ServerCpu:
        if not dl.config.postgresql.is_embedded:
            return cls(None)
        pid = await dl.admin.fetch_value("SELECT pg_backend_pid()")
        try:
            return cls(psutil.Process(pid).parent())
        except psutil.Error:
            return cls(None)

    def sample(self) -> dict[int, float] | None:
        """CPU seconds per server process now."""
        if self.postmaster is None:
            return None
        seconds = {}
        for process in [self.postmaster, *self.postmaster.children()]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
        return seconds

    @staticmethod
    def used(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
        """CPU seconds between two samples (a process started in between counts whole)."""
        if before is None or after is None:
            return None
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class _Snapshot:
    at: float
    beats: _Beats
    updated: int
    hot: int
    wal: int
    server: dict[int, float] | None
    client: float


async def _snapshot(dl: DataLayer, beats: _Beats, cpu: _ServerCpu) -> _Snapshot:
    row = await dl.admin.fetch_one(
        "SELECT n_tup_upd, n_tup_hot_upd, pg_current_wal_lsn()::text AS lsn "
        "FROM pg_stat_user_tables WHERE relid = 'tasks'::regclass"
    )
    assert row is not None, "the tasks table has statistics"
    high, low = row["lsn"].split("/")
    return _Snapshot(
        at=time.perf_counter(),
        beats=beats.copy(),
        updated=row["n_tup_upd"],
        hot=row["n_tup_hot_upd"],
        wal=(int(high, 16) << 32) + int(low, 16),
        server=cpu.sample(),
        client=time.process_time(),
    )


async def _window(
    dl: DataLayer, beats: _Beats, cpu: _ServerCpu, seconds: float
) -> dict[str, float | None]:
    """What keeping the held leases costs over ``seconds`` with nothing else running.

    The server's table statistics reach pg_stat_user_tables up to a second late, at both ends
    alike; over a window of ten seconds or more that shifts little.
    """
    before = await _snapshot(dl, beats, cpu)
    await asyncio.sleep(seconds)
    after = await _snapshot(dl, beats, cpu)
    elapsed = after.at - before.at
    statements = after.beats.statements - before.beats.statements
    extended = after.beats.extended - before.beats.extended
    updated = after.updated - before.updated
    alive = await dl.fetch_value(
        "SELECT count(*) FROM tasks WHERE type = 'held' AND status = 'running' "
        "AND lease_expires_at > clock_timestamp()"
    )
    server = _ServerCpu.used(before.server, after.server)
    return {
        "statements_per_s": statements / elapsed,
        "extended_per_s": extended / elapsed,
        "rows_updated_per_s": updated / elapsed,
        "statement_ms": (after.beats.seconds - before.beats.seconds) / statements * 1000
        if statements
        else None,
        "hot_share": (after.hot - before.hot) / updated if updated else None,
        "wal_bytes_per_lease": (after.wal - before.wal) / extended if extended else None,
        "server_cpu": None if server is None else 100 * server / elapsed,
        "client_cpu": 100 * (after.client - before.client) / elapsed,
        "lost": HELD - alive,
        "lost_reported": after.beats.lost - before.beats.lost,
        "seconds": elapsed,
    }


class _Holding:
    """1,000 running tasks under 3 s leases, kept by the lease keeper or by 1,000 loops."""

    def __init__(self, dl: DataLayer, agent: UUID, mode: str) -> None:
        self.dl = dl
        self.agent = agent
        self.mode = mode
        self.tasks: list[Task] = []
        self.loops: list[asyncio.Task[None]] = []
        self.lost = 0
        self.stopping = False

    async def start(self) -> None:
        """Claim the tasks one at a time over about a second and start keeping them.

        One at a time, as a busy Worker does (each finished task frees one slot, and the next
        claim fills it): the leases fall due at a thousand different moments.
        """
        dl = self.dl
        await dl.tasks.create_many([{"type": "held", "data": {"i": i}} for i in range(HELD)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(HELD):
            self.tasks += await dl.tasks.claim(
                self.agent,
                types=["held"],
                lease_seconds=LEASE,
                auto_heartbeat=self.mode == "batched",
            )
            await asyncio.sleep(max(0.0, started + BEAT * i / HELD - loop.time()))
        assert len(self.tasks) == HELD, f"{len(self.tasks)} tasks held, not {HELD}"
        if self.mode == "naive":
            self.loops = [
                asyncio.create_task(self._keep(task, BEAT * i / HELD))
                for i, task in enumerate(self.tasks)
            ]

    async def _keep(self, task: Task, offset: float) -> None:
        # One heartbeat() a second on a fixed timetable: a late one goes at once.
        loop = asyncio.get_running_loop()
        due = loop.time() + offset
        while not self.stopping:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                await self.dl.tasks.heartbeat(task, lease_seconds=LEASE)
            except Conflict:
                self.lost += 1
                return
            due += BEAT

    async def stop(self) -> None:
        """Stop keeping the leases and complete what is still held."""
        # A flag as well as the cancellation: on Python 3.11 a task cancelled just as the pool
        # hands it a connection may not see it (asyncio.wait_for in psycopg_pool swallows it).
        self.stopping = True
        while running := [loop for loop in self.loops if not loop.done()]:
            for loop in running:
                loop.cancel()
            await asyncio.wait(running, timeout=2 * BEAT)
        gate = asyncio.Semaphore(8)

        async def finish(task: Task) -> None:
            async with gate:
                with contextlib.suppress(Conflict):
                    await self.dl.tasks.complete(task, result={"held": True})

        await asyncio.gather(*(finish(task) for task in self.tasks))
        await self.dl.execute("DELETE FROM tasks WHERE type = 'held'")


async def _top_up(dl: DataLayer) -> None:
    """Clear the finished claim tasks and keep the queue _QUEUE_DEPTH deep."""
    await dl.execute("DELETE FROM tasks WHERE type = 'claim' AND status = 'completed'")
    pending = await dl.fetch_value(
        "SELECT count(*) FROM tasks WHERE type = 'claim' AND status = 'pending'"
    )
    missing = _QUEUE_DEPTH - pending
    for start in range(0, missing, 5_000):
        count = min(5_000, missing - start)
        await dl.tasks.create_many([{"type": "claim", "data": {"i": i}} for i in range(count)])


async def _claim_for(
    dl: DataLayer, agents: list[UUID], seconds: float, cpu: _ServerCpu
) -> tuple[float, float | None]:
    """Tasks/s claimed (default lease) and completed (fenced) by the agents for ``seconds``,
    and the CPU microseconds (server and this process) spent per task meanwhile."""
    deadline = time.perf_counter() + seconds

    async def work(agent: UUID) -> int:
        done = 0
        while time.perf_counter() < deadline:
            batch = await dl.tasks.claim(agent, types=["claim"], n=10)
            assert batch, "the claimers' queue ran dry: raise _QUEUE_DEPTH"
            for task in batch:
                await dl.tasks.complete(task, result={"ok": True})
            done += len(batch)
        return done

    server, client = cpu.sample(), time.process_time()
    started = time.perf_counter()
    done = sum(await asyncio.gather(*(work(agent) for agent in agents)))
    elapsed = time.perf_counter() - started
    used = _ServerCpu.used(server, cpu.sample())
    per_task = None if used is None else (used + time.process_time() - client) / done * 1e6
    return done / elapsed, per_task


async def heartbeats(b: Bench) -> list[Result]:
    """1,000 leases heartbeated every second: batched by the library vs one call per task."""
    dl = b.dl
    window = float(b.size(10, 20))
    round_seconds = float(b.size(3, 5))
    claimers = [
        (await dl.agents.create(name=f"claimer-{i}", type="worker")).id for i in range(CLAIMERS)
    ]
    holder = (await dl.agents.create(name="holder", type="worker")).id
    cpu = await _ServerCpu.find(dl)
    windows: dict[str, dict[str, float | None]] = {}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    costs: dict[str, list[float]] = {mode: [] for mode in MODES}
    lost_in_rounds = 0
    with _counting(dl) as beats:
        b.step("heartbeats: warm-up")
        await _top_up(dl)
        await _claim_for(dl, claimers, 1.0, cpu)
        for run in range(b.runs):
            # In rotation, so that no mode always follows another's churn.
            for mode in MODES[run % 3 :] + MODES[: run % 3]:
                holding = _Holding(dl, holder, mode)
                await _top_up(dl)
                try:
                    if mode != "none":
                        b.step(f"heartbeats: holding 1,000 leases ({mode})")
                        await holding.start()
                        # Every lease beaten at least once: the heartbeats are in their stride.
                        await asyncio.sleep(2 * BEAT)
                        if mode not in windows:
                            b.step(f"heartbeats: {window:.0f} s of {mode} heartbeats alone")
                            windows[mode] = await _window(dl, beats, cpu, window)
                    b.step(f"heartbeats: claim + complete, 4 workers, holding: {mode}")
                    rate, per_task = await _claim_for(dl, claimers, round_seconds, cpu)
                    rates[mode].append(rate)
                    if per_task is not None:
                        costs[mode].append(per_task)
                finally:
                    await holding.stop()
                if mode == "naive":
                    lost_in_rounds += holding.lost
    await dl.execute("DELETE FROM tasks WHERE type IN ('claim', 'held')")
    assert dl.tasks._runtime.leases.keeping == 0, "every kept lease was let go"
    # Naive heartbeats that found their lease gone, over every round (the loops then stop).
    windows["naive"]["lost_in_rounds"] = lost_in_rounds
    return _results(windows["batched"], windows["naive"], rates, costs, window)


def _results(
    ours: dict[str, float | None],
    naive: dict[str, float | None],
    rates: dict[str, list[float]],
    costs: dict[str, list[float]],
    window: float,
) -> list[Result]:
    scenario = "heartbeats"
    base = "1 heartbeat() per task per second"
    held = f"1,000 leases ({LEASE:.0f} s)"

    def row(name: str, unit: str, key: str, higher_is_better: bool = False) -> Result:
        value, baseline = ours[key], naive[key]
        return Result(
            scenario,
            f"{held}: {name}",
            unit,
            value if value is not None else float("nan"),
            baseline,
            base,
            higher_is_better=higher_is_better,
            extra={"window_s": window, "ours": ours, "naive": naive},
        )

    statements = row("heartbeat statements/s", "stmt/s", "statements_per_s")
    statements.target = "a few per second, not 1,000"
    statements.met = (ours["statements_per_s"] or 0) <= 20
    lost = row("leases lost", "leases", "lost")
    lost.target = "0"
    lost.met = ours["lost"] == 0
    results = [
        statements,
        row("leases extended/s", "leases/s", "extended_per_s", higher_is_better=True),
        row("mean heartbeat statement", "ms", "statement_ms"),
        row("server CPU (all its processes)", "% core", "server_cpu"),
        row("this process's CPU", "% core", "client_cpu"),
        row("WAL per lease extended", "B", "wal_bytes_per_lease"),
        row("HOT share of task updates", "rate", "hot_share", higher_is_better=True),
        lost,
    ]
    for mode, beside in (("batched", "1,000 batched leases"), ("naive", "1,000 naive heartbeats")):
        results.append(
            Result(
                scenario,
                f"claim + complete, 4 workers, beside {beside}",
                "tasks/s",
                statistics.median(rates[mode]),
                statistics.median(rates["none"]),
                "no leases held",
                extra={"rates": rates},
            )
        )
        if costs[mode] and costs["none"]:
            # CPU per task shifts less than throughput when other work shares the machine.
            results.append(
                Result(
                    scenario,
                    f"CPU per claimed task (server + this process), beside {beside}",
                    "us",
                    statistics.median(costs[mode]),
                    statistics.median(costs["none"]),
                    "no leases held",
                    higher_is_better=False,
                    extra={"costs": costs},
                )
            )
    return results
