"""The middleware every ``/v1`` request passes: who calls, its rate, its actor, its time limit.

It runs after routing, so it knows the route: a route whose ``opt`` has ``stream=True`` (Server-
Sent Events, WebSockets) is not timed, and the public routes (health, readiness, metrics, the
OpenAPI document) skip it. Errors raised here reach the same problem-details handlers as the
routes' own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from agency_data.actor import acting_as
from agency_data.config import ServiceConfig
from agency_data.errors import RequestTimeout
from agency_data.manager import DataLayer
from agency_data.service.auth import Authenticator, RateLimiter
from agency_data.service.telemetry import ServiceTelemetry

__all__ = ["ServiceState", "gate"]


@dataclass
class ServiceState:
    """What the routes share: the data layer, settings, key checker, limiter and metrics."""

    dl: DataLayer
    config: ServiceConfig
    authenticator: Authenticator
    limiter: RateLimiter
    telemetry: ServiceTelemetry
    document: dict[str, Any] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server begins to stop: long polls end at once, with nothing taken."""


def gate(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` (a route's handler) in authentication, rate limiting and its time limit."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        opt: dict[str, Any] = getattr(handler, "opt", {}) or {}
        if opt.get("public") or scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await app(scope, receive, send)
            return
        state: ServiceState = scope["litestar_app"].state.service
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        principal = await state.authenticator.authenticate(headers)
        await state.limiter.check(principal)
        scope["user"] = principal
        with acting_as(principal.name):
            if opt.get("stream") or scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            await _timed(app, scope, receive, send, state.config.request_timeout)

    return middleware


async def _timed(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: float) -> None:
    started = False

    async def sending(message: Message) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        async with asyncio.timeout(limit):
            await app(scope, receive, sending)
    except TimeoutError:
        if started:
            raise  # the response is half sent: only closing the connection tells the client
        raise RequestTimeout(
            f"the request ran past service.request_timeout ({limit:g} s) and was ended; what it "
            "had begun in a transaction was rolled back",
            limit=limit,
        ) from None
