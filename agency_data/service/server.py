"""Running the service: uvicorn on the caller's event loop, over one DataLayer.

:func:`running` serves until its block ends (``agency-data serve`` ends it on SIGINT or
SIGTERM; tests and programs that embed the service end it as they please). The socket is bound before uvicorn
starts, so port 0 works and the real port is known at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from litestar import Litestar

from agency_data.config import ServiceConfig
from agency_data.errors import ConfigError
from agency_data.manager import DataLayer
from agency_data.service.app import create_app

__all__ = ["RunningService", "running"]


@dataclass(frozen=True)
class RunningService:
    """A service that is up: where it listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextlib.asynccontextmanager
async def running(
    dl: DataLayer, config: ServiceConfig | None = None
) -> AsyncIterator[RunningService]:
    """Serve ``dl`` over HTTP on ``config.host``/``port`` (default ``dl.config.service``)
    while the block runs; stop, letting requests in flight finish, when it ends."""
    settings = dl.config.service if config is None else config
    app = create_app(dl, settings)
    server = uvicorn.Server(_uvicorn_config(app))
    sock = _bind(settings.host, settings.port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # uvicorn's own error, if it failed to start
                raise ConfigError("the HTTP server stopped before it started", field="service")
            await asyncio.sleep(0.01)
        yield RunningService(settings.host, sock.getsockname()[1])
    finally:
        # Long polls answer at once (nothing taken), so that stopping waits for none of them.
        app.state.service.stopping.set()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def _uvicorn_config(app: Litestar) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",  # the DataLayer is opened and closed by the caller
        log_level="warning",
        access_log=False,
        # Enough for a thousand clients connecting at once on loopback.
        backlog=4096,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the service cannot listen on {host}:{port}: {exc.strerror}; pick another "
            "service.port (or --port)",
            field="service.port",
        ) from None
    sock.set_inheritable(True)
    return sock
