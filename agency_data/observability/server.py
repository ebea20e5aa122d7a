"""``/metrics`` over HTTP: prometheus_client's own server, on the layer's registry.

It runs in a daemon thread (prometheus_client's WSGI server), so a scrape never waits on the
event loop; the gauges that need a query come from the sampler's latest sample, which the
DataLayer keeps fresh in the background while an endpoint is open. It listens on 127.0.0.1
unless told otherwise: the metrics name collections and task types.
"""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from agency_data.errors import ConfigError
from agency_data.inputs import check_int, check_text

__all__ = ["MetricsEndpoint", "serve"]


class MetricsEndpoint:
    """A running ``/metrics`` endpoint; :meth:`aclose` stops it (the DataLayer does on close)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """Where to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def aclose(self) -> None:
        """Stop serving and wait for the server's thread to end."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(registry: CollectorRegistry, port: int, host: str) -> MetricsEndpoint:
    """Serve ``registry`` at ``http://host:port/metrics`` (port 0 picks a free one)."""
    check_int(port, "port", 0, 65535)
    check_text(host, "host", max_length=255)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (UnicodeError, ValueError) as exc:
        raise ConfigError(
            f"cannot serve metrics on host {host!r}: {exc}; give an address or host name",
            field="host",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
            "choose another port (or host)",
            field="port",
        ) from None
    return MetricsEndpoint(server, thread, host)
