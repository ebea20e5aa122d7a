"""A TypeScript client generated from the committed openapi.json, used as an agent platform would.

clients/typescript/workflow.mjs is type-checked (``tsc --noEmit``) against the types
``openapi-typescript`` generates from openapi.json, then run against the live service: a
changed path, field or type in the API fails the check before it fails a platform. What the
script did is then read back through the library.

Node and npm are needed: in CI (``CI=true``) their absence fails the test; elsewhere it skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest

from agency_data.service import openapi_document
from tests.service_support import OTHER, TENANT, Service

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
# The operations workflow.mjs calls (the service's HTTP contract).
USED = {
    ("/v1/agents", "post"),
    ("/v1/agents/{agent_id}", "get"),
    ("/v1/collections", "post"),
    ("/v1/collections/{name}/embeddings", "post"),
    ("/v1/collections/{name}/search", "post"),
    ("/v1/tasks", "post"),
    ("/v1/tasks/claim", "post"),
    ("/v1/tasks/{task_id}/heartbeat", "post"),
    ("/v1/tasks/{task_id}/complete", "post"),
}


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the TypeScript client check (Node 20 or later)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return node, npm


def _missing_operations() -> list[str]:
    paths: dict[str, Any] = openapi_document()["paths"]
    return sorted(f"{m.upper()} {p}" for p, m in USED if m not in paths.get(p, {}))


async def _run(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    # Asynchronously: the service under test answers on this same event loop.
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=CLIENT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)} ran past {timeout:g} s") from None
    if process.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {process.returncode}:\n{out.decode()}\n{err.decode()}"
        )
    return out.decode()


_PREPARED: list[bool] = []


async def _prepared(npm: str) -> None:
    """Dependencies installed (from the lock file), types generated, the script type-checked:
    once per session."""
    if _PREPARED:
        return
    if not (CLIENT / "node_modules" / ".bin" / "tsc").exists():
        await _run(npm, "ci", "--no-audit", "--no-fund")
    await _run(npm, "run", "--silent", "generate")
    await _run(npm, "run", "--silent", "check")
    _PREPARED.append(True)


async def test_a_typescript_platform_uses_the_api_through_its_generated_types(
    service: Service,
) -> None:
    missing = _missing_operations()
    if missing:
        pytest.skip(f"the API does not have these yet: {', '.join(missing)}")
    node, npm = _tools()
    await _prepared(npm)
    env = {
        "AGENCY_DATA_URL": service.url,
        "AGENCY_DATA_KEY": service.keys[(TENANT, "read-write")],
        "AGENCY_DATA_ADMIN_KEY": service.keys[(TENANT, "admin")],
    }
    output = await _run(node, "workflow.mjs", env=env, timeout=60)
    did = json.loads(output.strip().splitlines()[-1])

    acme = service.dl.tenant(TENANT)
    agent = await acme.agents.get(did["agent_id"])
    assert (agent.name, agent.type) == ("ts-worker", "summarizer")
    assert agent.capabilities == {"languages": ["en"]}
    notes = acme.embeddings.collection(did["collection"])
    assert await notes.count() == 3
    assert did["best"] == "beta"
    stored = await notes.get(did["embedding_ids"][1])
    assert (stored.entity_type, stored.entity_id) == ("document", "beta")
    assert stored.metadata == {"lang": "en", "rank": 1}
    assert stored.content == "the beta document"
    # Sent as base64 float32 (workflow.mjs's vector(1)) and stored as the same numbers.
    sent = np.sin(1 * 7.1 + np.arange(8) * 1.3).astype(np.float32)
    assert np.allclose(np.asarray(stored.vector, dtype=np.float32), sent, atol=1e-6)
    task = await acme.tasks.get(UUID(did["task_id"]))
    assert task.status == "completed"
    assert task.result == {"summary": "the beta document, summarized"}
    assert task.agent_id == UUID(did["agent_id"])
    assert (did["refused_status"], did["refused_code"]) == (409, "LeaseLost")
    # All of it in the key's tenant, none in the other's.
    other = service.dl.tenant(OTHER)
    assert await other.agents.count() == 0
    assert await other.embeddings.collection(did["collection"]).count() == 0
    assert await other.tasks.count() == 0


async def test_the_type_check_fails_when_the_script_disagrees_with_the_api() -> None:
    """The check is not vacuous: a field the API does not have is a type error."""
    missing = _missing_operations()
    if missing:
        pytest.skip(f"the API does not have these yet: {', '.join(missing)}")
    _, npm = _tools()
    await _prepared(npm)
    script = (CLIENT / "workflow.mjs").read_text()
    wrong = script.replace("best.entity_id !== ", "best.entityId !== ", 1)
    assert wrong != script
    broken = CLIENT / "broken.check.mjs"
    config = CLIENT / "tsconfig.broken.json"
    try:
        broken.write_text(wrong)
        config.write_text(
            json.dumps({"extends": "./tsconfig.json", "include": [broken.name, "schema.d.ts"]})
        )
        with pytest.raises(AssertionError, match="entityId"):
            await _run(str(CLIENT / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", config.name)
    finally:
        broken.unlink(missing_ok=True)
        config.unlink(missing_ok=True)
