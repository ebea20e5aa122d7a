"""The service's gate: keys, roles, tenants, rate limits, sizes and time limits."""

from __future__ import annotations

import uuid

import pytest

from agency_data.errors import AuthenticationFailed, ValidationError
from agency_data.security.api_keys import parse_key
from tests.service_support import OTHER, TENANT, Service, problem

pytestmark = pytest.mark.timeout(120)


async def test_no_key_wrong_key_and_revoked_key_are_401_and_change_nothing(
    service: Service,
) -> None:
    body = {"name": "a", "type": "planner"}
    problem(await service.client.post("/v1/agents", json=body), 401, "AuthenticationFailed")
    for bad in ("nonsense", "adk_", "adk_YWNtZQ.0000000000000000.x", "Basic abc"):
        response = await service.client.post(
            "/v1/agents", json=body, headers={"Authorization": f"Bearer {bad}"}
        )
        problem(response, 401, "AuthenticationFailed")
    key, secret = await service.dl.admin.api_keys.create(TENANT, "read-write", name="short")
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await service.client.post("/v1/agents", json=body, headers=headers)).status_code == 201
    await service.dl.admin.api_keys.revoke(key.id)
    problem(
        await service.client.post("/v1/agents", json=body, headers=headers),
        401,
        "AuthenticationFailed",
    )
    assert (await service.dl.tenant(TENANT).agents.count()) == 1


async def test_a_key_whose_tenant_part_is_changed_is_refused(service: Service) -> None:
    tenant, _, _ = parse_key(service.keys[(TENANT, "admin")])
    assert tenant == TENANT
    forged = service.keys[(TENANT, "admin")].replace("adk_YWNtZQ", "adk_Z2xvYmV4", 1)
    response = await service.client.get("/v1/agents", headers={"Authorization": f"Bearer {forged}"})
    problem(response, 401, "AuthenticationFailed")


async def test_read_only_key_cannot_write(service: Service) -> None:
    response = await service.call(
        "POST", "/v1/agents", role="read-only", json={"name": "a", "type": "t"}
    )
    body = problem(response, 403, "PermissionDenied")
    assert "read-write" in str(body["detail"])
    assert (await service.dl.tenant(TENANT).agents.count()) == 0
    assert (await service.call("GET", "/v1/agents", role="read-only")).status_code == 200


async def test_another_tenants_ids_are_404(service: Service) -> None:
    created = await service.call("POST", "/v1/agents", json={"name": "a", "type": "t"})
    agent_id = created.json()["id"]
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"name": "b"}}), ("DELETE", {})):
        response = await service.call(method, f"/v1/agents/{agent_id}", tenant=OTHER, **kwargs)
        problem(response, 404, "NotFound")
    assert (await service.dl.tenant(TENANT).agents.get(agent_id)).name == "a"
    listed = await service.call("GET", "/v1/agents", tenant=OTHER)
    assert listed.json()["items"] == []


async def test_x_api_key_header_works_too(service: Service) -> None:
    response = await service.client.get(
        "/v1/agents", headers={"X-API-Key": service.keys[(TENANT, "read-only")]}
    )
    assert response.status_code == 200


async def test_the_audit_actor_is_the_keys_name(service: Service) -> None:
    await service.dl.admin.audit("agents")
    await service.call("POST", "/v1/agents", json={"name": "a", "type": "t"})
    records = await service.dl.tenant(TENANT).audit.show(entity_type="agents")
    assert [r.actor for r in records] == [f"{TENANT}-read-write"]


async def test_unknown_routes_and_bad_bodies_are_problems(service: Service) -> None:
    problem(await service.call("GET", "/v1/nothing"), 404, "NotFound")
    problem(await service.call("GET", f"/v1/agents/{uuid.uuid4()}"), 404, "NotFound")
    problem(await service.call("POST", "/v1/agents", json={"name": 5}), 422, "ValidationError")
    problem(
        await service.call(
            "POST", "/v1/agents", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "ValidationError",
    )


def test_parse_key_refuses_what_is_not_a_key() -> None:
    for bad in (None, 5, "", "adk_", "adk_x.y.z", "adk_" + "a" * 300, "adk_!!.0123456789abcdef.s"):
        with pytest.raises(AuthenticationFailed):
            parse_key(bad)


async def test_create_refuses_bad_input(service: Service) -> None:
    keys = service.dl.admin.api_keys
    for kwargs in (
        {"tenant": "", "role": "admin"},
        {"tenant": "a", "role": "root"},
        {"tenant": "a", "role": "admin", "name": " "},
        {"tenant": "a", "role": "admin", "expires_in": float("nan")},
        {"tenant": "a", "role": "admin", "expires_in": 0},
    ):
        with pytest.raises(ValidationError):
            await keys.create(**kwargs)  # type: ignore[arg-type]


async def test_a_body_field_named_like_a_dependency_is_a_422(service: Service) -> None:
    # "tenant" is also the handlers' dependency: the framework took the error for its own.
    response = await service.call(
        "POST", "/v1/agents", json={"name": "x", "type": "t", "tenant": OTHER}
    )
    body = problem(response, 422, "ValidationError")
    assert body["field"] == "tenant"
    assert await service.dl.tenant(OTHER).agents.count() == 0
    assert await service.dl.tenant(TENANT).agents.count() == 0
