"""The MCP server over one DataLayer, on stdio (one key, checked at start) or streamable HTTP
(a key per request)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from agency_data import __version__
from agency_data.config import ServiceConfig
from agency_data.errors import AuthenticationFailed, ConfigError
from agency_data.manager import DataLayer
from agency_data.service.auth import Authenticator, RateLimiter
from agency_data.service.mcp._access import Access, KeyVerifier
from agency_data.service.mcp.memory import add_memory_tools
from agency_data.service.mcp.resources import add_resources
from agency_data.service.mcp.work import add_work_tools
from agency_data.service.server import RunningService, _bind

__all__ = ["KEY_ENV", "MCP_PATH", "build_server", "key_from_env", "running", "serve_stdio"]

KEY_ENV = "AGENCY_DATA_API_KEY"
"""The environment variable holding the API key of ``agency-data mcp`` on stdio."""

MCP_PATH = "/mcp"
"""Where the streamable HTTP endpoint is."""

_INSTRUCTIONS = (
    "agency-data: agent memory (remember, recall, forget; the knowledge graph's neighbours and "
    "paths), a task queue (submit_task, claim_task, heartbeat_task, complete_task, fail_task), "
    "sessions (get_session, set_session) and locks (acquire_lock, release_lock), all within "
    "the tenant of your API key. Resources describe the collections and the queue."
)


def build_server(
    dl: DataLayer,
    *,
    key: str | None = None,
    auth: AuthSettings | None = None,
    config: ServiceConfig | None = None,
) -> MCPServer[Any]:
    """The MCP server over ``dl``: its calls run as ``key`` (stdio; checked at each call) or
    as the bearer key of each request (HTTP, ``auth`` given). ``config`` (default ``dl.config.service``)
    sets the rate limits and the longest waits."""
    settings = dl.config.service if config is None else config
    authenticator = Authenticator(dl.admin.api_keys, settings)
    verifier = None if auth is None else KeyVerifier(authenticator)
    server: MCPServer[Any] = MCPServer(
        "agency-data",
        version=__version__,
        instructions=_INSTRUCTIONS,
        token_verifier=verifier,
        auth=auth,
        log_level="WARNING",
    )
    # dl.scripts is None without Redis; the limiter then lets everything through.
    limiter = RateLimiter(dl.scripts, settings)
    access = Access(dl, settings, key, authenticator, limiter)
    add_memory_tools(server, access)
    add_work_tools(server, access)
    add_resources(server, access)
    return server


async def key_from_env(dl: DataLayer) -> str:
    """The key in ``AGENCY_DATA_API_KEY``, checked; :class:`AuthenticationFailed` if there is
    none or it is not valid."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise AuthenticationFailed(
            f"the MCP server runs as an API key, and {KEY_ENV} holds none: make one with "
            "`agency-data keys create --tenant T --role R` and set it"
        )
    authenticator = Authenticator(dl.admin.api_keys, dl.config.service)
    await authenticator.authenticate({"x-api-key": key})
    return key


async def serve_stdio(dl: DataLayer, key: str) -> None:
    """Serve MCP on stdin and stdout as the API key ``key`` until stdin closes."""
    await build_server(dl, key=key).run_stdio_async()


@contextlib.asynccontextmanager
async def running(
    dl: DataLayer, config: ServiceConfig | None = None
) -> AsyncIterator[RunningService]:
    """Serve MCP over streamable HTTP at ``MCP_PATH`` on ``config.host``/``port`` (default
    ``dl.config.service``) while the block runs."""
    settings = dl.config.service if config is None else config
    sock = _bind(settings.host, settings.port)
    where = RunningService(settings.host, sock.getsockname()[1])
    # Only the bearer check is used: no OAuth routes are served, so the issuer is nominal.
    auth = AuthSettings(
        issuer_url=settings.jwt_issuer or where.url,
        resource_server_url=None,
    )
    app = build_server(dl, auth=auth, config=settings).streamable_http_app(
        streamable_http_path=MCP_PATH,
        host=settings.host,
        max_request_body_size=settings.max_body_bytes,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",  # the SDK's session manager lives in the app's lifespan
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise ConfigError("the MCP server stopped before it started", field="service")
            await asyncio.sleep(0.01)
        yield where
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
