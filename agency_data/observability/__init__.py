"""Observability: metrics, traces, the slow-query log, alerts and the recall probe.

- :mod:`.instrument`: the :func:`observed` decorator and :class:`Telemetry` the stores record into;
- :mod:`.metrics`: the DataLayer's Prometheus registry and what it exposes;
- :mod:`.sampler`: the gauges that need a query (tasks, indexes, backends, disk, the outbox
  and the change feed);
- :mod:`.tracing`: OpenTelemetry spans (the ``otel`` extra), :mod:`.cursor`: the trace context
  in SQL and the slow-query timing, :mod:`.slowlog`: its redacted JSON lines;
- :mod:`.server`: ``/metrics`` over HTTP; :mod:`.statements`: ``pg_stat_statements``.

Only the instruments are imported here: the stores need them, and the rest imports the stores'
plumbing.
"""

from agency_data.observability.instrument import Operation, Telemetry, observed

__all__ = ["Operation", "Telemetry", "observed"]
