"""An adversarial review of the service (issue 19): tenants, the gate, errors and limits.

Each ``xfail(strict=True)`` test is a finding that fails today and passes once fixed; the
others pin down what was attacked and held, where the other service tests do not already.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from agency_data import DataLayer, errors
from agency_data.config import ServiceConfig
from agency_data.service.mcp import MCP_PATH
from agency_data.service.mcp import running as mcp_running
from agency_data.service.problems import status_of
from tests.conftest import other_connection
from tests.service_support import OTHER, TENANT, Service, service_on
from tests.test_service_mcp import _http_session, _resource

pytestmark = pytest.mark.timeout(60)

JSON = {"content-type": "application/json"}


async def _globex_collection(service: Service, name: str = "gsecret", rows: int = 0) -> None:
    made = await service.call(
        "POST", "/v1/collections", role="admin", tenant=OTHER, json={"name": name, "dimension": 3}
    )
    assert made.status_code == 201, made.text
    if rows:
        items = [
            {"entity_type": "doc", "entity_id": str(i), "vector": [1.0, 2.0, float(i)]}
            for i in range(rows)
        ]
        stored = await service.call(
            "POST", f"/v1/collections/{name}/embeddings", tenant=OTHER, json={"items": items}
        )
        assert stored.status_code == 200, stored.text


@contextlib.asynccontextmanager
async def _mcp(dl: DataLayer, key: str, config: ServiceConfig) -> AsyncIterator[Any]:
    """An initialized MCP session with ``key`` on a streamable HTTP server of ``config``."""
    async with mcp_running(dl, config) as where:  # noqa: SIM117 - the session needs where.url
        async with _http_session(f"{where.url}{MCP_PATH}", key) as session:
            yield session


# --- Findings -------------------------------------------------------------------------------


async def test_a_deeply_nested_body_is_a_client_error(service: Service) -> None:
    nested = b"[" * 5000 + b"]" * 5000
    body = b'{"name":"a","type":"t","capabilities":' + nested + b"}"
    response = await service.call("POST", "/v1/agents", content=body, headers=JSON)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"] == "ValidationError"
    assert await service.dl.tenant(TENANT).agents.count() == 0


async def test_an_admin_cannot_drop_the_index_other_tenants_search_with(service: Service) -> None:
    await _globex_collection(service, rows=3)
    dropped = await service.call("DELETE", "/v1/collections/gsecret/index", role="admin")
    assert dropped.status_code == 409, dropped.text
    info = await service.call("GET", "/v1/collections/gsecret", tenant=OTHER)
    assert info.json()["index"] is not None
    setup = await service.call(
        "POST", "/v1/memory/setup", role="admin", tenant=OTHER, json={"dimension": 3}
    )
    assert setup.status_code == 200, setup.text
    memories = setup.json()["collection"]
    dropped = await service.call("DELETE", f"/v1/collections/{memories}/index", role="admin")
    assert dropped.status_code == 409, dropped.text


async def test_optimize_reports_no_other_tenants_rows(service: Service) -> None:
    # Refused outright on a collection another tenant uses: its report would count their rows.
    await _globex_collection(service, rows=5)
    report = await service.call("POST", "/v1/collections/gsecret/optimize", role="admin")
    assert report.status_code == 409, report.text
    rebuilt = await service.call("POST", "/v1/collections/gsecret/index/rebuild", role="admin")
    assert rebuilt.status_code == 409, rebuilt.text
    # The only tenant in it may.
    mine = await service.call(
        "POST", "/v1/collections/gsecret/optimize", role="admin", tenant=OTHER
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["rows"] == 5


async def test_describe_tells_nothing_of_other_tenants_volume(service: Service) -> None:
    await _globex_collection(service)
    before = (await service.call("GET", "/v1/collections/gsecret", role="read-only")).json()
    items = [
        {"entity_type": "doc", "entity_id": str(i), "vector": [1.0, 2.0, float(i)]}
        for i in range(300)
    ]
    stored = await service.call(
        "POST", "/v1/collections/gsecret/embeddings", tenant=OTHER, json={"items": items}
    )
    assert stored.status_code == 200
    after = (await service.call("GET", "/v1/collections/gsecret", role="read-only")).json()
    assert after["rows"] == before["rows"] == 0
    assert after == before
    assert "table_bytes" not in after
    assert "size_bytes" not in after["index"]


async def test_framework_errors_carry_a_code_whose_status_they_have(service: Service) -> None:
    # (A method a route does not take stays 405, with an Allow header: no library class is it.)
    malformed = await service.call("POST", "/v1/agents", content=b"{", headers=JSON)
    as_text = await service.call(
        "POST", "/v1/agents", content=b"x", headers={"content-type": "text/plain"}
    )
    for response in (malformed, as_text):
        body = response.json()
        code = getattr(errors, body["code"])
        assert status_of(code) == response.status_code, body


async def test_event_streams_opened_at_once_respect_the_cap(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    async with service_on(database, redis_url, tmp_path, redis={"max_connections": 4}) as svc:
        release = asyncio.Event()
        statuses: list[int] = []

        async def open_one(channel: str) -> None:
            async with svc.client.stream(
                "GET", f"/v1/pubsub/{channel}/events", headers=svc.auth(), timeout=10
            ) as response:
                statuses.append(response.status_code)
                if response.status_code == 200:
                    await release.wait()

        tasks = [asyncio.create_task(open_one(f"c{i}")) for i in range(6)]
        try:
            async with asyncio.timeout(10):
                while len(statuses) < len(tasks):  # noqa: ASYNC110 - bounded by the timeout
                    await asyncio.sleep(0.02)
        finally:
            release.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert statuses.count(200) <= 2, (statuses, results)


async def test_mcp_collections_resource_names_no_other_tenants_collections(
    dl: DataLayer,
) -> None:
    await dl.admin.create_collection("globex_private", 3)
    await (
        dl.tenant(OTHER)
        .embeddings.collection("globex_private")
        .store({"entity_type": "doc", "entity_id": "1", "vector": [1.0, 0.0, 0.0]})
    )
    _, key = await dl.admin.api_keys.create(TENANT, "read-only", name="reader")
    async with _mcp(dl, key, ServiceConfig(port=0)) as reader:
        # Collection names are every tenant's: an admin key's to list, as over HTTP.
        with pytest.raises(MCPError, match="admin key"):
            await reader.read_resource("agency-data://collections")
        # One collection is described to any key, with this tenant's rows and no sizes.
        shape = await _resource(reader, "agency-data://collections/globex_private")
    assert shape["rows"] == 0
    assert "table_bytes" not in shape


async def test_an_mcp_call_past_the_request_timeout_is_ended(dl: DataLayer) -> None:
    _, key = await dl.admin.api_keys.create(TENANT, "read-write", name="writer")
    async with (
        _mcp(dl, key, ServiceConfig(port=0, request_timeout=0.5)) as writer,
        other_connection(dl, TENANT) as conn,
    ):
        await conn.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(4):
                result = await writer.call_tool("submit_task", {"type": "x"})
        elapsed = time.monotonic() - started
    assert elapsed < 3, f"the call ran {elapsed:.1f} s"
    assert result.is_error
    assert await dl.tenant(TENANT).tasks.count() == 0


@pytest.mark.xfail(
    strict=True,
    reason="MCP requests other than tool calls and resource reads (ping, tools/list, "
    "resources/list) are not rate limited, though each checks its key in PostgreSQL",
)
async def test_every_mcp_request_counts_against_the_rate_limit(dl: DataLayer) -> None:
    _, key = await dl.admin.api_keys.create(TENANT, "read-only", name="pinger")
    config = ServiceConfig(port=0, rate_limit=1, rate_burst=2)
    async with _mcp(dl, key, config) as session:
        refused = 0
        for _ in range(6):
            try:
                await session.send_ping()
                await session.list_tools()
            except Exception:  # noqa: BLE001 - any refusal counts
                refused += 1
    assert refused > 0


# --- Attacks that held -----------------------------------------------------------------------


async def test_path_tricks_methods_and_header_mixes_do_not_pass_the_gate(
    service: Service,
) -> None:
    key = service.keys[(TENANT, "read-only")]
    for path in ("/v1/agents/", "/v1/agents%2F..%2F..%2Fhealth", "/health/../v1/agents"):
        response = await service.client.get(path)
        assert response.status_code in (401, 404), (path, response.text)
        assert "items" not in response.text
    assert (await service.client.options("/v1/agents")).status_code == 401
    assert (await service.client.head("/v1/agents")).status_code in (401, 405)
    # X-API-Key is the one used when both come: a bad one is not rescued by a good bearer.
    both = {"X-API-Key": "adk_junk", "Authorization": f"Bearer {key}"}
    assert (await service.client.get("/v1/agents", headers=both)).status_code == 401
    await service.call("POST", "/v1/agents", tenant=OTHER, json={"name": "g", "type": "t"})
    mixed = {"X-API-Key": key, "Authorization": f"Bearer {service.keys[(OTHER, 'admin')]}"}
    listed = await service.client.get("/v1/agents", headers=mixed)
    assert listed.json()["items"] == []  # acme's view, not globex's
    refused = await service.client.post(
        "/v1/agents", headers=mixed, json={"name": "a", "type": "t"}
    )
    assert refused.status_code == 403
    lower = {"authorization": f"bearer {key}"}
    assert (await service.client.get("/v1/agents", headers=lower)).status_code == 200


async def test_other_tenants_ids_inside_bodies_are_404_and_write_nothing(
    service: Service,
) -> None:
    agent = (
        await service.call("POST", "/v1/agents", tenant=OTHER, json={"name": "g", "type": "t"})
    ).json()["id"]
    task = (await service.call("POST", "/v1/tasks", tenant=OTHER, json={"type": "x"})).json()["id"]
    for path, body in (
        ("/v1/tasks", {"type": "x", "agent_id": agent}),
        ("/v1/tasks", {"type": "x", "depends_on": [task]}),
        ("/v1/tasks/batch", {"tasks": [{"type": "x"}, {"type": "x", "depends_on": [task]}]}),
        ("/v1/tasks/claim", {"agent_id": agent}),
    ):
        response = await service.call("POST", path, json=body)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["code"] == "NotFound"
    assert await service.dl.tenant(TENANT).tasks.count() == 0
    assert (await service.dl.tenant(OTHER).tasks.get(task)).status == "pending"

    setup = await service.call(
        "POST", "/v1/memory/setup", role="admin", tenant=OTHER, json={"dimension": 3}
    )
    assert setup.status_code == 200, setup.text
    theirs = (
        await service.call("POST", "/v1/memory", tenant=OTHER, json={"vector": [1, 0, 0]})
    ).json()["id"]
    entity = (
        await service.call(
            "POST", "/v1/memory/entities", tenant=OTHER, json={"name": "Bob", "type": "person"}
        )
    ).json()["id"]
    mine = (await service.call("POST", "/v1/memory", json={"vector": [0, 1, 0]})).json()["id"]
    me = (
        await service.call("POST", "/v1/memory/entities", json={"name": "Al", "type": "person"})
    ).json()["id"]
    for path, body in (
        (f"/v1/memory/{mine}/entities", {"entity_ids": [entity]}),
        ("/v1/memory/relations", {"source": me, "relation": "knows", "target": entity}),
        (
            "/v1/memory/relations",
            {"source": me, "relation": "knows", "target": me, "source_memory": theirs},
        ),
    ):
        response = await service.call("POST", path, json=body)
        assert response.status_code == 404, (path, response.text)
    forgot = await service.call("POST", "/v1/memory/forget", json={"ids": [theirs], "hard": True})
    assert forgot.json() == {"forgotten": 0}
    assert (await service.call("GET", f"/v1/memory/{theirs}", tenant=OTHER)).status_code == 200
    relations = await service.call("GET", f"/v1/memory/entities/{me}/relations")
    assert relations.json()["items"] == []


async def test_limits_hold_for_chunked_bodies_and_long_polls(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = ServiceConfig(port=0, max_body_bytes=2048, request_timeout=2)
    async with service_on(database, redis_url, tmp_path, config) as svc:

        async def chunks() -> Any:
            # No Content-Length: the limit must count what arrives.
            yield b'{"name":"'
            for _ in range(10):
                yield b"a" * 1000
            yield b'","type":"t"}'

        headers = {**svc.auth(), **JSON}
        response = await svc.client.post("/v1/agents", content=chunks(), headers=headers)
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "PayloadTooLarge"
        assert await svc.dl.tenant(TENANT).agents.count() == 0
        agent = (await svc.call("POST", "/v1/agents", json={"name": "w", "type": "t"})).json()
        for path, body in (
            ("/v1/tasks/claim", {"agent_id": agent["id"], "types": ["none"], "wait": 3600}),
            ("/v1/locks/busy", {"wait": 3600}),
        ):
            if path.startswith("/v1/locks"):
                held = await svc.call("POST", path, json={"ttl": 60})
                assert held.status_code == 200
            started = time.monotonic()
            response = await svc.call("POST", path, json=body)
            # Capped below the 2 s limit: an answer, not a 504.
            assert response.status_code == (200 if path.endswith("claim") else 423), response.text
            assert time.monotonic() - started < 2


async def test_a_revoked_key_is_refused_by_the_mcp_endpoint_at_once(dl: DataLayer) -> None:
    made, key = await dl.admin.api_keys.create(TENANT, "read-write", name="mcp-short")
    async with mcp_running(dl, ServiceConfig(port=0)) as where:
        url = f"{where.url}{MCP_PATH}"
        async with _http_session(url, key) as session:
            assert not (await session.call_tool("submit_task", {"type": "x"})).is_error
            await dl.admin.api_keys.revoke(made.id)
            refused = False
            try:
                result = await session.call_tool("submit_task", {"type": "x"})
                refused = result.is_error
            except Exception:  # noqa: BLE001 - the SDK raises on the 401
                refused = True
            assert refused
        async with httpx.AsyncClient() as raw:
            hello = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            headers = {
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {key}",
            }
            assert (await raw.post(url, json=hello, headers=headers)).status_code == 401
    assert await dl.tenant(TENANT).tasks.count() == 1
