"""The HTTP service (``agency-data serve``) beside the library it serves, on the same operations.

Ours: requests through the service, running in a process of its own (uvicorn, as deployed; see
:mod:`bench.service_server`) over the benchmark's servers, from ``CONNECTIONS`` keep-alive
connections at once. The baseline: the same operations through the library in this process,
``CONNECTIONS`` callers at once. The ratio is what the HTTP layer costs: parsing, the key
check, validation, JSON both ways, the loopback hop.

Operations: ``GET /v1/agents/{id}`` against ``agents.get``; ``POST
/v1/collections/{name}/search`` (top 10 of a small HNSW collection, the query as base64
float32) against ``find_similar``; and a claim plus its completion (``POST /v1/tasks/claim``
then ``POST /v1/tasks/{id}/complete``) against ``claim`` + ``complete``. An operation whose
path the service does not have (per its own OpenAPI document) is left out, and said so.

Figures per operation: operations a second, and p50/p99 latency under that concurrency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from agency_data import DataLayer
from agency_data.scope import TenantScope
from bench.context import Bench
from bench.harness import Result, percentiles

__all__ = ["CONNECTIONS", "Connection", "Measured", "served", "service"]

CONNECTIONS = 32
TENANT = "bench-service"
COLLECTION = "bench_service"
DIM = 128
SCENARIO = "service"
ROOT = Path(__file__).resolve().parent.parent


class Connection:
    """One keep-alive HTTP/1.1 connection; requests go one after another.

    A lean client of its own, so that the figures are the service's cost rather than a client
    library's (httpx spends more per request than the service does on a point read). Like any
    keep-alive client it opens a new connection when the server has closed an idle one
    (uvicorn does after 5 s, as when the library's round runs)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, url: str, key: str) -> Connection:
        """A connection to ``url``'s host, sending ``key``."""
        conn = cls(url, key)
        await conn._connect()
        return conn

    async def _connect(self) -> None:
        parts = urlsplit(self.url)
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """``method path`` with ``body`` as JSON: the status and the decoded answer."""
        payload = b"" if body is None else orjson.dumps(body)
        message = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        if self.reader is None or self.writer is None or self.reader.at_eof():
            await self.close()
            await self._connect()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(message)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            # Closed while idle, before it read this request: sent again on a new connection.
            await self.close()
            await self._connect()
            assert self.reader is not None
            assert self.writer is not None
            self.writer.write(message)
            head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        return status, orjson.loads(data) if data else None

    async def ok(self, method: str, path: str, body: object = None) -> Any:
        """The answer to a request that must succeed."""
        status, answer = await self.request(method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path} answered {status}: {answer}")
        return answer

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class Served:
    """The service in its process: where it listens, and the operations it has."""

    url: str
    operations: set[tuple[str, str]]


@contextlib.asynccontextmanager
async def served(dl: DataLayer, pool_max_size: int) -> AsyncIterator[Served]:
    """``python -m bench.service_server`` over ``dl``'s servers, until the block ends."""
    redis_url = dl.redis_url or (
        dl.config.redis.url.get_secret_value() if dl.config.redis.url else None
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.service_server",
        cwd=ROOT,  # where `bench` is importable from, whatever the caller's directory
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        settings = {
            "dsn": dl.conninfo,
            "admin_dsn": dl.admin_conninfo,
            "redis_url": redis_url,
            "pool_max_size": pool_max_size,
        }
        process.stdin.write(json.dumps(settings).encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line.startswith(b"listening "):
            raise RuntimeError(f"the service did not start (it said {line!r})")
        url = line.split()[1].decode()
        probe = await Connection.open(url, "")  # the document is public: no key
        document = await probe.ok("GET", "/schema/openapi.json")
        await probe.close()
        operations = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if isinstance(item[method], dict)
        }
        yield Served(url, operations)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class Measured:
    """One side's figures: operations a second (median of the runs), latency percentiles (ms)."""

    rate: float
    latency: dict[str, float]


Op = Callable[[int, int], Awaitable[Any]]  # (worker, i) -> one operation


async def _round(op: Op, workers: int, each: int, start: int, samples: list[float]) -> float:
    """``workers`` loops of ``each`` calls at once: calls a second."""

    async def loop(worker: int) -> None:
        for n in range(each):
            began = time.perf_counter()
            await op(worker, start + worker * each + n)
            samples.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return workers * each / (time.perf_counter() - began)


async def paired_rounds(ours: Op, base: Op, count: int, runs: int) -> tuple[Measured, Measured]:
    """``ours`` and ``base`` at ``CONNECTIONS`` at once, ``count`` calls a round, rounds
    interleaved (alternating which goes first) after a warm-up round of each."""
    each = max(1, count // CONNECTIONS)
    warm = max(1, each // 10)
    await _round(ours, CONNECTIONS, warm, 0, [])
    await _round(base, CONNECTIONS, warm, 0, [])
    rates: tuple[list[float], list[float]] = ([], [])
    samples: tuple[list[float], list[float]] = ([], [])
    offset = warm * CONNECTIONS
    for run in range(runs):
        order = ((ours, 0), (base, 1)) if run % 2 == 0 else ((base, 1), (ours, 0))
        for op, side in order:
            rates[side].append(await _round(op, CONNECTIONS, each, offset, samples[side]))
        offset += each * CONNECTIONS
    return (
        Measured(statistics.median(rates[0]), percentiles(samples[0])),
        Measured(statistics.median(rates[1]), percentiles(samples[1])),
    )


def _results(
    label: str, unit: str, http: Measured, lib: Measured, extra: dict[str, Any]
) -> list[Result]:
    base_name = f"library in-process, {CONNECTIONS} callers"
    common: dict[str, Any] = {"scenario": SCENARIO, "baseline_name": base_name, "extra": extra}
    return [
        Result(name=f"{label}: HTTP, {CONNECTIONS} connections", unit=unit, ours=http.rate,
               baseline=lib.rate, **common),
        Result(name=f"{label}: p50 latency", unit="ms", ours=http.latency["p50"],
               baseline=lib.latency["p50"], higher_is_better=False, **common),
        Result(name=f"{label}: p99 latency", unit="ms", ours=http.latency["p99"],
               baseline=lib.latency["p99"], higher_is_better=False, **common),
    ]  # fmt: skip


async def _cleanup(dl: DataLayer) -> None:
    if COLLECTION in await dl.embeddings.list_collections():
        await dl.embeddings.drop_collection(COLLECTION)
    await dl.admin.execute("TRUNCATE tasks, task_dependencies, task_types, agents")


async def service(b: Bench, count: int | None = None, rows: int | None = None) -> list[Result]:
    """The scenario (see the module's docstring); ``count`` operations a round and ``rows`` in
    the searched collection override the sizes (the tests' tiny run)."""
    dl = b.dl
    count = count or b.size(2_000, 10_000)
    rows = rows or b.size(2_000, 10_000)
    await _cleanup(dl)
    tenant = dl.tenant(TENANT)
    key, secret = await dl.admin.api_keys.create(TENANT, "read-write", name="bench-service")
    b.step("service: starting the HTTP service in its own process")
    try:
        async with served(dl, dl.pool.max_size) as server:
            conns = [await Connection.open(server.url, secret) for _ in range(CONNECTIONS)]
            try:
                results = await _get_agent(b, tenant, conns, count)
                if ("POST", "/v1/collections/{name}/search") in server.operations:
                    results += await _search(b, tenant, conns, count, rows)
                else:
                    b.progress.console.print("service: no search endpoint; search left out")
                if {("POST", "/v1/tasks/claim"), ("POST", "/v1/tasks/{task_id}/complete")} <= (
                    server.operations
                ):
                    results += await _claim_complete(b, tenant, conns, count // 2)
                else:
                    b.progress.console.print("service: no task endpoints; claim left out")
            finally:
                for conn in conns:
                    await conn.close()
    finally:
        await dl.admin.api_keys.revoke(key.id)
        await _cleanup(dl)
    return results


async def _get_agent(
    b: Bench, tenant: TenantScope, conns: list[Connection], count: int
) -> list[Result]:
    b.step("service: GET agent")
    agents = [await tenant.agents.create(f"agent-{i}", "worker") for i in range(100)]
    paths = [f"/v1/agents/{a.id}" for a in agents]
    # The same answer both ways, or the figures compare different work.
    assert (await conns[0].ok("GET", paths[7]))["id"] == str(agents[7].id)

    async def http(worker: int, i: int) -> None:
        await conns[worker].ok("GET", paths[i % len(paths)])

    async def lib(worker: int, i: int) -> None:
        await tenant.agents.get(agents[i % len(agents)].id)

    ours, base = await paired_rounds(http, lib, count, b.runs)
    return _results("GET agent", "req/s", ours, base, {"agents": len(agents)})


async def _search(
    b: Bench, tenant: TenantScope, conns: list[Connection], count: int, rows: int
) -> list[Result]:
    b.step(f"service: search, top 10 of {rows:,}")
    managed = await b.dl.embeddings.create_collection(COLLECTION, dimension=DIM)
    notes = tenant.embeddings.collection(COLLECTION)
    rng = b.rng(17)
    vectors = rng.normal(size=(rows, DIM)).astype(np.float32)
    for start in range(0, rows, 1_000):
        await notes.store_many(
            {"entity_type": "doc", "entity_id": f"doc-{i}", "vector": vectors[i]}
            for i in range(start, min(rows, start + 1_000))
        )
    await managed.create_index("hnsw")
    queries = rng.normal(size=(256, DIM)).astype(np.float32)
    bodies = [
        {"vector": base64.b64encode(q.tobytes()).decode(), "encoding": "float32", "limit": 10}
        for q in queries
    ]
    path = f"/v1/collections/{COLLECTION}/search"
    answer = await conns[0].ok("POST", path, bodies[3])
    found = await notes.find_similar(queries[3], limit=10)
    assert [h["id"] for h in answer["items"]] == [h.id for h in found], "HTTP and library differ"

    async def http(worker: int, i: int) -> None:
        await conns[worker].ok("POST", path, bodies[i % len(bodies)])

    async def lib(worker: int, i: int) -> None:
        await notes.find_similar(queries[i % len(queries)], limit=10)

    ours, base = await paired_rounds(http, lib, count, b.runs)
    return _results("search top 10", "req/s", ours, base, {"rows": rows, "dim": DIM})


async def _claim_complete(
    b: Bench, tenant: TenantScope, conns: list[Connection], count: int
) -> list[Result]:
    b.step("service: claim + complete")
    agent = await tenant.agents.create("claimer", "worker")
    each = max(1, count // CONNECTIONS)
    # Each side its own task type, so that neither claims the other's; enough for every round.
    needed = (b.runs * each + max(1, each // 10)) * CONNECTIONS
    for kind in ("http", "lib"):
        for start in range(0, needed, 1_000):
            await tenant.tasks.create_many(
                {"type": f"bench-{kind}", "data": {"n": n}}
                for n in range(start, min(needed, start + 1_000))
            )
    claim = {"agent_id": str(agent.id), "types": ["bench-http"], "n": 1}

    async def http(worker: int, i: int) -> None:
        conn = conns[worker]
        (task,) = (await conn.ok("POST", "/v1/tasks/claim", claim))["items"]
        body = {"lease_token": task["lease_token"], "result": {"ok": True}}
        await conn.ok("POST", f"/v1/tasks/{task['id']}/complete", body)

    async def lib(worker: int, i: int) -> None:
        (task,) = await tenant.tasks.claim(agent.id, ["bench-lib"], 1)
        await tenant.tasks.complete(task, {"ok": True})

    ours, base = await paired_rounds(http, lib, count, b.runs)
    done = await tenant.tasks.count(status="completed", type="bench-http")
    assert done >= b.runs * each * CONNECTIONS, f"only {done} HTTP claims completed"
    return _results("claim + complete", "pairs/s", ours, base, {"tasks": needed})
