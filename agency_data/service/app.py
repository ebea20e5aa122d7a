"""The HTTP API as an ASGI app: :func:`create_app` over a connected :class:`DataLayer`.

Litestar on uvicorn: Litestar answered 1.6x the requests of FastAPI on the same server in our
measurement (a pydantic record behind a header dependency, 64 connections, one core each for
server and load), and generates the OpenAPI 3.1 document from the handlers' types.

Usage::

    async with DataLayer(config) as dl:
        app = create_app(dl)            # serve it with any ASGI server; `agency-data serve` does
"""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Litestar, Request, Response, Router
from litestar._openapi.utils import default_operation_id_creator
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from agency_data import __version__
from agency_data.config import ServiceConfig
from agency_data.manager import DataLayer
from agency_data.service.auth import Authenticator, RateLimiter
from agency_data.service.gate import ServiceState, gate
from agency_data.service.openapi import finish_document
from agency_data.service.problems import problem_response
from agency_data.service.routes import PUBLIC_PATHS, ROUTERS
from agency_data.service.telemetry import ServiceTelemetry

__all__ = ["create_app", "document_of", "openapi_document"]


def create_app(dl: DataLayer, config: ServiceConfig | None = None) -> Litestar:
    """The service's ASGI app over ``dl`` (connected; closing it stays the caller's job).
    ``config`` defaults to ``dl.config.service``."""
    settings = dl.config.service if config is None else config
    telemetry = ServiceTelemetry()
    state = ServiceState(
        dl=dl,
        config=settings,
        authenticator=Authenticator(dl.admin.api_keys, settings),
        limiter=RateLimiter(dl.scripts, settings),
        telemetry=telemetry,
    )
    app = _build(settings, telemetry)
    app.state.service = state
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service (what ``openapi.json`` holds)."""
    return document_of(_build(ServiceConfig(), ServiceTelemetry()))


def document_of(app: Litestar) -> dict[str, Any]:
    """``app``'s OpenAPI document, errors described (see :mod:`agency_data.service.openapi`)."""
    return finish_document(app.openapi_schema.to_schema(), PUBLIC_PATHS)


def _build(settings: ServiceConfig, telemetry: ServiceTelemetry) -> Litestar:
    return Litestar(
        route_handlers=ROUTERS,
        middleware=[telemetry.middleware, gate],
        exception_handlers={Exception: _problem},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="agency-data",
            version=__version__,
            description="The data layer for multi-agent AI systems, over HTTP. Errors are RFC 9457 "
            "problem details whose `code` names the library's exception.",
            # /schema/openapi.json (errors described) and /schema, a page to browse it.
            openapi_router=Router("/schema", route_handlers=[], opt={"public": True}),
            render_plugins=[_Document(path="/openapi.json"), ScalarRenderPlugin(path="/")],
            operation_id_creator=_operation_id,
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An API key (`agency-data keys create`), or a JWT when "
                        "service.jwks_url is set",
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
    )


def _problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem_response(request, exc)


class _Document(JsonRenderPlugin):
    """Serves the finished document (errors described) rather than the framework's draft."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        state: ServiceState = request.app.state.service
        # Made on first request: a fifth of a second that a service starting need not pay.
        if state.document is None:
            state.document = document_of(request.app)
        return orjson.dumps(state.document)


def _operation_id(handler: Any, method: Any, path: Any) -> str:
    # The handler's own name (getAgent in a generated client); the framework's for its own.
    name: str = handler.handler_name
    return default_operation_id_creator(handler, method, path) if name.startswith("_") else name
