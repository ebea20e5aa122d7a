"""``/v1/sessions``, ``/v1/locks`` and ``/v1/cache`` end to end through the running service."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from tests.service_support import OTHER, TENANT, Service, problem

pytestmark = pytest.mark.timeout(120)


# -- sessions ----------------------------------------------------------------------------------


async def test_a_session_is_opened_changed_touched_listed_and_ended(service: Service) -> None:
    made = await service.call(
        "POST", "/v1/sessions", json={"agent_id": "planner-1", "data": {"step": 1}, "ttl": 60}
    )
    assert made.status_code == 201, made.text
    session = made.json()
    assert session["data"] == {"step": 1}
    assert session["ttl"] == 60
    path = f"/v1/sessions/{session['id']}"
    assert (await service.call("GET", path, role="read-only")).json()["data"] == {"step": 1}
    merged = await service.call("PATCH", path, json={"data": {"goal": "x"}})
    assert merged.json()["data"] == {"step": 1, "goal": "x"}
    replaced = await service.call("PATCH", path, json={"data": {"only": True}, "merge": False})
    assert replaced.json()["data"] == {"only": True}
    touched = await service.call("POST", f"{path}/touch", json={"ttl": 600})
    assert touched.status_code == 200, touched.text
    assert touched.json()["ttl"] == 600
    assert touched.json()["expires_at"] > replaced.json()["expires_at"]
    again = await service.call("POST", f"{path}/touch")
    assert again.json()["ttl"] == 600
    second = (await service.call("POST", "/v1/sessions", json={"agent_id": "planner-1"})).json()
    listed = await service.call(
        "GET", "/v1/sessions", role="read-only", params={"agent_id": "planner-1"}
    )
    assert [s["id"] for s in listed.json()["items"]] == [session["id"], second["id"]]
    assert (await service.call("DELETE", path)).status_code == 204
    problem(await service.call("GET", path), 404, "NotFound")
    problem(await service.call("DELETE", path), 404, "NotFound")
    listed = await service.call("GET", "/v1/sessions", params={"agent_id": "planner-1"})
    assert [s["id"] for s in listed.json()["items"]] == [second["id"]]


async def test_sessions_refuse_bad_input_other_tenants_and_read_only_keys(
    service: Service,
) -> None:
    for body in (
        {},
        {"agent_id": ""},
        {"agent_id": "a", "ttl": 0},
        {"agent_id": "a", "ttl": 10**9},
        {"agent_id": "a", "data": [1]},
        {"agent_id": "a", "tenant_id": OTHER},
    ):
        problem(await service.call("POST", "/v1/sessions", json=body), 422, "ValidationError")
    problem(await service.call("GET", "/v1/sessions"), 422, "ValidationError")
    session = (
        await service.call("POST", "/v1/sessions", json={"agent_id": "a", "data": {"v": 1}})
    ).json()
    path = f"/v1/sessions/{session['id']}"
    for method, suffix, body in (
        ("PATCH", "", {"data": "text"}),
        ("PATCH", "", {}),
        ("POST", "/touch", {"ttl": -1}),
    ):
        problem(await service.call(method, path + suffix, json=body), 422, "ValidationError")
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"data": {"v": 2}}),
        ("POST", "/touch", {}),
        ("DELETE", "", None),
    ):
        response = await service.call(method, path + suffix, tenant=OTHER, json=body)
        problem(response, 404, "NotFound")
        if method != "GET":
            response = await service.call(method, path + suffix, role="read-only", json=body)
            problem(response, 403, "PermissionDenied")
    problem(
        await service.call("POST", "/v1/sessions", role="read-only", json={"agent_id": "a"}),
        403,
        "PermissionDenied",
    )
    listed = await service.call("GET", "/v1/sessions", tenant=OTHER, params={"agent_id": "a"})
    assert listed.json()["items"] == []
    kept = await service.dl.tenant(TENANT).sessions.list_by_agent("a")
    assert [(s.id, s.data) for s in kept] == [(session["id"], {"v": 1})]


# -- locks -------------------------------------------------------------------------------------


async def test_two_clients_contend_for_a_lock_and_only_its_holder_lets_go(
    service: Service,
) -> None:
    first = await service.call("POST", "/v1/locks/report:7", json={"ttl": 30})
    assert first.status_code == 200, first.text
    grant = first.json()
    assert grant["name"] == "report:7"
    assert grant["expires_at"] is not None
    holder = grant["holder"]
    state = await service.call("GET", "/v1/locks/report:7", role="read-only")
    assert state.json() == {"name": "report:7", "locked": True}
    # A second client: refused at once, then waiting until the first lets go.
    problem(await service.call("POST", "/v1/locks/report:7"), 423, "LockNotAcquired")
    waiting = asyncio.create_task(
        service.call("POST", "/v1/locks/report:7", json={"ttl": 30, "wait": 10})
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    # Nobody but the holder releases or extends it: not a stranger of this tenant, nor one
    # of another tenant with the very token.
    stranger = "0" * 32
    for tenant, token in ((TENANT, stranger), (OTHER, holder)):
        problem(
            await service.call(
                "POST", "/v1/locks/report:7/release", tenant=tenant, json={"holder": token}
            ),
            409,
            "LockNotOwned",
        )
        problem(
            await service.call(
                "POST",
                "/v1/locks/report:7/extend",
                tenant=tenant,
                json={"holder": token, "ttl": 100},
            ),
            409,
            "LockNotOwned",
        )
    assert not waiting.done()
    extended = await service.call(
        "POST", "/v1/locks/report:7/extend", json={"holder": holder, "ttl": 60}
    )
    assert extended.status_code == 200, extended.text
    assert extended.json()["expires_at"] > grant["expires_at"]
    released = await service.call("POST", "/v1/locks/report:7/release", json={"holder": holder})
    assert released.status_code == 204, released.text
    second = await waiting
    assert second.status_code == 200, second.text
    assert second.json()["fencing_token"] == grant["fencing_token"] + 1
    assert second.json()["holder"] != holder
    # The first holder's token is spent.
    problem(
        await service.call("POST", "/v1/locks/report:7/release", json={"holder": holder}),
        409,
        "LockNotOwned",
    )
    # Another tenant's lock of the same name is its own.
    theirs = await service.call("POST", "/v1/locks/report:7", tenant=OTHER)
    assert theirs.status_code == 200, theirs.text


async def test_locks_refuse_bad_input_and_read_only_keys(service: Service) -> None:
    for body in ({"ttl": 0}, {"ttl": -1}, {"wait": -1}, {"ttl": 1e12}, {"owner": "me"}):
        problem(await service.call("POST", "/v1/locks/x", json=body), 422, "ValidationError")
    problem(await service.call("POST", f"/v1/locks/{'k' * 1100}"), 422, "ValidationError")
    grant = (await service.call("POST", "/v1/locks/x")).json()
    for action, body in (
        ("release", {}),
        ("release", {"holder": "short"}),
        ("release", {"holder": grant["holder"].upper()}),
        ("extend", {"holder": grant["holder"]}),
        ("extend", {"holder": grant["holder"], "ttl": 0}),
    ):
        problem(
            await service.call("POST", f"/v1/locks/x/{action}", json=body), 422, "ValidationError"
        )
    for target, body in (
        ("/v1/locks/y", {}),
        ("/v1/locks/x/extend", {"holder": grant["holder"], "ttl": 5}),
        ("/v1/locks/x/release", {"holder": grant["holder"]}),
    ):
        problem(
            await service.call("POST", target, role="read-only", json=body),
            403,
            "PermissionDenied",
        )
    assert (await service.call("GET", "/v1/locks/x", role="read-only")).json()["locked"]
    assert not (await service.call("GET", "/v1/locks/y")).json()["locked"]


async def test_a_client_that_leaves_while_waiting_for_a_lock_is_not_granted_it(
    service: Service,
) -> None:
    grant = (await service.call("POST", "/v1/locks/job", json={"ttl": 30})).json()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            service.call("POST", "/v1/locks/job", json={"ttl": 30, "wait": 10}), 0.3
        )
    await asyncio.sleep(0.1)
    await service.call("POST", "/v1/locks/job/release", json={"holder": grant["holder"]})
    # Had the server gone on waiting, the departed client would hold it now, for 30 s.
    await asyncio.sleep(0.5)
    assert not (await service.call("GET", "/v1/locks/job")).json()["locked"]
    assert (await service.call("POST", "/v1/locks/job")).status_code == 200


# -- cache -------------------------------------------------------------------------------------


async def test_cache_entries_are_set_read_and_invalidated(service: Service) -> None:
    key = "users/42 héllo?x=1"
    path = f"/v1/cache/entries/{quote(key, safe='')}"
    put = await service.call(
        "PUT", path, json={"value": {"name": "Ada"}, "ttl": 60, "tags": ["users"]}
    )
    assert put.status_code == 204, put.text
    read = await service.call("GET", path, role="read-only")
    assert read.json() == {"key": key, "namespace": "default", "value": {"name": "Ada"}}
    await service.call("PUT", "/v1/cache/entries/null-value", json={"value": None})
    assert (await service.call("GET", "/v1/cache/entries/null-value")).json()["value"] is None
    problem(await service.call("GET", "/v1/cache/entries/absent"), 404, "NotFound")
    # Namespaces are apart.
    await service.call("PUT", "/v1/cache/entries/k", params={"namespace": "n1"}, json={"value": 1})
    problem(await service.call("GET", "/v1/cache/entries/k"), 404, "NotFound")
    got = await service.call("GET", "/v1/cache/entries/k", params={"namespace": "n1"})
    assert got.json()["value"] == 1
    assert (await service.call("DELETE", path)).status_code == 204
    problem(await service.call("GET", path), 404, "NotFound")
    assert (await service.call("DELETE", path)).status_code == 204

    for name in ("user:1", "user:2", "user*:3", "team:1"):
        await service.call(
            "PUT", f"/v1/cache/entries/{quote(name)}", json={"value": name, "tags": ["t"]}
        )
    removed = await service.call("POST", "/v1/cache/invalidate", json={"prefix": "user*"})
    assert removed.json() == {"removed": 1}
    removed = await service.call("POST", "/v1/cache/invalidate", json={"pattern": "user:*"})
    assert removed.json() == {"removed": 2}
    assert (await service.call("GET", "/v1/cache/entries/team:1")).json()["value"] == "team:1"
    removed = await service.call("POST", "/v1/cache/invalidate", json={"tags": ["t"]})
    # The library counts the tag's members, the three already removed among them.
    assert removed.json()["removed"] >= 1
    problem(await service.call("GET", "/v1/cache/entries/team:1"), 404, "NotFound")


async def test_the_cache_refuses_bad_input_other_tenants_and_read_only_keys(
    service: Service,
) -> None:
    entry = "/v1/cache/entries/k"
    await service.call("PUT", entry, json={"value": "mine", "tags": ["tag"]})
    for params in ({"namespace": "records"}, {"namespace": "bad space"}, {"namespace": ""}):
        problem(await service.call("GET", entry, params=params), 422, "ValidationError")
        problem(
            await service.call("PUT", entry, params=params, json={"value": 1}),
            422,
            "ValidationError",
        )
    for body in (
        {},
        {"value": 1, "ttl": 0},
        {"value": 1, "tags": "tag"},
        {"value": 1, "tags": [""]},
        {"value": 1, "extra": True},
    ):
        problem(await service.call("PUT", entry, json=body), 422, "ValidationError")
    long_key = quote("k" * 1025)
    problem(
        await service.call("PUT", f"/v1/cache/entries/{long_key}", json={"value": 1}),
        422,
        "ValidationError",
    )
    for body in (
        {},
        {"pattern": "a*", "prefix": "a"},
        {"pattern": ""},
        {"tags": []},
        {"pattern": "*", "namespace": "records"},
    ):
        problem(
            await service.call("POST", "/v1/cache/invalidate", json=body), 422, "ValidationError"
        )
    # Another tenant sees none of it and removes none of it, by key, pattern or tag.
    problem(await service.call("GET", entry, tenant=OTHER), 404, "NotFound")
    assert (await service.call("DELETE", entry, tenant=OTHER)).status_code == 204
    for body in ({"pattern": "*"}, {"tags": ["tag"]}, {"prefix": "k"}):
        removed = await service.call("POST", "/v1/cache/invalidate", tenant=OTHER, json=body)
        assert removed.json() == {"removed": 0}
    for method, target, body in (
        ("PUT", entry, {"value": "theirs"}),
        ("DELETE", entry, None),
        ("POST", "/v1/cache/invalidate", {"pattern": "*"}),
    ):
        response = await service.call(method, target, role="read-only", json=body)
        problem(response, 403, "PermissionDenied")
    assert (await service.dl.tenant(TENANT).cache.get("k")) == "mine"
    assert (await service.call("GET", entry, role="read-only")).json()["value"] == "mine"
