"""``/v1/agents``: register, read, change, list and delete agents."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field

from agency_data.models import Agent, AgentStatus
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant

__all__ = ["AgentsController"]


class NewAgent(BaseModel):
    """An agent to register."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    capabilities: dict[str, Any] = Field(default_factory=dict)
    status: AgentStatus = AgentStatus.ACTIVE


class AgentChanges(BaseModel):
    """The fields to change; ``expected_version`` makes the change conditional."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    type: str | None = Field(default=None, min_length=1, max_length=100)
    capabilities: dict[str, Any] | None = None
    status: AgentStatus | None = None
    expected_version: int | None = Field(default=None, ge=1)


class AgentPage(BaseModel):
    """One page of agents; pass ``next_cursor`` as ``cursor`` for the next (null: no more)."""

    items: list[Agent]
    next_cursor: str | None = None


class AgentsController(Controller):
    """Agents of the caller's tenant."""

    path = "/v1/agents"
    tags = ["agents"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/", guards=[writes], summary="Register an agent")
    async def create_agent(self, tenant: Tenant, data: JSONBody[NewAgent]) -> Agent:
        """Register an agent and return it."""
        return await tenant.agents.create(data.name, data.type, data.capabilities, data.status)

    @get("/{agent_id:uuid}", guards=[reads], summary="Get an agent")
    async def get_agent(self, tenant: Tenant, agent_id: FromPath[UUID]) -> Agent:
        """The agent with ``agent_id``."""
        return await tenant.agents.get(agent_id)

    @patch("/{agent_id:uuid}", guards=[writes], summary="Change an agent")
    async def update_agent(
        self, tenant: Tenant, agent_id: FromPath[UUID], data: JSONBody[AgentChanges]
    ) -> Agent:
        """Change the given fields only; with ``expected_version``, only if it still holds."""
        fields = data.model_dump(exclude_unset=True, exclude={"expected_version"})
        fields = {k: v for k, v in fields.items() if v is not None}
        return await tenant.agents.update(
            agent_id, expected_version=data.expected_version, **fields
        )

    @delete("/{agent_id:uuid}", guards=[writes], summary="Delete an agent")
    async def delete_agent(self, tenant: Tenant, agent_id: FromPath[UUID]) -> None:
        """Delete the agent; its tasks stay, with no agent."""
        await tenant.agents.delete(agent_id)

    @get("/", guards=[reads], summary="List agents")
    async def list_agents(
        self,
        tenant: Tenant,
        type: Annotated[list[str] | None, QueryParameter(description="agent types")] = None,
        status: Annotated[list[AgentStatus] | None, QueryParameter(description="statuses")] = None,
        name_contains: Annotated[str | None, QueryParameter(max_length=200)] = None,
        has_capabilities: Annotated[
            list[str] | None, QueryParameter(description="capability names all present")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=1000)] = None,
    ) -> AgentPage:
        """Agents in creation order, filtered; follow ``next_cursor`` for the next page."""
        page = await tenant.agents.list(
            type=type,
            status=status,
            name_contains=name_contains,
            has_capabilities=has_capabilities,
            limit=limit,
            cursor=cursor,
        )
        return AgentPage(items=page.items, next_cursor=page.next_cursor)
