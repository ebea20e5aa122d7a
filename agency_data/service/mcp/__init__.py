"""The MCP server (``agency-data mcp``): memory, tasks, sessions and locks as MCP tools, and
collections and the task queue as resources, each call run as its API key's tenant.

Usage::

    async with DataLayer(config) as dl:
        key = await key_from_env(dl)      # AGENCY_DATA_API_KEY, checked now and at every call
        await serve_stdio(dl, key)

    async with DataLayer(config) as dl, running(dl) as where:   # streamable HTTP
        ...  # clients post to f"{where.url}/mcp" with "Authorization: Bearer <key>"
"""

from agency_data.service.mcp.server import (
    KEY_ENV,
    MCP_PATH,
    build_server,
    key_from_env,
    running,
    serve_stdio,
)

__all__ = ["KEY_ENV", "MCP_PATH", "build_server", "key_from_env", "running", "serve_stdio"]
