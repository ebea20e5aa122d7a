"""The service's own metrics: requests by route and status, and how long they took."""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agency_data.errors import AgencyDataError
from agency_data.service.problems import status_of

__all__ = ["ServiceTelemetry"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0)


class ServiceTelemetry:
    """Counts and times every response (``agency_data_http_*``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agency_data_http_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "agency_data_http_request_seconds",
            "Time from a request's arrival to its response's first byte, by method and route",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def text(self) -> str:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry).decode()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap ``app`` so each HTTP response is counted and timed."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            route = scope.get("path_template", "unmatched")
            method = scope.get("method", "GET")

            def record(status: int) -> None:
                self.seconds.labels(method, route).observe(time.perf_counter() - start)
                self.requests.labels(method, route, str(status)).inc()

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    record(message["status"])
                await send(message)

            try:
                await app(scope, receive, sending)
            except AgencyDataError as exc:
                # Refused before the route ran (no key, a rate limit): answered further out.
                record(status_of(type(exc)))
                raise

        return timed
