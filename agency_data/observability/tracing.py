"""OpenTelemetry spans for the layer's operations, and the trace context carried in the SQL.

Only ``opentelemetry-api`` is used (the ``otel`` extra); the application chooses the SDK and
its exporters. Tracing is on when the API is installed and a tracer provider has been set
when the DataLayer connects; otherwise nothing here runs.

Spans follow the database semantic conventions: ``db.system.name``, ``db.operation.name``,
``db.collection.name``, ``db.namespace``, ``server.address`` and ``server.port``; never a
parameter value. The statements an operation sends carry its span's ``traceparent`` as a
sqlcommenter comment, so a statement in PostgreSQL's log (or ``pg_stat_statements``) leads
back to its trace.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Endpoint", "Tracing", "find_tracing", "traceparent"]

try:
    from opentelemetry import trace
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Endpoint:
    """Where a backend is, for spans: never a password."""

    address: str | None = None
    port: int | None = None
    namespace: str | None = None


class Tracing:
    """Opens the layer's spans through an OpenTelemetry tracer."""

    def __init__(self, tracer: Any, endpoints: dict[str, Endpoint]) -> None:
        self._tracer = tracer
        self._endpoints = endpoints
        self._kind = trace.SpanKind.CLIENT

    @asynccontextmanager
    async def span(
        self, system: str, operation: str, collection: str, tenant: str | None
    ) -> AsyncIterator[Any]:
        """A span for one operation, current for the code inside (and its statements)."""
        attributes: dict[str, Any] = {"db.system.name": system, "db.operation.name": operation}
        if collection:
            attributes["db.collection.name"] = collection
        if (endpoint := self._endpoints.get(system)) is not None:
            if endpoint.address is not None:
                attributes["server.address"] = endpoint.address
            if endpoint.port is not None:
                attributes["server.port"] = endpoint.port
            if endpoint.namespace is not None:
                attributes["db.namespace"] = endpoint.namespace
        if tenant is not None:
            attributes["agency_data.tenant"] = tenant
        with self._tracer.start_as_current_span(
            f"{operation} {collection}" if collection else operation,
            kind=self._kind,
            attributes=attributes,
        ) as span:
            yield span


def find_tracing(enabled: bool, endpoints: dict[str, Endpoint]) -> Tracing | None:
    """A :class:`Tracing` if ``enabled``, OpenTelemetry is installed and a provider is set."""
    if not enabled or trace is None:
        return None
    provider = trace.get_tracer_provider()
    # Without an SDK provider every span would be a no-op: skip them, and their cost, entirely.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    try:
        version = importlib.metadata.version("agency-data")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return Tracing(provider.get_tracer("agency_data", version), endpoints)


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, if one is recording."""
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
