"""A thousand HTTP clients at once, each on its own connection, against the live service.

Plain asyncio streams rather than a client library: each client opens one keep-alive
connection and holds it for all its requests, so 1,000 connections are open at the same time,
which the test checks in the kernel's own table (both ends are in this process) rather than
taking on trust. Every answer must be the expected success: no error of any kind.
"""

from __future__ import annotations

import asyncio
import resource
import time
from urllib.parse import urlsplit

import orjson
import psutil
import pytest

from tests.service_support import TENANT, Service

pytestmark = pytest.mark.timeout(120)

CLIENTS = 1_000
# Each client's sockets, the server's accepted ones, and room for the rest of the process.
FILES_NEEDED = 2 * CLIENTS + 512


def _enough_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= FILES_NEEDED:
        return
    if hard != resource.RLIM_INFINITY and hard < FILES_NEEDED:
        pytest.fail(f"the open-files limit is {hard} (hard): {FILES_NEEDED} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES_NEEDED, hard))


class Connection:
    """One keep-alive HTTP/1.1 connection, requests sent one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    async def request(
        self, method: str, path: str, key: str, body: object = None
    ) -> tuple[int, object]:
        payload = b"" if body is None else orjson.dumps(body)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers.get("connection", "").lower() != "close", (status, headers)
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, orjson.loads(data) if data else None


def _established(port: int) -> tuple[int, int]:
    """This process's established TCP connections to ``port`` and from it."""
    to_server = from_server = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.status != psutil.CONN_ESTABLISHED or not conn.raddr:
            continue
        to_server += conn.raddr.port == port
        from_server += conn.laddr.port == port
    return to_server, from_server


async def test_a_thousand_clients_at_once_get_no_errors(service: Service) -> None:
    _enough_files()
    url = urlsplit(service.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    seeded = await service.dl.tenant(TENANT).agents.create("seed", "planner")
    reader_key = service.keys[(TENANT, "read-only")]
    writer_key = service.keys[(TENANT, "read-write")]
    connected = asyncio.Barrier(CLIENTS + 1)
    first_answered = asyncio.Barrier(CLIENTS + 1)
    go_on = asyncio.Event()
    failures: list[str] = []

    async def client(n: int) -> str:
        reader, writer = await asyncio.open_connection(host, port)
        conn = Connection(reader, writer, f"{host}:{port}")
        try:
            await connected.wait()
            status, body = await conn.request("GET", f"/v1/agents/{seeded.id}", reader_key)
            if status != 200 or body["id"] != str(seeded.id):  # type: ignore[index]
                failures.append(f"client {n}: GET seed -> {status} {body}")
            await first_answered.wait()
            await go_on.wait()
            status, body = await conn.request(
                "POST", "/v1/agents", writer_key, {"name": f"load-{n}", "type": "worker"}
            )
            if status != 201:
                failures.append(f"client {n}: POST -> {status} {body}")
                return ""
            made: str = body["id"]  # type: ignore[index]
            status, body = await conn.request("GET", f"/v1/agents/{made}", reader_key)
            if status != 200 or body["name"] != f"load-{n}":  # type: ignore[index]
                failures.append(f"client {n}: GET own -> {status} {body}")
            return made
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    async with asyncio.timeout(60):
        clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
        await connected.wait()
        # Every client holds its connection and has had one answer on it: both ends of all
        # 1,000 connections are open now, in this process.
        await first_answered.wait()
        to_server, from_server = _established(port)
        go_on.set()
        made = await asyncio.gather(*clients)
    elapsed = time.perf_counter() - started

    assert failures == [], f"{len(failures)} errors, first: {failures[:5]}"
    assert to_server >= CLIENTS, f"only {to_server} client connections were open at once"
    assert from_server >= CLIENTS, f"the server held only {from_server} connections at once"
    assert len(set(made)) == CLIENTS
    assert await service.dl.tenant(TENANT).agents.count() == CLIENTS + 1
    assert elapsed < 30, f"{3 * CLIENTS} requests took {elapsed:.1f} s"
