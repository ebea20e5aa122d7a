"""``/v1/sessions``: agents' sessions (JSON documents in Redis with a sliding expiry)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import BaseModel, ConfigDict, Field

from agency_data.models import Session
from agency_data.service.auth import reads, writes
from agency_data.service.routes._common import SCOPE, Tenant

__all__ = ["SessionsController"]

# A session lives at most 30 days after its last touch (the library's bound).
_MAX_TTL = 30 * 24 * 3600


class NewSession(BaseModel):
    """A session to open for ``agent_id``, expiring ``ttl`` seconds after its last touch."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, max_length=1024)
    data: dict[str, Any] | None = None
    ttl: float | None = Field(None, gt=0, le=_MAX_TTL)


class SessionChanges(BaseModel):
    """New data: merged into the old by top-level key, or replacing it (``merge: false``)."""

    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any]
    merge: bool = True


class Touch(BaseModel):
    """A new time to live, from now (default: the session's own)."""

    model_config = ConfigDict(extra="forbid")

    ttl: float | None = Field(None, gt=0, le=_MAX_TTL)


class SessionList(BaseModel):
    """An agent's live sessions, oldest first."""

    items: list[Session]


class SessionsController(Controller):
    """Sessions of the caller's tenant."""

    path = "/v1/sessions"
    tags = ["sessions"]  # noqa: RUF012 - the framework reads a plain class attribute
    dependencies = SCOPE

    @post("/", guards=[writes], summary="Open a session")
    async def create_session(self, tenant: Tenant, data: JSONBody[NewSession]) -> Session:
        """Open a session; it expires ``ttl`` seconds after its last touch."""
        return await tenant.sessions.create(data.agent_id, data.data, data.ttl)

    @get("/{session_id:str}", guards=[reads], summary="Get a session")
    async def get_session(self, tenant: Tenant, session_id: FromPath[str]) -> Session:
        """The live session (404 once it expired or was deleted)."""
        return await tenant.sessions.get(session_id)

    @patch("/{session_id:str}", guards=[writes], summary="Change a session's data")
    async def update_session(
        self, tenant: Tenant, session_id: FromPath[str], data: JSONBody[SessionChanges]
    ) -> Session:
        """Change the data (which also slides the expiry)."""
        return await tenant.sessions.update(session_id, data.data, merge=data.merge)

    @post("/{session_id:str}/touch", guards=[writes], status_code=200, summary="Touch a session")
    async def touch_session(
        self, tenant: Tenant, session_id: FromPath[str], data: JSONBody[Touch | None] = None
    ) -> Session:
        """Push the expiry out to ``ttl`` seconds from now."""
        return await tenant.sessions.touch(session_id, None if data is None else data.ttl)

    @delete("/{session_id:str}", guards=[writes], summary="End a session")
    async def delete_session(self, tenant: Tenant, session_id: FromPath[str]) -> None:
        """End the session."""
        await tenant.sessions.delete(session_id)

    @get("/", guards=[reads], summary="List an agent's sessions")
    async def list_sessions(
        self,
        tenant: Tenant,
        agent_id: Annotated[str, QueryParameter(min_length=1, max_length=1024)],
    ) -> SessionList:
        """The agent's live sessions, oldest first."""
        return SessionList(items=await tenant.sessions.list_by_agent(agent_id))
