"""``agency-data serve`` (the HTTP API), ``agency-data openapi`` (its document) and
``agency-data mcp`` (the MCP server)."""

from __future__ import annotations

import asyncio
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from agency_data.cli._common import ConfigOption, DataDirOption, error, load_config, run_job
from agency_data.manager import DataLayer

__all__ = ["mcp", "openapi", "serve"]


def _service() -> Any:
    try:
        import agency_data.service.server as server
    except ImportError as exc:
        error(
            f"the service needs its extra ({exc.name} is missing): "
            "pip install 'agency-data[service]'"
        )
        raise typer.Exit(2) from None
    return server


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (service.host; 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (service.port; 8700).")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json) until Ctrl-C.

    Prints "ready" and "Service: URL" once it listens. Every /v1 request needs an API key:
    make one with `agency-data keys create --tenant T --role R`.
    """
    server = _service()

    async def job() -> None:
        settings = load_config(config, data_dir)
        service = settings.service.model_copy(
            update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        )
        async with DataLayer(settings) as dl, server.running(dl, service) as running:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            typer.echo("ready")
            typer.echo(f"Service:    {running.url}")
            typer.echo(f"OpenAPI:    {running.url}/schema/openapi.json")
            await stop.wait()
            typer.echo("stopping", err=True)

    run_job(job)


class McpTransport(StrEnum):
    """How ``agency-data mcp`` talks to its client."""

    STDIO = "stdio"
    HTTP = "http"


def mcp(
    transport: Annotated[
        McpTransport,
        typer.Option(help="stdio (one client, the key in AGENCY_DATA_API_KEY) or http."),
    ] = McpTransport.STDIO,
    host: Annotated[
        str | None, typer.Option(help="With http: the address to listen on (service.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="With http: the port (service.port).")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Serve the MCP server: memory, tasks, sessions and locks as tools for a model.

    stdio: runs as the API key in AGENCY_DATA_API_KEY (checked at start; no valid key, no
    server), stdout carrying the protocol only. http: streamable HTTP at /mcp, each request
    with "Authorization: Bearer <key>"; prints "ready" and "MCP: URL" once it listens.
    """
    if transport is McpTransport.STDIO and (host is not None or port is not None):
        raise typer.BadParameter("go with --transport http only", param_hint="'--host/--port'")
    _service()
    from agency_data.service import mcp as server

    async def job() -> None:
        settings = load_config(config, data_dir)
        service = settings.service.model_copy(
            update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        )
        async with DataLayer(settings) as dl:
            if transport is McpTransport.STDIO:
                # Checked before the first message: a client with a bad key learns it at once.
                key = await server.key_from_env(dl)
                await server.serve_stdio(dl, key)
                return
            async with server.running(dl, service) as running:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                typer.echo("ready")
                typer.echo(f"MCP:        {running.url}{server.MCP_PATH}")
                await stop.wait()
                typer.echo("stopping", err=True)

    run_job(job)


def openapi(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the HTTP API's OpenAPI 3.1 document (the repository's openapi.json)."""
    _service()
    from agency_data.service import openapi_document

    text = orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if output is None:
        sys.stdout.write(text.decode() + "\n")
    else:
        output.write_bytes(text + b"\n")
