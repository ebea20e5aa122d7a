"""Schema-driven fuzzing of the live service with schemathesis, as a read-write key of acme.

Every operation of the service's own OpenAPI document gets valid and invalid requests
generated from its schema; each answer must be no 5xx, a documented status with a documented
content type, and a body that fits the documented schema. Some requests carry another tenant's
ids (globex's, seeded through the library first) in their paths and bodies: afterwards none of
globex's records has changed, and none of their ids appeared in any successful answer.

Bounded: a few examples per operation and way, derandomized so that a failure found in CI
comes again on a laptop. Streaming routes (Server-Sent Events) are left out: their answer
does not end, so there is no body to check.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agency_data.service import openapi_document
from agency_data.service.routes import ROUTERS
from tests.service_support import OTHER, TENANT, Service

pytestmark = pytest.mark.timeout(180)

POSITIVE, NEGATIVE = 4, 3  # examples per operation, valid and invalid
BUDGET = 80.0  # seconds for the whole run; operations past it are reported, and fail the test
CALL_TIMEOUT = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Long polls (claims, locks) are answered soon: a generated wait of 20 s would spend the budget.
SHORT_WAIT = 0.05
DIM = 4


@dataclass
class Seeded:
    """globex's records, what fuzzing as acme must neither read nor change."""

    ids: dict[str, str]  # path or body parameter name -> one of globex's ids
    snapshot: dict[str, Any] = field(default_factory=dict)


async def _seed(service: Service) -> Seeded:
    globex = service.dl.tenant(OTHER)
    agent = await globex.agents.create("globex-agent", "planner", {"secret": True})
    task = await globex.tasks.create("globex-work", {"secret": True}, agent_id=agent.id)
    collection = "shared_notes"
    await service.dl.embeddings.create_collection(collection, dimension=DIM)
    notes = globex.embeddings.collection(collection)
    embedding = await notes.store(
        {"entity_type": "doc", "entity_id": "globex-doc", "vector": [1.0, 0.0, 0.0, 0.0]}
    )
    # acme has rows in the same collection: searches there return something of acme's.
    await (
        service.dl.tenant(TENANT)
        .embeddings.collection(collection)
        .store({"entity_type": "doc", "entity_id": "acme-doc", "vector": [0.0, 1.0, 0.0, 0.0]})
    )
    ids = {
        "agent_id": str(agent.id),
        "task_id": str(task.id),
        "embedding_id": str(embedding),
        "name": collection,
    }
    seeded = Seeded(ids)
    seeded.snapshot = await _snapshot(service, seeded)
    return seeded


async def _snapshot(service: Service, seeded: Seeded) -> dict[str, Any]:
    globex = service.dl.tenant(OTHER)
    agent = await globex.agents.get(seeded.ids["agent_id"])
    task = await globex.tasks.get(seeded.ids["task_id"])
    notes = globex.embeddings.collection(seeded.ids["name"])
    embedding = await notes.get(seeded.ids["embedding_id"])
    return {
        "agent": agent.model_dump(),
        "task": task.model_dump(),
        "embedding": (embedding.entity_id, embedding.metadata, embedding.content),
        "counts": (await globex.agents.count(), await globex.tasks.count(), await notes.count()),
    }


def _fixed(case: Any, seeded: Seeded, inject: bool) -> Any:
    """``case`` with short waits, and, if ``inject``, globex's ids wherever one fits."""
    for where in (case.body, case.query):
        wait = where.get("wait") if isinstance(where, dict) else None
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > SHORT_WAIT:
            where["wait"] = SHORT_WAIT
    if inject:
        for name in case.path_parameters or {}:
            if name in seeded.ids:
                case.path_parameters[name] = seeded.ids[name]
        if isinstance(case.body, dict):
            for name in case.body:
                if name in seeded.ids and name != "name":
                    case.body[name] = seeded.ids[name]
            if isinstance(case.body.get("ids"), list):
                case.body["ids"] = [seeded.ids["embedding_id"]]
    return case


def _streaming() -> set[tuple[str, str]]:
    """(METHOD, path) of the routes marked ``stream`` (Server-Sent Events), as the app has them:
    whatever their document says, their answer does not end."""
    app = Litestar(route_handlers=ROUTERS, openapi_config=None)
    return {
        (method, re.sub(r":[^}]+}", "}", route.path))
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if (handler.opt or {}).get("stream")
        for method in handler.http_methods
    }


@dataclass
class Run:
    """What fuzzing saw."""

    failures: dict[str, str] = field(default_factory=dict)  # one per operation and kind
    leaks: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    streaming: list[str] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)
    calls: int = 0


def _fuzz(url: str, key: str, seeded: Seeded) -> Run:
    schema = schemathesis.openapi.from_dict(openapi_document())
    run = Run()
    streaming = _streaming()
    started = time.monotonic()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {key}"
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if (operation.method.upper(), operation.path) in streaming:
                run.streaming.append(label)
            elif time.monotonic() - started > BUDGET:
                run.unreached.append(label)
            else:
                _examples(operation, label, url, session, seeded, run)
    return run


def _examples(
    operation: Any, label: str, url: str, session: requests.Session, seeded: Seeded, run: Run
) -> None:
    """``operation`` called with valid and invalid examples, every answer checked."""
    for mode, count in (
        (schemathesis.GenerationMode.POSITIVE, POSITIVE),
        (schemathesis.GenerationMode.NEGATIVE, NEGATIVE),
    ):
        try:
            _examples_of(
                operation, mode, count, f"{label} ({mode.value})", url, session, seeded, run
            )
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): no negative examples exist.
            if mode != schemathesis.GenerationMode.NEGATIVE:
                raise


def _examples_of(
    operation: Any,
    mode: schemathesis.GenerationMode,
    count: int,
    kind: str,
    url: str,
    session: requests.Session,
    seeded: Seeded,
    run: Run,
) -> None:
    secret_ids = [v for k, v in seeded.ids.items() if k != "name"]
    strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans())

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def example(drawn: tuple[Any, bool]) -> None:
        case = _fixed(drawn[0], seeded, inject=drawn[1])
        try:
            response = case.call(base_url=url, session=session, timeout=CALL_TIMEOUT)
        except requests.RequestException as exc:
            run.failures.setdefault(kind, f"no answer: {exc!r}")
            return
        run.calls += 1
        status = response.status_code
        run.statuses[status] = run.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            run.leaks.extend(
                f"{kind} answered {status} with globex's {secret}"
                for secret in secret_ids
                if secret in response.text
            )
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            run.failures.setdefault(
                f"{kind} {type(exc).__name__}", f"{str(exc)[:1500]}\n{case.as_curl_command()}"
            )

    example()


async def test_fuzzing_finds_no_server_error_no_undocumented_answer_and_no_leak(
    service: Service,
) -> None:
    seeded = await _seed(service)
    started = time.monotonic()
    # In a thread: the service answers on this event loop, the fuzzer's client blocks.
    run = await asyncio.to_thread(_fuzz, service.url, service.keys[(TENANT, "read-write")], seeded)
    elapsed = time.monotonic() - started
    report = "\n\n".join(f"{name}:\n{detail}" for name, detail in sorted(run.failures.items()))
    assert not run.failures, f"{len(run.failures)} failures in {run.calls} calls:\n\n{report}"
    assert run.leaks == []
    assert run.unreached == [], f"past the {BUDGET:g} s budget: {run.unreached}"
    assert await _snapshot(service, seeded) == seeded.snapshot
    # Not vacuous: successes and refusals both came, and so did some requests naming globex's.
    assert sum(n for s, n in run.statuses.items() if s < 300) > 0, run.statuses
    assert run.statuses.get(422, 0) + run.statuses.get(400, 0) > 0, run.statuses
    assert run.statuses.get(404, 0) > 0, run.statuses
    assert elapsed < 120, f"fuzzing took {elapsed:.0f} s ({run.calls} calls)"
