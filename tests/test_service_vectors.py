"""Collections and embeddings over HTTP: shapes, encodings, searches, roles and tenants."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from agency_data import DataLayer
from agency_data.errors import Conflict, ValidationError
from tests.service_support import OTHER, TENANT, Service, problem

pytestmark = pytest.mark.timeout(120)

DIM = 4


def _b64(values: list[float], dtype: str = "<f4") -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def _item(n: int, **extra: Any) -> dict[str, Any]:
    vector = [0.0] * DIM
    vector[n % DIM] = 1.0
    vector[(n + 1) % DIM] = 0.1 * (n + 1)
    return {"entity_type": "doc", "entity_id": f"d{n}", "vector": vector, **extra}


async def _collection(service: Service, name: str = "notes", **body: Any) -> dict[str, Any]:
    response = await service.call(
        "POST", "/v1/collections", role="admin", json={"name": name, "dimension": DIM, **body}
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def _count(service: Service, tenant: str = TENANT, name: str = "notes") -> int:
    return await service.dl.tenant(tenant).embeddings.collection(name).count()


async def test_collections_are_created_described_and_listed_by_admin_keys(
    service: Service,
) -> None:
    info = await _collection(service, metric="l2", storage="halfvec", index="hnsw")
    assert (info["name"], info["dimension"], info["metric"], info["storage"]) == (
        "notes",
        DIM,
        "euclidean",
        "halfvec",
    )
    assert info["index"]["kind"] == "hnsw"
    plain = await _collection(service, "plain", index=None)
    assert plain["index"] is None
    assert plain["metric"] == "cosine"
    listed = await service.call("GET", "/v1/collections", role="admin")
    assert listed.json()["items"] == ["notes", "plain"]
    described = await service.call("GET", "/v1/collections/notes", role="read-only")
    assert described.json()["dimension"] == DIM
    problem(await service.call("GET", "/v1/collections/nothing"), 404, "NotFound")
    again = {"name": "notes", "dimension": DIM, "metric": "l2", "storage": "halfvec"}
    problem(
        await service.call("POST", "/v1/collections", role="admin", json=again), 409, "Conflict"
    )
    kept = await service.call(
        "POST", "/v1/collections", role="admin", json={**again, "exist_ok": True}
    )
    assert kept.status_code == 201
    for role in ("read-only", "read-write"):
        body = {"name": "nope", "dimension": DIM}
        problem(
            await service.call("POST", "/v1/collections", role=role, json=body),
            403,
            "PermissionDenied",
        )
        problem(await service.call("GET", "/v1/collections", role=role), 403, "PermissionDenied")
        problem(
            await service.call("DELETE", "/v1/collections/plain", role=role),
            403,
            "PermissionDenied",
        )
    for bad in (
        {"name": "Bad-Name", "dimension": DIM},
        {"name": "x", "dimension": 0},
        {"name": "x", "dimension": DIM, "metric": "hamming"},
        {"name": "x", "dimension": DIM, "index": "flat"},
        {"name": "x", "dimension": DIM, "tenant_id": OTHER},
    ):
        problem(
            await service.call("POST", "/v1/collections", role="admin", json=bad),
            422,
            "ValidationError",
        )
    assert await service.dl.admin.list_collections() == ["notes", "plain"]


async def test_index_management(service: Service) -> None:
    await _collection(service, index=None)
    built = await service.call(
        "POST", "/v1/collections/notes/index", role="admin", json={"kind": "ivfflat", "lists": 2}
    )
    assert built.status_code == 201, built.text
    assert built.json()["index"]["kind"] == "ivfflat"
    assert built.json()["index"]["options"]["lists"] == 2
    problem(
        await service.call("POST", "/v1/collections/notes/index", role="admin", json={}),
        409,
        "Conflict",
    )
    replaced = await service.call(
        "POST", "/v1/collections/notes/index", role="admin", json={"m": 8, "replace": True}
    )
    assert replaced.json()["index"]["kind"] == "hnsw"
    rebuilt = await service.call("POST", "/v1/collections/notes/index/rebuild", role="admin")
    assert rebuilt.status_code == 200
    assert rebuilt.json()["index"]["valid"]
    optimized = await service.call("POST", "/v1/collections/notes/optimize", role="admin")
    assert optimized.status_code == 200
    assert optimized.json()["rows"] == 0
    problem(
        await service.call("POST", "/v1/collections/notes/index", role="admin", json={"m": 1000}),
        422,
        "ValidationError",
    )
    problem(
        await service.call("DELETE", "/v1/collections/notes/index", role="read-write"),
        403,
        "PermissionDenied",
    )
    assert (
        await service.call("DELETE", "/v1/collections/notes/index", role="admin")
    ).status_code == 204
    described = await service.call("GET", "/v1/collections/notes")
    assert described.json()["index"] is None


async def test_a_tenant_cannot_drop_a_collection_holding_another_tenants_rows(
    service: Service,
) -> None:
    await _collection(service)
    stored = await service.call(
        "POST", "/v1/collections/notes/embeddings", tenant=OTHER, json={"items": [_item(1)]}
    )
    assert stored.status_code == 200, stored.text
    await service.call("POST", "/v1/collections/notes/embeddings", json={"items": [_item(2)]})
    body = problem(
        await service.call("DELETE", "/v1/collections/notes", role="admin"), 409, "Conflict"
    )
    assert "other tenant" in body["detail"]
    # Nothing changed, and the table is isolated again (the check lifted it for itself only).
    assert await _count(service, OTHER) == 1
    assert await _count(service, TENANT) == 1
    forced = await service.dl.admin.fetch_value(
        "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'emb_notes'"
    )
    assert forced is True
    # Once only the caller has rows there, it may.
    await service.call(
        "POST", "/v1/collections/notes/embeddings/delete", tenant=OTHER, json={"filter": {}}
    )
    assert (await service.call("DELETE", "/v1/collections/notes", role="admin")).status_code == 204
    assert await service.dl.admin.list_collections() == []
    problem(await service.call("DELETE", "/v1/collections/notes", role="admin"), 404, "NotFound")
    await service.call(
        "POST", "/v1/memory/setup", role="admin", json={"dimension": DIM, "index": False}
    )
    memory = service.dl.config.memory.collection
    problem(
        await service.call("DELETE", f"/v1/collections/{memory}", role="admin"), 409, "Conflict"
    )


async def test_store_get_delete_and_search_json_and_base64(service: Service) -> None:
    await _collection(service)
    items = [_item(n, metadata={"n": n, "team": "a" if n % 2 else "b"}) for n in range(6)]
    items[0] = {**items[0], "id": "first", "content": "the quick brown fox"}
    stored = await service.call("POST", "/v1/collections/notes/embeddings", json={"items": items})
    assert stored.status_code == 200, stored.text
    ids = stored.json()["ids"]
    assert ids[0] == "first"
    assert len(ids) == 6
    encoded = {
        "encoding": "float32",
        "items": [{**_item(6), "vector": _b64(_item(6)["vector"])}],
    }
    more = await service.call("POST", "/v1/collections/notes/embeddings", json=encoded)
    assert more.status_code == 200, more.text
    half = {
        "encoding": "float16",
        "items": [{**_item(7), "vector": _b64(_item(7)["vector"], "<f2")}],
    }
    assert (
        await service.call("POST", "/v1/collections/notes/embeddings", json=half)
    ).status_code == 200
    got = await service.call(
        "GET", f"/v1/collections/notes/embeddings/{more.json()['ids'][0]}", role="read-only"
    )
    assert got.json()["vector"] == pytest.approx(_item(6)["vector"], abs=1e-6)
    assert got.json()["entity_id"] == "d6"

    query = _item(3)["vector"]
    found = await service.call(
        "POST", "/v1/collections/notes/search", role="read-only", json={"vector": query, "limit": 3}
    )
    assert found.status_code == 200, found.text
    hits = found.json()["items"]
    assert hits[0]["entity_id"] == "d3"
    assert len(hits) == 3
    assert set(hits[0]) >= {"id", "score", "distance", "entity_type", "metadata", "content"}
    same = await service.call(
        "POST",
        "/v1/collections/notes/search",
        json={"vector": _b64(query), "encoding": "float32", "limit": 3},
    )
    assert [h["id"] for h in same.json()["items"]] == [h["id"] for h in hits]
    filtered = await service.call(
        "POST",
        "/v1/collections/notes/search",
        json={"vector": query, "limit": 10, "filter": {"metadata.team": "a"}},
    )
    assert {h["metadata"]["team"] for h in filtered.json()["items"]} == {"a"}
    assert len(filtered.json()["items"]) == 3

    batch = await service.call(
        "POST",
        "/v1/collections/notes/search/batch",
        json={
            "encoding": "float32",
            "queries": [
                {"vector": _b64(_item(1)["vector"]), "limit": 1},
                {
                    "vector": _b64(_item(2)["vector"]),
                    "limit": 2,
                    "filter": {"metadata.n": {"$gte": 2}},
                },
            ],
        },
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [h["entity_id"] for h in results[0]["items"]] == ["d1"]
    assert results[1]["items"][0]["entity_id"] == "d2"
    assert len(results[1]["items"]) == 2

    hybrid = await service.call(
        "POST",
        "/v1/collections/notes/search/hybrid",
        json={"text": "brown fox", "vector": _item(5)["vector"], "limit": 2},
    )
    assert hybrid.status_code == 200, hybrid.text
    assert "first" in [h["id"] for h in hybrid.json()["items"]]
    problem(
        await service.call(
            "POST", "/v1/collections/notes/search/hybrid", json={"text": "fox", "limit": 2}
        ),
        422,
        "ValidationError",
    )

    problem(
        await service.call("DELETE", "/v1/collections/notes/embeddings/first", role="read-only"),
        403,
        "PermissionDenied",
    )
    assert (
        await service.call("DELETE", "/v1/collections/notes/embeddings/first")
    ).status_code == 204
    problem(await service.call("GET", "/v1/collections/notes/embeddings/first"), 404, "NotFound")
    problem(await service.call("DELETE", "/v1/collections/notes/embeddings/first"), 404, "NotFound")
    deleted = await service.call(
        "POST", "/v1/collections/notes/embeddings/delete", json={"filter": {"metadata.team": "a"}}
    )
    assert deleted.json() == {"deleted": 3}
    problem(
        await service.call("POST", "/v1/collections/notes/embeddings/delete", json={}),
        422,
        "ValidationError",
    )
    assert await _count(service) == 4


async def test_bad_vectors_are_422_and_store_nothing(service: Service) -> None:
    await _collection(service)
    await _collection(service, "halves", storage="halfvec")
    good = _item(0)
    nan = _b64([1.0, float("nan"), 0.0, 0.0])
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("notes", {"items": [good, {**_item(1), "vector": [1.0, 2.0]}]}, "items[1].vector"),
        (
            "notes",
            {"items": [good, {**_item(1), "vector": [1.0, 2.0, 3.0, 4.0, 5.0]}]},
            "items[1].vector",
        ),
        ("notes", {"encoding": "float32", "items": [{**good, "vector": nan}]}, "items[0].vector"),
        (
            "notes",
            {"encoding": "float32", "items": [{**good, "vector": _b64([float("inf")] * DIM)}]},
            "items[0].vector",
        ),
        (
            "notes",
            {"encoding": "float32", "items": [{**good, "vector": "not base64!"}]},
            "items[0].vector",
        ),
        (
            "notes",
            {"encoding": "float32", "items": [{**good, "vector": "AAAAAAA="}]},
            "items[0].vector",
        ),
        ("notes", {"encoding": "float32", "items": [{**good, "vector": ""}]}, "items[0].vector"),
        (
            "notes",
            {"encoding": "float32", "items": [{**good, "vector": _b64([1.0] * 6, "<f2")}]},
            "items[0].vector",
        ),
        (
            "notes",
            {"encoding": "json", "items": [{**good, "vector": _b64(good["vector"])}]},
            "items[0].vector",
        ),
        ("notes", {"encoding": "float32", "items": [good]}, "items[0].vector"),
        ("notes", {"encoding": "float64", "items": [good]}, "encoding"),
        ("notes", {"items": [good, {**_item(1), "entity_type": " "}]}, "items[1].entity_type"),
        ("notes", {"items": [{**good, "tenant_id": OTHER}]}, ""),
        ("halves", {"items": [good, {**_item(1), "vector": [1e6, 0, 0, 0]}]}, "items[1].vector"),
    ]
    for name, body, field in cases:
        response = await service.call("POST", f"/v1/collections/{name}/embeddings", json=body)
        refused = problem(response, 422, "ValidationError")
        assert field in str(refused.get("field")) + refused["detail"], (body, refused)
    assert await _count(service) == 0
    assert await _count(service, name="halves") == 0
    for bad in (
        {"vector": [1.0, 2.0]},
        {"vector": nan, "encoding": "float32"},
        {"vector": [1.0] * DIM, "limit": 0},
        {"vector": [1.0] * DIM, "filter": {"metadata.n": {"$regex": "x"}}},
        {"vector": [1.0] * DIM, "filter": {"$or": "x"}},
    ):
        response = await service.call("POST", "/v1/collections/notes/search", json=bad)
        problem(response, 422, "ValidationError")
    response = await service.call(
        "POST",
        "/v1/collections/notes/search/batch",
        json={"queries": [{"vector": [1.0] * DIM}, {"vector": [1.0] * DIM, "limit": -1}]},
    )
    assert "queries[1]" in problem(response, 422, "ValidationError")["detail"]
    problem(
        await service.call("POST", "/v1/collections/nothing/embeddings", json={"items": [good]}),
        404,
        "NotFound",
    )
    problem(
        await service.call(
            "POST", "/v1/collections/notes/embeddings", role="read-only", json={"items": [good]}
        ),
        403,
        "PermissionDenied",
    )
    assert await _count(service) == 0


async def test_another_tenants_embeddings_are_404_and_never_found(service: Service) -> None:
    await _collection(service)
    mine = await service.call(
        "POST",
        "/v1/collections/notes/embeddings",
        json={"items": [_item(0, id="shared-id", metadata={"owner": TENANT}), _item(1)]},
    )
    ids = mine.json()["ids"]
    for embedding_id in ids:
        problem(
            await service.call(
                "GET", f"/v1/collections/notes/embeddings/{embedding_id}", tenant=OTHER
            ),
            404,
            "NotFound",
        )
        problem(
            await service.call(
                "DELETE", f"/v1/collections/notes/embeddings/{embedding_id}", tenant=OTHER
            ),
            404,
            "NotFound",
        )
    bulk = await service.call(
        "POST", "/v1/collections/notes/embeddings/delete", tenant=OTHER, json={"ids": ids}
    )
    assert bulk.json() == {"deleted": 0}
    wiped = await service.call(
        "POST", "/v1/collections/notes/embeddings/delete", tenant=OTHER, json={"filter": {}}
    )
    assert wiped.json() == {"deleted": 0}
    # The same id in the other tenant is its own embedding; storing it replaces nothing of ours.
    theirs = await service.call(
        "POST",
        "/v1/collections/notes/embeddings",
        tenant=OTHER,
        json={"items": [_item(2, id="shared-id", metadata={"owner": OTHER})]},
    )
    assert theirs.json()["ids"] == ["shared-id"]
    got = await service.call("GET", "/v1/collections/notes/embeddings/shared-id")
    assert got.json()["metadata"] == {"owner": TENANT}
    for path, body in (
        ("search", {"vector": _item(0)["vector"], "limit": 10, "exact": True}),
        ("search/hybrid", {"text": "x", "vector": _item(0)["vector"], "limit": 10}),
        ("search/batch", {"queries": [{"vector": _item(0)["vector"], "limit": 10}]}),
    ):
        response = await service.call(
            "POST", f"/v1/collections/notes/{path}", tenant=OTHER, json=body
        )
        assert response.status_code == 200, response.text
        text = response.text
        assert TENANT not in text
        assert "d0" not in text
        assert "d1" not in text
    found = await service.call(
        "POST", "/v1/collections/notes/search", tenant=OTHER, json={"vector": _item(0)["vector"]}
    )
    assert [h["metadata"]["owner"] for h in found.json()["items"]] == [OTHER]
    described = await service.call("GET", "/v1/collections/notes", tenant=OTHER)
    assert described.json()["rows"] == 1
    assert await _count(service) == 2


async def test_drop_collection_for_a_sole_tenant_in_the_library(dl: DataLayer) -> None:
    admin = dl.admin
    await admin.create_collection("shared", DIM)
    await dl.tenant(OTHER).embeddings.collection("shared").store(_item(0))
    with pytest.raises(Conflict):
        await admin.drop_collection("shared", sole_tenant=TENANT)
    with pytest.raises(ValidationError):
        await admin.drop_collection("shared", sole_tenant="not a tenant!")
    assert await dl.tenant(OTHER).embeddings.collection("shared").count() == 1
    await admin.drop_collection("shared", sole_tenant=OTHER)
    assert await admin.list_collections() == []
