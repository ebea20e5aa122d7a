"""The DataLayer's observability methods, kept apart from its lifecycle (see manager.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from agency_data.observability.alerts import Alert, Alerts
from agency_data.observability.metrics import Metrics
from agency_data.observability.monitor import Monitor
from agency_data.observability.server import MetricsEndpoint

__all__ = ["MonitoringMethods"]


class MonitoringMethods(ABC):
    """Metrics, alerts and the recall probe of a :class:`~agency_data.DataLayer`."""

    _monitor: Monitor

    @abstractmethod
    def _check_connected(self) -> None:
        """Raise the not-connected error when the layer is not connected."""

    @property
    def metrics(self) -> Metrics:
        """The Prometheus registry of this DataLayer (``dl.metrics.registry``).

        Register ``dl.metrics.collector`` in another registry to expose the layer's metrics
        from an app's own endpoint; :meth:`metrics_text` and :meth:`serve_metrics` are the
        ready-made ways.
        """
        return self._monitor.metrics

    async def metrics_text(self) -> str:
        """Every metric in Prometheus's text format, with the sampled gauges fresh."""
        self._check_connected()
        return await self._monitor.text()

    async def serve_metrics(self, port: int = 9464, host: str = "127.0.0.1") -> MetricsEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) until ``aclose()``.

        Listens on the loopback interface unless ``host`` says otherwise.
        """
        self._check_connected()
        return await self._monitor.serve(port, host)

    @property
    def alerts(self) -> Alerts:
        """The alert rules evaluated in process: ``dl.alerts.on(callback)``, ``.firing()``.

        See :mod:`agency_data.observability.alerts`; bounds in ``monitoring.alerts``.
        """
        return self._monitor.alerts

    async def check_alerts(self) -> list[Alert]:
        """Sample and evaluate the alert rules now (they also run every monitoring.interval).

        Returns the alerts that started firing or resolved in this round.
        """
        self._check_connected()
        return await self._monitor.check()

    async def probe_recall(self) -> dict[str, float]:
        """Run the index-quality probe now: estimated recall by collection (see
        :mod:`agency_data.observability.recall`); it also runs every recall_interval."""
        self._check_connected()
        return await self._monitor.probe_recall()
