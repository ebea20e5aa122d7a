"""Tenant isolation: no call through one tenant's view reads or writes another's rows."""

from __future__ import annotations

import pytest

from agency_data import DataLayer, NotFound, ValidationError


async def test_tenants_never_see_each_other(dl: DataLayer) -> None:
    acme, globex = dl.tenant("acme"), dl.tenant("globex")
    assert dl.tenant("acme") is acme
    a_agent = await acme.agents.create(name="shared-name", type="t", capabilities={"k": 1})
    b_agent = await globex.agents.create(name="shared-name", type="t", capabilities={"k": 1})
    a_task = await acme.tasks.create(type="job", data={"doc": "acme planning"}, agent_id=a_agent.id)
    await globex.tasks.create(type="job", data={"doc": "globex planning"})

    # Reads.
    assert [a.id for a in (await acme.agents.list()).items] == [a_agent.id]
    assert await acme.agents.count(capabilities={"k": 1}) == 1
    assert {a.id for a in await acme.agents.get_many([a_agent.id, b_agent.id])} == {a_agent.id}
    with pytest.raises(NotFound):
        await acme.agents.get(b_agent.id)
    with pytest.raises(NotFound):
        await globex.tasks.get(a_task.id)
    assert [t.data["doc"] for t in await acme.tasks.search("planning")] == ["acme planning"]
    assert await globex.tasks.count(agent_id=a_agent.id) == 0
    assert await globex.tasks.get_many([a_task.id]) == []
    assert await dl.agents.count() == 0  # the default tenant is a tenant too

    # Writes.
    with pytest.raises(NotFound):
        await globex.agents.update(a_agent.id, name="stolen")
    with pytest.raises(NotFound):
        await globex.agents.delete(a_agent.id)
    with pytest.raises(NotFound):
        await globex.tasks.cancel(a_task.id)
    with pytest.raises(NotFound):
        await globex.tasks.delete(a_task.id)
    # A task cannot name another tenant's agent, nor be claimed by one.
    with pytest.raises(NotFound, match="does not exist in tenant"):
        await globex.tasks.create(type="job", agent_id=a_agent.id)
    with pytest.raises(NotFound):
        await globex.tasks.claim(a_agent.id)
    claimed = await acme.tasks.claim(a_agent.id, n=10)
    assert [t.id for t in claimed] == [a_task.id]

    assert (await acme.agents.get(a_agent.id)).name == "shared-name"
    assert await globex.tasks.count(status="pending") == 1


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, "acme'; --", "../etc"])
async def test_bad_tenant_ids_are_refused(dl: DataLayer, tenant: str) -> None:
    with pytest.raises(ValidationError) as info:
        dl.tenant(tenant)
    assert info.value.field == "tenant_id"
