"""The MCP server, driven by the SDK's own client: over stdio (the CLI as a subprocess) and
over streamable HTTP (in process), against a real database and Valkey."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextResourceContents

from agency_data import DataLayer
from agency_data.config import ServiceConfig
from agency_data.service.mcp import KEY_ENV, MCP_PATH, running
from tests.embedding_support import HashingEmbedder
from tests.service_support import OTHER, TENANT
from tests.test_cli import CLI, cli_env

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DIM = 8
TOOLS = {
    "remember",
    "recall",
    "forget",
    "neighbours",
    "paths",
    "submit_task",
    "claim_task",
    "heartbeat_task",
    "complete_task",
    "fail_task",
    "get_session",
    "set_session",
    "acquire_lock",
    "release_lock",
}


def _unit(axis: int, dimension: int = DIM) -> list[float]:
    vector = [0.0] * dimension
    vector[axis] = 1.0
    return vector


async def _ok(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    body = json.loads(_text(result))
    assert isinstance(body, dict)
    return body


async def _refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, _text(result)
    text = _text(result)
    assert "Traceback" not in text
    return text


def _text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def _resource(session: ClientSession, uri: str) -> dict[str, Any]:
    (content,) = (await session.read_resource(uri)).contents
    assert isinstance(content, TextResourceContents)
    body = json.loads(content.text)
    assert isinstance(body, dict)
    return body


async def test_stdio_memory_and_a_task_from_submit_to_complete(
    dl: DataLayer, database: str, redis_url: str, tmp_path: Path
) -> None:
    await dl.memory.setup(DIM)
    made, key = await dl.admin.api_keys.create(TENANT, "read-write", name="mcp-writer")
    agent = await dl.tenant(TENANT).agents.create("worker", "executor")
    foreign = await dl.tenant(OTHER).tasks.create("elsewhere")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agency_data", "mcp"],
        env=cli_env(database, redis_url, tmp_path, **{KEY_ENV: key}),
        cwd=str(ROOT),
    )
    # Anything on stdout that is not the protocol reaches the client as a transport fault.
    faults: list[Exception] = []

    async def collect(message: Any) -> None:
        if isinstance(message, Exception):
            faults.append(message)

    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, message_handler=collect) as session,
    ):
        await session.initialize()
        assert {tool.name for tool in (await session.list_tools()).tools} >= TOOLS

        stored = await _ok(
            session,
            "remember",
            text="Alice moved to Berlin",
            vector=_unit(1),
            agent_id="planner",
            subject="alice.home",
            kind="fact",
            importance=0.9,
            metadata={"source": "chat"},
        )
        assert stored["event"] == "created"
        await _ok(session, "remember", text="Bob likes tea", vector=_unit(5), agent_id="planner")
        recalled = await _ok(session, "recall", vector=_unit(1), agent_id="planner", limit=1)
        (hit,) = recalled["items"]
        assert hit["id"] == stored["id"]
        assert hit["text"] == "Alice moved to Berlin"
        assert hit["metadata"] == {"source": "chat"}
        assert hit["score"] > 0
        # No embedder in this process: words alone are refused with what to send instead.
        refused = await _refused(session, "remember", text="Carol is away")
        assert "send `vector`" in refused
        assert "send `vector`" in await _refused(session, "recall", query="where is Alice?")
        assert "1 dimensions" in await _refused(session, "recall", vector=[1.0])
        assert "limit" in await _refused(session, "recall", vector=_unit(1), limit=0)
        assert (await _ok(session, "forget", ids=[stored["id"]]))["forgotten"] == 1
        after = await _ok(session, "recall", vector=_unit(1), agent_id="planner")
        assert stored["id"] not in [item["id"] for item in after["items"]]

        assert "text, vector" in await _refused(session, "remember", agent_id="planner")
        nobody = await _refused(session, "submit_task", type="x", agent_id=str(uuid.uuid4()))
        assert "agent" in nobody
        assert "priority" in await _refused(session, "submit_task", type="x", priority=-1)
        task = await _ok(session, "submit_task", type="summarise", data={"doc": 7}, priority=5)
        assert task["status"] == "pending"
        claimed = (await _ok(session, "claim_task", agent_id=str(agent.id), wait=0.5))["items"]
        assert [item["id"] for item in claimed] == [task["id"]]
        token = claimed[0]["lease_token"]
        assert "lease_token" in await _refused(session, "complete_task", task_id=task["id"])
        wrong = await _refused(
            session, "complete_task", task_id=task["id"], lease_token=str(uuid.uuid4())
        )
        assert "lease" in wrong
        done = await _ok(
            session, "complete_task", task_id=task["id"], lease_token=token, result={"words": 3}
        )
        assert done["status"] == "completed"
        assert done["result"] == {"words": 3}
        # Another tenant's task is not there for this key, and nothing of it changes.
        assert "not" in await _refused(
            session, "complete_task", task_id=str(foreign.id), lease_token=token
        )
        empty = await _ok(session, "claim_task", agent_id=str(agent.id), wait=0)
        assert empty["items"] == []
        assert "agent_id" in await _refused(session, "claim_task", agent_id="not-a-uuid")
        assert "wait" in await _refused(session, "claim_task", agent_id=str(agent.id), wait=3600)

        flaky = await _ok(session, "submit_task", type="fetch")
        (held,) = (await _ok(session, "claim_task", agent_id=str(agent.id), types=["fetch"]))[
            "items"
        ]
        beat = await _ok(
            session, "heartbeat_task", task_id=flaky["id"], lease_token=held["lease_token"]
        )
        assert beat["lease_expires_at"]
        failed = await _ok(
            session,
            "fail_task",
            task_id=flaky["id"],
            lease_token=held["lease_token"],
            error="the site was down",
            retry=False,
        )
        assert (failed["status"], failed["error"]) == ("failed", "the site was down")

        queue = await _resource(session, "agency-data://queue")
        assert queue["counts"]["completed"] == {"summarise": 1}
        by_type = await _resource(session, "agency-data://queue/summarise")
        assert by_type["counts"]["completed"] == 1
        memories = await _resource(
            session, f"agency-data://collections/{dl.config.memory.collection}"
        )
        assert memories["dimension"] == DIM
        assert memories["rows"] == 1  # the forgotten memory's vector is gone from it
        assert memories["embeds_text"] is False
        with pytest.raises(MCPError):
            await session.read_resource("agency-data://collections/nope")

        # The key is checked at every call: revoked, the next call is refused.
        await dl.admin.api_keys.revoke(made.id)
        assert "not valid" in await _refused(session, "submit_task", type="late")

    assert faults == []
    assert (await dl.tenant(OTHER).tasks.get(foreign.id)).status == "pending"
    assert await dl.tenant(OTHER).tasks.count() == 1
    assert await dl.tenant(TENANT).tasks.count() == 2  # the refused submits wrote nothing
    finished = await dl.tenant(TENANT).tasks.get(task["id"])
    assert finished.status == "completed"
    versions = await dl.tenant(TENANT).memory.history(stored["id"])
    assert {version.actor for version in versions} == {"mcp-writer"}


def test_stdio_refuses_to_start_without_a_valid_key(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    bad = "adk_YWNtZQ.0000000000000000.nothing"
    result = subprocess.run(
        [*CLI, "mcp"],
        capture_output=True,
        text=True,
        env=cli_env(database, redis_url, tmp_path, **{KEY_ENV: bad}),
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "API key is not valid" in result.stderr


async def test_http_keys_roles_and_tenants(dl: DataLayer) -> None:
    await dl.memory.setup(32, embedder=HashingEmbedder(32))
    graph = dl.tenant(TENANT).memory.graph
    ann, bob, cat = [await graph.upsert_entity(name, "person") for name in ("Ann", "Bob", "Cat")]
    await graph.relate(ann, "knows", bob)
    await graph.relate(bob, "knows", cat)
    keys = {}
    for tenant, role in ((TENANT, "read-write"), (TENANT, "read-only"), (OTHER, "read-write")):
        _, keys[(tenant, role)] = await dl.admin.api_keys.create(
            tenant, role, name=f"{tenant}-{role}"
        )
    async with running(dl, ServiceConfig(port=0)) as where:
        url = f"{where.url}{MCP_PATH}"
        # No key, a bad key: refused before any MCP message is read.
        async with httpx.AsyncClient() as raw:
            hello = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            accept = {"Accept": "application/json, text/event-stream"}
            assert (await raw.post(url, json=hello, headers=accept)).status_code == 401
            bad = {**accept, "Authorization": "Bearer adk_YWNtZQ.0000000000000000.nothing"}
            assert (await raw.post(url, json=hello, headers=bad)).status_code == 401

        async with _http_session(url, keys[(TENANT, "read-write")]) as writer:
            remembered = await _ok(writer, "remember", text="the deploy key rotates on Mondays")
            hits = (await _ok(writer, "recall", query="when does the deploy key rotate?"))["items"]
            assert hits[0]["id"] == remembered["id"]
            opened = await _ok(writer, "set_session", agent_id="planner", data={"step": 1})
            merged = await _ok(writer, "set_session", session_id=opened["id"], data={"goal": "x"})
            assert "agent_id" in await _refused(writer, "set_session", data={"a": 1})
            unknown = await _refused(writer, "get_session", session_id="no-such-session")
            assert "does not exist" in unknown
            assert merged["data"] == {"step": 1, "goal": "x"}
            lock = await _ok(writer, "acquire_lock", name="deploy", ttl=10)
            assert lock["fencing_token"] >= 1
            assert "held by someone else" in await _refused(writer, "acquire_lock", name="deploy")
            assert "not held with this token" in await _refused(
                writer, "release_lock", name="deploy", token=uuid.uuid4().hex
            )
            assert "32-character" in await _refused(
                writer, "release_lock", name="deploy", token="x"
            )
            assert (await _ok(writer, "release_lock", name="deploy", token=lock["token"]))[
                "released"
            ]

        async with _http_session(url, keys[(TENANT, "read-only")]) as reader:
            task_id, token = str(uuid.uuid4()), str(uuid.uuid4())
            writes: dict[str, dict[str, Any]] = {
                "remember": {"text": "a read-only key writes nothing"},
                "forget": {"ids": [remembered["id"]]},
                "submit_task": {"type": "x"},
                "claim_task": {"agent_id": str(uuid.uuid4())},
                "heartbeat_task": {"task_id": task_id, "lease_token": token},
                "complete_task": {"task_id": task_id, "lease_token": token},
                "fail_task": {"task_id": task_id, "lease_token": token, "error": "e"},
                "set_session": {"session_id": opened["id"], "data": {"goal": "y"}},
                "acquire_lock": {"name": "deploy"},
                "release_lock": {"name": "deploy", "token": uuid.uuid4().hex},
            }
            for tool, arguments in writes.items():
                refused = await _refused(reader, tool, **arguments)
                assert "needs a read-write key" in refused, (tool, refused)
            near = await _ok(reader, "neighbours", entity=ann.id, hops=2)
            assert [(n["entity"]["name"], n["distance"]) for n in near["items"]] == [
                ("Bob", 1),
                ("Cat", 2),
            ]
            (path,) = (await _ok(reader, "paths", source=ann.id, target=cat.id))["items"]
            assert path["entity_ids"] == [ann.id, bob.id, cat.id]
            assert "hops" in await _refused(reader, "neighbours", entity=ann.id, hops=7)
            assert "same entity" in await _refused(reader, "paths", source=ann.id, target=ann.id)
            queue = await _resource(reader, "agency-data://queue")
            assert queue["counts"] == {}
            # Collection names are every tenant's: an admin key's to list.
            with pytest.raises(MCPError, match="admin key"):
                await reader.read_resource("agency-data://collections")
            memories = f"agency-data://collections/{dl.config.memory.collection}"
            described = await _resource(reader, memories)
            assert (described["rows"], described["embeds_text"]) == (1, True)
            assert (await _ok(reader, "get_session", session_id=opened["id"]))["data"][
                "goal"
            ] == "x"
            assert len((await _ok(reader, "recall", query="deploy key"))["items"]) == 1

        async with _http_session(url, keys[(OTHER, "read-write")]) as stranger:
            assert "does not exist" in await _refused(
                stranger, "get_session", session_id=opened["id"]
            )
            assert (await _ok(stranger, "recall", query="deploy key"))["items"] == []
            assert "not held" in await _refused(
                stranger, "release_lock", name="deploy", token=lock["token"]
            )
            assert "no entity" in await _refused(stranger, "neighbours", entity=ann.id)
            assert "no entity" in await _refused(stranger, "paths", source=ann.id, target=cat.id)
            gone = await _ok(stranger, "forget", ids=[remembered["id"]])
            assert gone["forgotten"] == 0
            assert (await _resource(stranger, memories))["rows"] == 0

    # The HTTP API's per-key rate limits hold over MCP too.
    async with (
        running(dl, ServiceConfig(port=0, rate_limit=1, rate_burst=1)) as limited,
        _http_session(f"{limited.url}{MCP_PATH}", keys[(TENANT, "read-only")]) as hasty,
    ):
        answers = [
            await hasty.call_tool("get_session", {"session_id": opened["id"]}) for _ in range(4)
        ]
        assert "over its rate limit" in _text(answers[-1])

    tenant = dl.tenant(TENANT)
    assert (await tenant.sessions.get(opened["id"])).data == {"step": 1, "goal": "x"}
    assert len(await tenant.memory.list()) == 1
    assert await dl.tenant(OTHER).memory.list() == []
    history = await tenant.memory.history(remembered["id"])
    assert {version.actor for version in history} == {f"{TENANT}-read-write"}


def _http_session(url: str, key: str) -> Any:
    return _HttpSession(url, key)


class _HttpSession:
    """An initialized MCP client session over streamable HTTP with ``key``."""

    def __init__(self, url: str, key: str) -> None:
        self._url = url
        self._key = key

    async def __aenter__(self) -> ClientSession:
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()
        client = await self._stack.enter_async_context(
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {self._key}"}, timeout=30)
        )
        read, write = await self._stack.enter_async_context(
            streamable_http_client(self._url, http_client=client)
        )
        session = await self._stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
