"""Who calls an MCP tool, what its key may do, and library errors as MCP errors.

Over stdio the process has one key (``AGENCY_DATA_API_KEY``), checked at start and again at
every call, so a revoked key stops working at its next call as it does over HTTP. Over streamable
HTTP each request carries ``Authorization: Bearer <key>``: the SDK's bearer middleware asks
:class:`KeyVerifier`, which checks it as the HTTP API does (API keys, or JWTs when
``service.jwks_url`` is set), and the SDK hands the result to the tool through a context
variable (:func:`get_access_token`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver.exceptions import (
    MCPServerError,
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)

from agency_data.actor import acting_as
from agency_data.config import ServiceConfig
from agency_data.errors import AgencyDataError, AuthenticationFailed, NotFound
from agency_data.manager import DataLayer
from agency_data.scope import TenantScope
from agency_data.security.api_keys import ApiKeyRole
from agency_data.service.auth import Authenticator, Principal, RateLimiter

__all__ = ["READ", "WRITE", "Access", "KeyVerifier"]

_log = logging.getLogger("agency_data.service.mcp")

READ = ApiKeyRole.READ_ONLY
WRITE = ApiKeyRole.READ_WRITE


@dataclass(frozen=True)
class Access:
    """The data layer the tools call, the transport's one key (stdio) and how it is checked,
    and the per-key rate limits (``service.rate_limit``) the HTTP API applies too."""

    dl: DataLayer
    config: ServiceConfig
    key: str | None = None
    authenticator: Authenticator | None = None
    limiter: RateLimiter | None = None

    async def caller(self) -> Principal:
        """The principal of the call being handled."""
        token = get_access_token()
        if token is not None:
            return principal_of(token)
        if self.key is not None and self.authenticator is not None:
            try:
                return await self.authenticator.authenticate({"x-api-key": self.key})
            except AgencyDataError as exc:
                raise ToolError(str(exc)) from None
        # Unreachable behind the SDK's bearer middleware; refused rather than run as nobody.
        raise ToolError("this call carries no API key: send 'Authorization: Bearer <API key>'")

    @asynccontextmanager
    async def tool(self, needs: ApiKeyRole) -> AsyncIterator[TenantScope]:
        """``async with access.tool(WRITE) as tenant:`` the caller's tenant view, its key's name
        as the audit actor; a library error leaves as a tool error carrying its message."""
        async with self._scope(needs, resource=False) as tenant:
            yield tenant

    @asynccontextmanager
    async def resource(self, needs: ApiKeyRole = READ) -> AsyncIterator[TenantScope]:
        """As :meth:`tool` for reading a resource (any key, unless ``needs`` says)."""
        async with self._scope(needs, resource=True) as tenant:
            yield tenant

    @asynccontextmanager
    async def _scope(self, needs: ApiKeyRole, *, resource: bool) -> AsyncIterator[TenantScope]:
        principal = await self.caller()
        if not principal.role.allows(needs):
            message = (
                f"this needs {needs.article} key; the key {principal.key_id} is "
                f"{principal.role.value}"
            )
            raise ResourceError(message) if resource else ToolError(message)
        limit = self.config.request_timeout
        try:
            if self.limiter is not None:
                await self.limiter.check(principal)
            # The HTTP API's time limit, for MCP calls alike (their waits end before it).
            async with asyncio.timeout(limit):
                with acting_as(principal.name):
                    yield self.dl.tenant(principal.tenant)
        except MCPServerError:
            raise
        except TimeoutError:
            message = (
                f"the call ran past service.request_timeout ({limit:g} s) and was ended; what "
                "it had begun in a transaction was rolled back"
            )
            raise ResourceError(message) if resource else ToolError(message) from None
        except AgencyDataError as exc:
            # The message is written for the caller; the traceback stays here.
            _log.info("MCP call refused: %s", exc)
            if not resource:
                raise ToolError(str(exc)) from None
            if isinstance(exc, NotFound):
                raise ResourceNotFoundError(str(exc)) from None
            raise ResourceError(str(exc)) from None


def principal_of(token: AccessToken) -> Principal:
    """The principal :class:`KeyVerifier` put in ``token``."""
    claims = token.claims or {}
    return Principal(
        tenant=str(claims["tenant"]),
        role=ApiKeyRole(claims["role"]),
        name=str(claims["name"]),
        key_id=token.client_id,
    )


class KeyVerifier:
    """The SDK's token verifier over the service's :class:`Authenticator`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def verify_token(self, token: str) -> AccessToken | None:
        """The access of ``token``, or None (the SDK answers 401) if it is not valid."""
        try:
            principal = await self._authenticator.authenticate({"authorization": f"Bearer {token}"})
        except AuthenticationFailed:
            return None
        except AgencyDataError as exc:
            # PostgreSQL or the identity provider down: the caller is refused, and we say why.
            _log.warning("an MCP request's key could not be checked: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=principal.key_id,
            scopes=[principal.role.value],
            subject=principal.name,
            claims={
                "tenant": principal.tenant,
                "role": principal.role.value,
                "name": principal.name,
            },
        )
