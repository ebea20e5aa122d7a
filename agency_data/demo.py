"""The end-to-end tour behind ``agency-data demo``: each step runs for real and is timed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
from pydantic import SecretStr

from agency_data.config import DataLayerConfig
from agency_data.errors import AgencyDataError
from agency_data.health import versions_text
from agency_data.manager import DataLayer

__all__ = ["DemoStep", "run_demo"]


@dataclass(frozen=True)
class DemoStep:
    """One step of the tour: what it did, what it found, and how long it took."""

    title: str
    outcome: str
    seconds: float


Report = Callable[[DemoStep], Awaitable[None] | None]


async def run_demo(
    config: DataLayerConfig | None = None, report: Report | None = None
) -> list[DemoStep]:
    """Run the tour against ``config`` (embedded servers by default) and return its steps."""
    steps: list[DemoStep] = []

    async def record(title: str, outcome: str, started: float) -> None:
        step = DemoStep(title, outcome, time.perf_counter() - started)
        steps.append(step)
        if report is not None:
            result = report(step)
            if result is not None:
                await result

    started = time.perf_counter()
    dl = DataLayer(config)
    await dl.connect()
    try:
        where = "embedded servers in " + str(dl.config.embedded.data_dir)
        if not dl.config.postgresql.is_embedded:
            where = "the configured PostgreSQL"
        await record("connect", f"pool open, schema migrated ({where})", started)

        started = time.perf_counter()
        health = await dl.health()
        pg, cache = health.components["postgresql"], health.components["redis"]
        await record(
            "health",
            f"{health.status}: {versions_text(pg)} ({pg.latency_ms or 0:.2f} ms); "
            f"{versions_text(cache) or 'Redis'} ({'up' if cache.up else 'down'})",
            started,
        )

        started = time.perf_counter()
        states = await dl.migrations().status()
        counts = {
            state: sum(1 for s in states if s.state == state) for state in ("applied", "pending")
        }
        await record(
            "migrations",
            f"{counts['applied']} applied, {counts['pending']} pending, of {len(states)} known",
            started,
        )

        await _agents_and_tasks(dl, record)
        await _worker_crash(dl, record)
        await _embeddings(dl, record)
        await _cache_and_coordination(dl, record)

        started = time.perf_counter()
        dry = await dl.migrations().down(steps=1, dry_run=True)
        await record(
            "migration dry run",
            f"rolling back one step would run {len(dry.steps)} step(s): "
            + ", ".join(s.key for s in dry.steps),
            started,
        )
    finally:
        started = time.perf_counter()
        await dl.aclose()
        await record("close", "pool closed, embedded servers released", started)
    return steps


async def _agents_and_tasks(
    dl: DataLayer, record: Callable[[str, str, float], Awaitable[None]]
) -> None:
    # Each run works in a tenant of its own, so repeated demos on one data dir do not mix.
    scope = dl.tenant(f"demo-{uuid.uuid4().hex[:8]}")

    started = time.perf_counter()
    workers = [
        await scope.agents.create(name=f"worker-{i}", type="worker", capabilities={"embed": True})
        for i in range(4)
    ]
    planner = await scope.agents.create(
        name="planner", type="coordinator", capabilities={"plan": True}
    )
    await record(
        "agents", f"registered {len(workers) + 1} agents (1 coordinator, 4 workers)", started
    )

    started = time.perf_counter()
    await scope.tasks.create(
        type="summarize", priority=9, data={"doc": "quarterly planning report"}
    )
    await scope.tasks.create_many([{"type": "embed", "data": {"chunk": i}} for i in range(1000)])
    await record("tasks", "queued 1,001 tasks (one create, one bulk create_many)", started)

    started = time.perf_counter()
    claimed_by: dict[str, int] = {}

    async def work(agent_id: UUID, name: str) -> None:
        while batch := await scope.tasks.claim(agent_id, types=["embed"], n=25):
            for task in batch:
                await scope.tasks.complete(task.id, result={"by": name})
            claimed_by[name] = claimed_by.get(name, 0) + len(batch)

    await asyncio.gather(*(work(w.id, w.name) for w in workers))
    done = await scope.tasks.count(type="embed", status="completed")
    shares = ", ".join(f"{name} {count}" for name, count in sorted(claimed_by.items()))
    once = "each exactly once" if sum(claimed_by.values()) == done else "SOME TWICE"
    elapsed = time.perf_counter() - started
    await record(
        "claim + complete",
        f"4 concurrent workers finished {done} tasks, {once} ({shares}); {done / elapsed:,.0f} tasks/s",
        started,
    )

    started = time.perf_counter()
    (top,) = await scope.tasks.claim(planner.id, n=1)
    await scope.tasks.complete(top.id, result={"summary": "on track"})
    hits = await scope.tasks.search("planning")
    await record(
        "search",
        f"the planner took the priority-9 task; full-text 'planning' finds {len(hits)} task(s)",
        started,
    )


# The worker that dies: a process of its own that claims the task with a short lease and
# auto heartbeats, says which task it holds, and works on it until it is killed.
_DOOMED_WORKER = """
import asyncio, json, sys
from agency_data import DataLayer

async def main():
    spec = json.loads(sys.stdin.readline())
    async with DataLayer(**spec["config"]) as dl:
        tasks = dl.tenant(spec["tenant"]).tasks
        (task,) = await tasks.claim(
            spec["agent"], ["report"], wait=30, lease_seconds=spec["lease"], auto_heartbeat=True
        )
        print(task.id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""
_CRASH_LEASE = 1.0


def _revealed(value: Any) -> Any:
    """A config section as plain values, secrets included (for a child process's config)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items() if v is not None}
    return value


async def _worker_crash(
    dl: DataLayer, record: Callable[[str, str, float], Awaitable[None]]
) -> None:
    scope = dl.tenant(f"demo-{uuid.uuid4().hex[:8]}")
    doomed = await scope.agents.create(name="worker-a", type="worker")
    survivor = await scope.agents.create(name="worker-b", type="worker")
    task = await scope.tasks.create("report", {"quarter": "Q3"})

    started = time.perf_counter()
    redis = _revealed(dl.config.redis.model_dump())
    if dl.redis_url is not None:
        redis = {"url": dl.redis_url}
    spec = {
        "config": {
            "postgresql": {"dsn": dl.conninfo, "pool_min_size": 1, "pool_max_size": 2},
            "redis": redis,
            "migration": {"auto_migrate": False},
        },
        "tenant": scope.tenant_id,
        "agent": str(doomed.id),
        "lease": _CRASH_LEASE,
    }
    # Only this spec configures the child: not the AGENCY_DATA_* settings this process read.
    # It goes through a pipe: the environment of a process is readable by its user.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENCY_DATA_")}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED_WORKER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(json.dumps(spec).encode() + b"\n")
    await child.stdin.drain()
    child.stdin.close()
    try:
        async with asyncio.timeout(60):
            line = await child.stdout.readline()
    except TimeoutError:
        line = b""
    if line.strip() != str(task.id).encode():
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            child.kill()
        _, errors = await child.communicate()
        raise AgencyDataError(
            "the demo's worker process did not claim its task: "
            + errors.decode(errors="replace")[-2000:]
        )
    with contextlib.suppress(ProcessLookupError):
        child.kill()  # SIGKILL: no cleanup, no hand-back; its lease just stops being renewed
    await child.communicate()
    killed = time.perf_counter()
    await record(
        "worker crash",
        f"worker-a (process {child.pid}) claimed the report task with a {_CRASH_LEASE:g} s "
        "lease and auto heartbeats, and was killed with SIGKILL while holding it",
        started,
    )

    started = time.perf_counter()
    (rescued,) = await scope.tasks.claim(survivor.id, ["report"], wait=30)
    waited = time.perf_counter() - killed
    done = await scope.tasks.complete(rescued, result={"by": "worker-b"})
    await record(
        "lease rescue",
        f"{waited:.1f} s after the kill, worker-b's claim found the lease run out and took "
        f"the task over ({rescued.error}); completed by worker-b, attempts={done.attempts} "
        f"(agency-data tasks stats --tenant {scope.tenant_id})",
        started,
    )


def _clustered(n: int, dim: int, seed: int = 7) -> np.ndarray:
    # Clustered points of low intrinsic dimension, like real embeddings (random ones have no
    # neighbours worth finding).
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, dim))
    basis = rng.normal(size=(40, 12, dim)) / 4.0
    labels = rng.integers(0, 40, size=n)
    local = np.einsum("nk,nkd->nd", rng.normal(size=(n, 12)), basis[labels])
    points: np.ndarray = (centers[labels] + 0.6 * local).astype(np.float32)
    return points


async def _embeddings(dl: DataLayer, record: Callable[[str, str, float], Awaitable[None]]) -> None:
    n, dim, queries = 5000, 384, 50
    points = _clustered(n + queries, dim)
    base, probes = points[:n], points[n:]
    name = f"demo_{uuid.uuid4().hex[:8]}"
    memories = await dl.embeddings.create_collection(name, dimension=dim, metric="cosine")
    try:
        started = time.perf_counter()
        ids = await memories.store_many(
            {
                "entity_type": "memory",
                "entity_id": str(i),
                "vector": v,
                "metadata": {"kind": "fact" if i % 10 == 0 else "observation", "turn": i},
            }
            for i, v in enumerate(base)
        )
        elapsed = time.perf_counter() - started
        await record(
            "embeddings",
            f"stored {n:,} x {dim}-d vectors in binary batches ({n / elapsed:,.0f}/s)",
            started,
        )

        started = time.perf_counter()
        info = await memories.create_index(kind="hnsw")
        size = info.index.size_bytes if info.index else 0
        await record("hnsw index", f"built concurrently, {size / 2**20:.1f} MiB", started)

        started = time.perf_counter()
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        truth = np.argsort(-(probes @ unit.T), axis=1)[:, :10]
        position = {ident: i for i, ident in enumerate(ids)}
        batches = await memories.batch_search([{"vector": q, "limit": 10} for q in probes])
        found = sum(
            len({position[h.id] for h in hits} & set(truth[i])) for i, hits in enumerate(batches)
        )
        await record(
            "similarity search",
            f"{queries} queries in one round trip: recall@10 {found / (10 * queries):.3f} against exact search",
            started,
        )

        started = time.perf_counter()
        facts = await memories.find_similar(
            probes[0], limit=10, filter={"kind": "fact", "turn": {"$gte": 100}}
        )
        await record(
            "filtered search",
            f"kind = fact and turn >= 100 (10% of rows): {len(facts)} hits, best score {facts[0].score:.3f}",
            started,
        )
    finally:
        await dl.embeddings.drop_collection(name)


def _tool_result(key: str) -> dict[str, str]:
    return {"result": key}


async def _cache_and_coordination(
    dl: DataLayer, record: Callable[[str, str, float], Awaitable[None]]
) -> None:
    scope = dl.tenant(f"demo-{uuid.uuid4().hex[:8]}")
    cache = scope.cache

    started = time.perf_counter()
    before = cache.stats()
    rng = np.random.default_rng(3)
    keys = [f"tool:{k}" for k in rng.zipf(1.3, size=5000) % 200]
    for key in keys:
        await cache.get_or_set(key, functools.partial(_tool_result, key), ttl=60)
    after = cache.stats()
    lookups = (after.l1_hits - before.l1_hits) + (after.l1_misses - before.l1_misses)
    hits = (after.l1_hits - before.l1_hits) + (after.l2_hits - before.l2_hits)
    await record(
        "cache",
        f"5,000 Zipf-distributed tool-result reads over 200 keys: hit rate {hits / lookups:.1%} "
        f"(L1 {after.l1_hits - before.l1_hits:,}, Redis {after.l2_hits - before.l2_hits:,})",
        started,
    )

    started = time.perf_counter()
    session = await scope.sessions.create(
        agent_id="planner", data={"goal": "summarize Q3"}, ttl=600
    )
    session = await scope.sessions.update(session.id, {"step": 2})
    await record(
        "session", f"created and updated session {session.id[:8]} (data {session.data})", started
    )

    started = time.perf_counter()
    received: list[Any] = []
    subscription = scope.pubsub.subscribe("agent:status")

    async def listen() -> None:
        async for message in subscription:
            received.append(message.data)
            return

    listener = asyncio.create_task(listen())
    for _ in range(200):  # at-most-once: until the subscriber is listening, messages are lost
        await scope.pubsub.publish("agent:status", {"agent_id": "planner", "status": "online"})
        if received:
            break
        await asyncio.sleep(0.005)
    await asyncio.wait_for(listener, 5)
    await subscription.aclose()
    await record("pub/sub", f"status message delivered: {received[0]}", started)

    started = time.perf_counter()
    tokens: list[int] = []

    async def contend() -> None:
        async with scope.lock("resource:7", ttl=5, wait=10) as lock:
            assert lock.fencing_token is not None
            tokens.append(lock.fencing_token)
            await asyncio.sleep(0.002)

    await asyncio.gather(*(contend() for _ in range(8)))
    await record(
        "contended lock",
        f"8 contenders took resource:7 one at a time; fencing tokens {tokens[0]}..{tokens[-1]}, "
        f"always increasing: {tokens == sorted(tokens)}",
        started,
    )
