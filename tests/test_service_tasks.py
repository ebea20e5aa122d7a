"""``/v1/tasks`` end to end through the running service: the queue, leases, long polls."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agency_data.config import ServiceConfig
from tests.service_support import OTHER, TENANT, Service, problem, service_on

pytestmark = pytest.mark.timeout(120)


async def _agent(service: Service, tenant: str = TENANT) -> str:
    made = await service.call("POST", "/v1/agents", tenant=tenant, json={"name": "w", "type": "t"})
    assert made.status_code == 201, made.text
    agent_id: str = made.json()["id"]
    return agent_id


async def test_a_task_runs_through_a_waiting_claim_a_heartbeat_and_completion(
    service: Service,
) -> None:
    agent = await _agent(service)
    started = time.monotonic()
    claiming = asyncio.create_task(
        service.call(
            "POST", "/v1/tasks/claim", json={"agent_id": agent, "types": ["summarize"], "wait": 20}
        )
    )
    await asyncio.sleep(0.2)
    assert not claiming.done()
    created = await service.call(
        "POST", "/v1/tasks", json={"type": "summarize", "data": {"doc": 7}, "priority": 5}
    )
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["status"] == "pending"
    assert task["lease_token"] is None
    claimed = await claiming
    assert claimed.status_code == 200, claimed.text
    # The wait ended when the task came in, not when the 20 seconds were up.
    assert time.monotonic() - started < 10
    (item,) = claimed.json()["items"]
    assert item["id"] == task["id"]
    assert item["status"] == "running"
    assert item["agent_id"] == agent
    token = item["lease_token"]
    assert token is not None
    beat = await service.call(
        "POST",
        f"/v1/tasks/{task['id']}/heartbeat",
        json={"lease_token": token, "lease_seconds": 120},
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["lease_expires_at"] > item["lease_expires_at"]
    done = await service.call(
        "POST", f"/v1/tasks/{task['id']}/complete", json={"lease_token": token, "result": [1, 2]}
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert done.json()["result"] == [1, 2]
    read = (await service.call("GET", f"/v1/tasks/{task['id']}", role="read-only")).json()
    assert read["status"] == "completed"
    assert read["lease_token"] is None  # only a claim's answer carries the token


async def test_a_stale_lease_token_is_409_and_changes_nothing(service: Service) -> None:
    agent = await _agent(service)
    task = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    claimed = await service.call("POST", "/v1/tasks/claim", json={"agent_id": agent})
    (item,) = claimed.json()["items"]
    stale = str(uuid.uuid4())
    path = f"/v1/tasks/{task['id']}"
    for action, body in (
        ("complete", {"lease_token": stale, "result": "x"}),
        ("fail", {"lease_token": stale, "error": "boom"}),
        ("heartbeat", {"lease_token": stale}),
    ):
        refused = problem(
            await service.call("POST", f"{path}/{action}", json=body), 409, "LeaseLost"
        )
        assert refused["task_id"] == task["id"]
    now = await service.dl.tenant(TENANT).tasks.get(task["id"])
    assert now.status == "running"
    assert now.result is None
    assert now.error is None
    assert now.attempts == 1
    await service.dl.tenant(TENANT).tasks.check(task["id"], lease_token=item["lease_token"])
    # The holder's own token still works after all that.
    done = await service.call("POST", f"{path}/complete", json={"lease_token": item["lease_token"]})
    assert done.json()["status"] == "completed"
    # And once done, the token is no longer a lease: a late failure is refused.
    late = await service.call(
        "POST", f"{path}/fail", json={"lease_token": item["lease_token"], "error": "late"}
    )
    assert late.status_code in (409, 422), late.text
    assert (await service.dl.tenant(TENANT).tasks.get(task["id"])).status == "completed"


async def test_fail_retry_cancel_delete_and_the_admin_override(service: Service) -> None:
    agent = await _agent(service)
    once = (await service.call("POST", "/v1/tasks", json={"type": "t", "max_attempts": 1})).json()
    (item,) = (await service.call("POST", "/v1/tasks/claim", json={"agent_id": agent})).json()[
        "items"
    ]
    failed = await service.call(
        "POST",
        f"/v1/tasks/{once['id']}/fail",
        json={"lease_token": item["lease_token"], "error": "no luck", "traceback": "tb"},
    )
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "dead"  # its only attempt
    assert failed.json()["error"] == "no luck"
    retried = await service.call("POST", f"/v1/tasks/{once['id']}/retry")
    assert retried.json()["status"] == "pending"
    (item,) = (await service.call("POST", "/v1/tasks/claim", json={"agent_id": agent})).json()[
        "items"
    ]
    # Without the token: refused to a read-write key, the operator's override for an admin.
    problem(
        await service.call("POST", f"/v1/tasks/{once['id']}/complete", json={"result": 1}),
        422,
        "ValidationError",
    )
    assert (await service.dl.tenant(TENANT).tasks.get(once["id"])).status == "running"
    forced = await service.call(
        "POST", f"/v1/tasks/{once['id']}/complete", role="admin", json={"result": "by hand"}
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["result"] == "by hand"
    # The worker that held it finds out.
    problem(
        await service.call(
            "POST", f"/v1/tasks/{once['id']}/heartbeat", json={"lease_token": item["lease_token"]}
        ),
        409,
        "LeaseLost",
    )
    problem(await service.call("POST", f"/v1/tasks/{once['id']}/retry"), 422, "ValidationError")

    other = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    (held,) = (await service.call("POST", "/v1/tasks/claim", json={"agent_id": agent})).json()[
        "items"
    ]
    admin_failed = await service.call(
        "POST", f"/v1/tasks/{other['id']}/fail", role="admin", json={"error": "x", "retry": False}
    )
    assert admin_failed.json()["status"] == "failed"
    assert held["id"] == other["id"]

    pending = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    cancelled = await service.call(
        "POST", f"/v1/tasks/{pending['id']}/cancel", json={"reason": "not needed"}
    )
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"] == "not needed"
    problem(await service.call("POST", f"/v1/tasks/{pending['id']}/cancel"), 422, "ValidationError")
    bare = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    assert (await service.call("POST", f"/v1/tasks/{bare['id']}/cancel")).status_code == 200
    assert (await service.call("DELETE", f"/v1/tasks/{bare['id']}")).status_code == 204
    problem(await service.call("GET", f"/v1/tasks/{bare['id']}"), 404, "NotFound")


async def test_batches_lists_search_and_stats(service: Service) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    batch = await service.call(
        "POST",
        "/v1/tasks/batch",
        json={
            "tasks": [
                {
                    "id": second,
                    "type": "report",
                    "data": {"topic": "otters"},
                    "depends_on": [first],
                },
                {"id": first, "type": "research", "data": {"topic": "otters"}, "priority": 9},
                {"type": "research", "data": {"topic": "beavers"}, "key": "beavers"},
            ]
        },
    )
    assert batch.status_code == 201, batch.text
    items = batch.json()["items"]
    assert [t["id"] for t in items[:2]] == [second, first]
    assert items[0]["blocked_by"] == 1
    # A key already live returns the live task.
    again = await service.call("POST", "/v1/tasks", json={"type": "research", "key": "beavers"})
    assert again.json()["id"] == items[2]["id"]
    conflict = await service.call(
        "POST", "/v1/tasks", json={"type": "research", "key": "beavers", "on_conflict": "raise"}
    )
    problem(conflict, 409, "Conflict")

    listed = await service.call(
        "GET",
        "/v1/tasks",
        role="read-only",
        params={"type": "research", "data_contains": '{"topic": "otters"}'},
    )
    assert [t["id"] for t in listed.json()["items"]] == [first]
    pages: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, "status": ["pending"]}
        if cursor:
            params["cursor"] = cursor
        page = (await service.call("GET", "/v1/tasks", params=params)).json()
        pages += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(pages) == sorted(t["id"] for t in items)
    high = await service.call("GET", "/v1/tasks", params={"priority_min": 5})
    assert [t["id"] for t in high.json()["items"]] == [first]

    found = await service.call("GET", "/v1/tasks/search", params={"text": "beavers"})
    assert [t["id"] for t in found.json()["items"]] == [items[2]["id"]]
    stats = await service.call("GET", "/v1/tasks/stats", role="read-only")
    assert stats.status_code == 200, stats.text
    assert stats.json()["counts"]["pending"] == {"report": 1, "research": 2}
    assert stats.json()["blocked"] == 1


async def test_bad_inputs_are_problems_and_write_nothing(service: Service) -> None:
    agent = await _agent(service)
    for body in (
        {},
        {"type": ""},
        {"type": "t", "priority": 2000},
        {"type": "t", "tenant_id": OTHER},
        {"type": "t", "data": [1]},
        {"type": "t", "run_at": "2030-01-01T00:00:00"},  # no time zone
        {"type": "t", "run_at": "2030-01-01T00:00:00Z", "delay": 5},
        {"type": "t", "max_attempts": 0},
        {"type": "t", "on_conflict": "ignore"},
        {"type": "t", "depends_on": ["not-a-uuid"]},
    ):
        problem(await service.call("POST", "/v1/tasks", json=body), 422, "ValidationError")
    problem(
        await service.call(
            "POST", "/v1/tasks", json={"type": "t", "depends_on": [str(uuid.uuid4())]}
        ),
        404,
        "NotFound",
    )
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    cycle = {
        "tasks": [
            {"id": a, "type": "t", "depends_on": [b]},
            {"id": b, "type": "t", "depends_on": [a]},
        ]
    }
    for body in (cycle, {"tasks": []}, {"tasks": [{"type": "t"}, {"type": ""}]}):
        problem(await service.call("POST", "/v1/tasks/batch", json=body), 422, "ValidationError")
    for body in (
        {},
        {"agent_id": agent, "n": 0},
        {"agent_id": agent, "wait": -1},
        {"agent_id": agent, "wait": 4000},
        {"agent_id": agent, "lease_seconds": 0},
        {"agent_id": agent, "types": []},
        {"agent_id": "nobody"},
    ):
        problem(await service.call("POST", "/v1/tasks/claim", json=body), 422, "ValidationError")
    problem(
        await service.call("POST", "/v1/tasks/claim", json={"agent_id": str(uuid.uuid4())}),
        404,
        "NotFound",
    )
    for params in (
        {"data_contains": "[1]"},
        {"data_contains": "{"},
        {"status": "sleeping"},
        {"limit": 0},
        {"created_after": "yesterday"},
        {"cursor": "garbage"},
    ):
        problem(await service.call("GET", "/v1/tasks", params=params), 422, "ValidationError")
    problem(
        await service.call("GET", "/v1/tasks/search", params={"text": ""}), 422, "ValidationError"
    )
    problem(await service.call("GET", "/v1/tasks/not-a-uuid"), 404, "NotFound")
    missing = f"/v1/tasks/{uuid.uuid4()}"
    problem(await service.call("GET", missing), 404, "NotFound")
    problem(
        await service.call("POST", f"{missing}/complete", json={"lease_token": str(uuid.uuid4())}),
        404,
        "NotFound",
    )
    problem(
        await service.call("POST", f"{missing}/fail", json={"lease_token": str(uuid.uuid4())}),
        422,
        "ValidationError",  # no error given
    )
    assert await service.dl.tenant(TENANT).tasks.count() == 0


async def test_another_tenants_tasks_are_404_and_unchanged(service: Service) -> None:
    agent = await _agent(service)
    task = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    (item,) = (await service.call("POST", "/v1/tasks/claim", json={"agent_id": agent})).json()[
        "items"
    ]
    token = item["lease_token"]
    path = f"/v1/tasks/{task['id']}"
    for method, suffix, body in (
        ("GET", "", None),
        ("POST", "/complete", {"lease_token": token}),
        ("POST", "/fail", {"lease_token": token, "error": "x"}),
        ("POST", "/heartbeat", {"lease_token": token}),
        ("POST", "/cancel", {}),
        ("POST", "/retry", None),
        ("DELETE", "", None),
    ):
        for role in ("read-write", "admin"):
            response = await service.call(method, path + suffix, tenant=OTHER, role=role, json=body)
            problem(response, 404, "NotFound")
    problem(
        await service.call("POST", f"{path}/complete", tenant=OTHER, role="admin", json={}),
        404,
        "NotFound",
    )
    # Claiming for this tenant's agent is claiming for an agent the other tenant lacks.
    problem(
        await service.call("POST", "/v1/tasks/claim", tenant=OTHER, json={"agent_id": agent}),
        404,
        "NotFound",
    )
    await service.call("POST", "/v1/tasks", json={"type": "t"})
    theirs = await _agent(service, OTHER)
    empty = await service.call("POST", "/v1/tasks/claim", tenant=OTHER, json={"agent_id": theirs})
    assert empty.json()["items"] == []
    assert (await service.call("GET", "/v1/tasks", tenant=OTHER)).json()["items"] == []
    found = await service.call("GET", "/v1/tasks/search", tenant=OTHER, params={"text": "t"})
    assert found.json()["items"] == []
    now = await service.dl.tenant(TENANT).tasks.get(task["id"])
    assert now.status == "running"
    await service.dl.tenant(TENANT).tasks.check(task["id"], lease_token=token)


async def test_a_read_only_key_cannot_queue_claim_or_finish(service: Service) -> None:
    agent = await _agent(service)
    task = (await service.call("POST", "/v1/tasks", json={"type": "t"})).json()
    path = f"/v1/tasks/{task['id']}"
    token = str(uuid.uuid4())
    for method, target, body in (
        ("POST", "/v1/tasks", {"type": "t"}),
        ("POST", "/v1/tasks/batch", {"tasks": [{"type": "t"}]}),
        ("POST", "/v1/tasks/claim", {"agent_id": agent}),
        ("POST", f"{path}/complete", {"lease_token": token}),
        ("POST", f"{path}/fail", {"lease_token": token, "error": "x"}),
        ("POST", f"{path}/heartbeat", {"lease_token": token}),
        ("POST", f"{path}/cancel", {}),
        ("POST", f"{path}/retry", None),
        ("DELETE", path, None),
    ):
        response = await service.call(method, target, role="read-only", json=body)
        problem(response, 403, "PermissionDenied")
    assert await service.dl.tenant(TENANT).tasks.count() == 1
    assert (await service.dl.tenant(TENANT).tasks.get(task["id"])).status == "pending"
    assert (await service.call("GET", path, role="read-only")).status_code == 200


async def test_a_client_that_leaves_a_waiting_claim_leaves_no_task_leased(
    service: Service,
) -> None:
    agent = await _agent(service)
    body = {"agent_id": agent, "types": ["job"], "wait": 20}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(service.call("POST", "/v1/tasks/claim", json=body), 0.3)
    # Had the server gone on waiting, it would take this task for a client that is gone.
    task = (await service.call("POST", "/v1/tasks", json={"type": "job"})).json()
    await asyncio.sleep(0.5)
    now = await service.dl.tenant(TENANT).tasks.get(task["id"])
    assert now.status == "pending"
    assert now.attempts == 0
    # The next claim gets it, on its first attempt.
    (item,) = (await service.call("POST", "/v1/tasks/claim", json=body)).json()["items"]
    assert item["id"] == task["id"]
    assert item["attempts"] == 1


async def test_a_long_poll_ends_before_the_request_timeout(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    config = ServiceConfig(port=0, request_timeout=1.5)
    async with service_on(database, redis_url, tmp_path, config) as service:
        agent = await _agent(service)
        started = time.monotonic()
        response = await service.call(
            "POST", "/v1/tasks/claim", json={"agent_id": agent, "wait": 60}
        )
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []
        assert time.monotonic() - started < 1.5
