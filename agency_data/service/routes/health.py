"""``/health`` (the process answers), ``/ready`` (its servers do) and ``/metrics``.

These need no API key, so they say nothing of any tenant: ``/ready`` reports each server's
status only. ``/metrics`` (the layer's metrics and the service's own) names collections and
task types of every tenant, so it answers only the bearer of ``service.metrics_token`` or,
when none is set, a client on this machine's loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Literal

from litestar import Request, Response, get
from pydantic import BaseModel

from agency_data.errors import AuthenticationFailed, BackendUnavailable
from agency_data.service.routes._common import state_of

__all__ = ["ROUTES"]

_PUBLIC = {"public": True}


class Liveness(BaseModel):
    """The service process is up."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The service can serve: ``ok``, or ``degraded`` (Redis is down); whether each server is up."""

    status: Literal["ok", "degraded"]
    components: dict[str, bool]


@get("/health", opt=_PUBLIC, tags=["service"], summary="Liveness")
async def health() -> Liveness:
    """The process answers; nothing else is checked."""
    return Liveness()


@get("/ready", opt=_PUBLIC, tags=["service"], summary="Readiness")
async def ready(request: Request[Any, Any, Any]) -> Readiness:
    """PostgreSQL and Redis answer: ``ok``, or ``degraded`` when only Redis is down; a 503
    problem when PostgreSQL is."""
    status = await state_of(request).dl.health(timeout=2.0)
    if status.status == "down":
        raise BackendUnavailable(
            "PostgreSQL does not answer: the service cannot serve", backend="postgresql"
        )
    return Readiness(
        status=status.status, components={k: v.up for k, v in status.components.items()}
    )


@get(
    "/metrics", opt=_PUBLIC, tags=["service"], summary="Prometheus metrics", media_type="text/plain"
)
async def metrics(request: Request[Any, Any, Any]) -> Response[str]:
    """The layer's and the service's metrics in Prometheus' text format."""
    state = state_of(request)
    token = state.config.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            raise AuthenticationFailed("/metrics needs 'Authorization: Bearer <metrics_token>'")
    elif not _loopback(request):
        raise AuthenticationFailed(
            "/metrics answers only loopback clients unless service.metrics_token is set"
        )
    text = await state.dl.metrics_text() + state.telemetry.text()
    # The framework adds the charset.
    return Response(text, media_type="text/plain; version=0.0.4")


def _loopback(request: Request[Any, Any, Any]) -> bool:
    client = request.client
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False


ROUTES = [health, ready, metrics]
