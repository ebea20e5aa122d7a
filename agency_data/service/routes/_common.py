"""What every resource module uses: the caller's tenant view, and the service's state."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide

from agency_data.scope import TenantScope
from agency_data.service.auth import Principal
from agency_data.service.gate import ServiceState

__all__ = ["SCOPE", "Tenant", "principal_of", "state_of"]


def state_of(request: Request[Any, Any, Any]) -> ServiceState:
    """The service's shared state."""
    state: ServiceState = request.app.state.service
    return state


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """Who made ``request`` (the gate has checked it)."""
    principal = request.scope.get("user")
    assert isinstance(principal, Principal)
    return principal


async def _tenant_scope(request: Request[Any, Any, Any]) -> TenantScope:
    return state_of(request).dl.tenant(principal_of(request).tenant)


SCOPE = {"tenant": Provide(_tenant_scope)}
"""Dependencies giving a handler ``tenant: TenantScope``: the caller's view of the data layer."""

Tenant = NamedDependency[TenantScope]
"""A handler's ``tenant: Tenant`` parameter: the caller's view of the data layer (needs
``dependencies = SCOPE`` on the controller)."""
