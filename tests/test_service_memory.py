"""Agent memory and its knowledge graph over HTTP: setup, remember, recall, forget, graph
reads and writes, roles and tenants."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.service_support import OTHER, TENANT, Service, problem

pytestmark = pytest.mark.timeout(120)

DIM = 4


def _vector(n: int) -> list[float]:
    vector = [0.05] * DIM
    vector[n % DIM] = 1.0
    return vector


async def _setup(service: Service) -> None:
    response = await service.call("POST", "/v1/memory/setup", role="admin", json={"dimension": DIM})
    assert response.status_code == 200, response.text
    assert response.json()["dimension"] == DIM


async def test_setup_takes_an_admin_key_and_a_matching_dimension(service: Service) -> None:
    body = {"dimension": DIM}
    for role in ("read-only", "read-write"):
        response = await service.call("POST", "/v1/memory/setup", role=role, json=body)
        problem(response, 403, "PermissionDenied")
    problem(await service.call("POST", "/v1/memory", json={"vector": _vector(0)}), 404, "NotFound")
    await _setup(service)
    await _setup(service)  # idempotent
    response = await service.call("POST", "/v1/memory/setup", role="admin", json={"dimension": 8})
    problem(response, 409, "Conflict")
    response = await service.call("POST", "/v1/memory/setup", role="admin", json={"dimension": 0})
    problem(response, 422, "ValidationError")


async def test_remember_recall_get_history_and_forget(service: Service) -> None:
    await _setup(service)
    made = await service.call(
        "POST",
        "/v1/memory",
        json={
            "agent_id": "a1",
            "vector": _vector(0),
            "text": "Ann lives in Berlin",
            "subject": "ann",
            "metadata": {"topic": "home"},
            "importance": 0.9,
        },
    )
    assert made.status_code == 201, made.text
    assert made.json()["event"] == "created"
    memory_id = made.json()["id"]
    packed = base64.b64encode(np.asarray(_vector(0), dtype="<f4").tobytes()).decode()
    again = await service.call(
        "POST",
        "/v1/memory",
        json={
            "agent_id": "a1",
            "vector": packed,
            "encoding": "float32",
            "text": "Ann lives in Paris",
            "subject": "ann",
        },
    )
    assert again.json()["id"] == memory_id
    assert again.json()["event"] == "updated"
    other = await service.call(
        "POST", "/v1/memory", json={"agent_id": "a2", "vector": _vector(2), "text": "sky is blue"}
    )
    assert other.status_code == 201

    recalled = await service.call(
        "POST",
        "/v1/memory/recall",
        role="read-only",
        json={"agent_id": ["a1", "a2"], "vector": _vector(0), "limit": 5},
    )
    assert recalled.status_code == 200, recalled.text
    items = recalled.json()["items"]
    assert items[0]["memory"]["id"] == memory_id
    assert items[0]["memory"]["text"] == "Ann lives in Paris"
    assert set(items[0]["parts"]) == {"similarity", "recency", "importance", "access"}
    only_a2 = await service.call(
        "POST", "/v1/memory/recall", json={"agent_id": "a2", "vector": _vector(0)}
    )
    assert [i["memory"]["agent_id"] for i in only_a2.json()["items"]] == ["a2"]
    filtered = await service.call(
        "POST",
        "/v1/memory/recall",
        json={"vector": _vector(0), "filter": {"metadata.topic": "home"}},
    )
    assert [i["memory"]["id"] for i in filtered.json()["items"]] == [memory_id]

    got = await service.call("GET", f"/v1/memory/{memory_id}", role="read-only")
    assert got.json()["version"] == 2
    history = await service.call("GET", f"/v1/memory/{memory_id}/history")
    assert [v["text"] for v in history.json()["items"]] == [
        "Ann lives in Berlin",
        "Ann lives in Paris",
    ]
    listed = await service.call("GET", "/v1/memory", params={"agent_id": "a1"})
    assert [m["id"] for m in listed.json()["items"]] == [memory_id]

    problem(
        await service.call(
            "POST", "/v1/memory/forget", role="read-only", json={"ids": [memory_id]}
        ),
        403,
        "PermissionDenied",
    )
    problem(await service.call("POST", "/v1/memory/forget", json={}), 422, "ValidationError")
    problem(
        await service.call("POST", "/v1/memory/forget", json={"filter": {}}),
        422,
        "ValidationError",
    )
    forgotten = await service.call("POST", "/v1/memory/forget", json={"ids": [memory_id]})
    assert forgotten.json() == {"forgotten": 1}
    after = await service.call("POST", "/v1/memory/recall", json={"vector": _vector(0)})
    assert memory_id not in [i["memory"]["id"] for i in after.json()["items"]]
    assert (await service.call("GET", f"/v1/memory/{memory_id}")).json()["forgotten_at"]


async def test_bad_memory_input_is_422_and_stores_nothing(service: Service) -> None:
    await _setup(service)
    nan = base64.b64encode(np.asarray([1, np.nan, 0, 0], dtype="<f4").tobytes()).decode()
    for body in (
        {"vector": [1.0, 2.0]},
        {"vector": nan, "encoding": "float32"},
        {"vector": "!!", "encoding": "float32"},
        {"vector": _vector(0), "importance": 2},
        {"vector": _vector(0), "kind": ""},
        {"vector": _vector(0), "at": "2024-01-01T00:00:00"},
        {"text": "no embedder in this service"},
        {},
        {"vector": _vector(0), "tenant_id": OTHER},
    ):
        problem(await service.call("POST", "/v1/memory", json=body), 422, "ValidationError")
    for body in (
        {"vector": [1.0]},
        {"vector": _vector(0), "limit": 0},
        {"vector": _vector(0), "weights": {"similarity": -1}},
    ):
        problem(await service.call("POST", "/v1/memory/recall", json=body), 422, "ValidationError")
    problem(
        await service.call("POST", "/v1/memory", role="read-only", json={"vector": _vector(0)}),
        403,
        "PermissionDenied",
    )
    assert await service.dl.tenant(TENANT).memory.list() == []


async def test_the_graph_over_http(service: Service) -> None:
    await _setup(service)

    async def entity(name: str, type_: str = "person", **kw: Any) -> str:
        response = await service.call(
            "POST", "/v1/memory/entities", json={"name": name, "type": type_, **kw}
        )
        assert response.status_code == 200, response.text
        ident: str = response.json()["id"]
        return ident

    ann = await entity("Ann", properties={"age": 30})
    bob = await entity("Bob")
    berlin = await entity("Berlin", "city")
    assert await entity("ann") == ann  # the same entity, any case
    fact = await service.call(
        "POST",
        "/v1/memory/relations",
        json={"source": ann, "relation": "knows", "target": bob},
    )
    assert fact.status_code == 200, fact.text
    await service.call(
        "POST",
        "/v1/memory/relations",
        json={"source": bob, "relation": "lives_in", "target": berlin, "exclusive": True},
    )
    found = await service.call(
        "GET", "/v1/memory/entities", role="read-only", params={"name": "Anne"}
    )
    assert [m["entity"]["id"] for m in found.json()["items"]] == [ann]
    got = await service.call("GET", f"/v1/memory/entities/{ann}")
    assert got.json()["properties"] == {"age": 30}
    near = await service.call("GET", f"/v1/memory/entities/{ann}/neighbours", params={"hops": 2})
    assert [(n["entity"]["name"], n["distance"]) for n in near.json()["items"]] == [
        ("Bob", 1),
        ("Berlin", 2),
    ]
    relations = await service.call(
        "GET", f"/v1/memory/entities/{bob}/relations", params={"direction": "both"}
    )
    assert sorted(r["relation"] for r in relations.json()["items"]) == ["knows", "lives_in"]
    paths = await service.call("GET", "/v1/memory/paths", params={"source": ann, "target": berlin})
    assert paths.status_code == 200, paths.text
    assert [p["entity_ids"] for p in paths.json()["items"]] == [[ann, bob, berlin]]
    ended = await service.call(
        "POST", f"/v1/memory/relations/{fact.json()['id']}/invalidate", json={}
    )
    assert ended.json()["valid_to"] is not None
    versions = await service.call("GET", f"/v1/memory/relations/{fact.json()['id']}/versions")
    assert len(versions.json()["items"]) == 2
    made = await service.call("POST", "/v1/memory", json={"vector": _vector(1), "text": "x"})
    linked = await service.call(
        "POST", f"/v1/memory/{made.json()['id']}/entities", json={"entity_ids": [ann]}
    )
    assert linked.json() == {"linked": 1}

    for path, params in (
        (f"/v1/memory/entities/{ann}/neighbours", {"hops": 7}),
        (f"/v1/memory/entities/{ann}/neighbours", {"direction": "up"}),
        (f"/v1/memory/entities/{ann}/relations", {"as_of": "yesterday"}),
        ("/v1/memory/paths", {"source": ann, "target": ann}),
    ):
        problem(await service.call("GET", path, params=params), 422, "ValidationError")
    bad_relation = {"source": ann, "relation": "knows", "target": "nobody"}
    problem(await service.call("POST", "/v1/memory/relations", json=bad_relation), 404, "NotFound")
    problem(
        await service.call(
            "POST", "/v1/memory/entities", role="read-only", json={"name": "X", "type": "t"}
        ),
        403,
        "PermissionDenied",
    )


async def test_another_tenants_memories_and_entities_are_404(service: Service) -> None:
    await _setup(service)
    made = await service.call(
        "POST", "/v1/memory", json={"agent_id": "a1", "vector": _vector(0), "text": "secret"}
    )
    memory_id = made.json()["id"]
    ann = (
        await service.call("POST", "/v1/memory/entities", json={"name": "Ann", "type": "person"})
    ).json()["id"]
    bob = (
        await service.call("POST", "/v1/memory/entities", json={"name": "Bob", "type": "person"})
    ).json()["id"]
    fact = await service.call(
        "POST", "/v1/memory/relations", json={"source": ann, "relation": "knows", "target": bob}
    )
    fact_id = fact.json()["id"]
    for method, path, kw in (
        ("GET", f"/v1/memory/{memory_id}", {}),
        ("GET", f"/v1/memory/{memory_id}/history", {}),
        ("GET", f"/v1/memory/entities/{ann}", {}),
        ("GET", f"/v1/memory/entities/{ann}/neighbours", {}),
        ("GET", f"/v1/memory/entities/{ann}/relations", {}),
        ("GET", "/v1/memory/paths", {"params": {"source": ann, "target": bob}}),
        ("GET", f"/v1/memory/relations/{fact_id}/versions", {}),
        ("POST", f"/v1/memory/relations/{fact_id}/invalidate", {"json": {}}),
        ("POST", "/v1/memory/relations", {"json": {"source": ann, "relation": "r", "target": bob}}),
        ("POST", f"/v1/memory/{memory_id}/entities", {"json": {"entity_ids": [ann]}}),
    ):
        response = await service.call(method, path, tenant=OTHER, **kw)
        problem(response, 404, "NotFound")
    forgotten = await service.call(
        "POST", "/v1/memory/forget", tenant=OTHER, json={"ids": [memory_id], "hard": True}
    )
    assert forgotten.json() == {"forgotten": 0}
    recalled = await service.call(
        "POST", "/v1/memory/recall", tenant=OTHER, json={"vector": _vector(0)}
    )
    assert recalled.json()["items"] == []
    listed = await service.call("GET", "/v1/memory", tenant=OTHER)
    assert listed.json()["items"] == []
    found = await service.call("GET", "/v1/memory/entities", tenant=OTHER, params={"name": "Ann"})
    assert found.json()["items"] == []
    # The same name in the other tenant is an entity of its own.
    theirs = await service.call(
        "POST", "/v1/memory/entities", tenant=OTHER, json={"name": "Ann", "type": "person"}
    )
    assert theirs.json()["id"] != ann
    mine = service.dl.tenant(TENANT).memory
    assert (await mine.get(memory_id)).forgotten_at is None
    assert len(await mine.graph.versions(fact_id)) == 1
