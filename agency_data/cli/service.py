"""``agency-data serve`` (the HTTP API), ``agency-data openapi`` (its document) and
``agency-data mcp`` (the MCP server)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from agency_data.cli._common import ConfigOption, DataDirOption, error, load_config, run_job
from agency_data.manager import DataLayer

__all__ = ["openapi", "serve"]


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
            typer.echo(f"OpenAPI:    {running.url}/openapi.json")
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
