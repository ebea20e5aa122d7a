"""The index-quality probe: a live estimate of each collection's ANN recall.

A share (``monitoring.recall_sample_rate``) of ``find_similar`` calls is kept, the most recent
``monitoring.recall_samples`` per collection and tenant. Every ``monitoring.recall_interval``
seconds the probe replays them through the index (with the settings they used) and exactly,
and publishes the share of true neighbours the index found as
``agency_data_vector_recall_estimate{collection}``. An index that drifts (an IVFFlat index
whose lists no longer fit the data after heavy inserts, an HNSW ``ef_search`` set too low)
shows up there, and as the ``AgencyDataVectorRecallLow`` alert, before users notice.

Exact searches read every row of a tenant's collection: on a large collection keep the
samples few or the interval long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from agency_data.errors import AgencyDataError, NotFound
from agency_data.observability.instrument import ProbeQuery, Telemetry

__all__ = ["Measurable", "RecallProbe"]

_log = logging.getLogger("agency_data.observability")


class Measurable(Protocol):
    """What the probe needs of a collection."""

    async def measure_recall(
        self,
        queries: Iterable[Mapping[str, Any]],
        *,
        ef_search: int | None = None,
        probes: int | None = None,
    ) -> float | None:
        """Recall of the index for ``queries`` (see ``Collection.measure_recall``)."""
        ...


class RecallProbe:
    """Replays the kept searches and updates the telemetry's recall estimates."""

    def __init__(self, telemetry: Telemetry, lookup: Callable[[str, str], Measurable]) -> None:
        self._telemetry = telemetry
        self._lookup = lookup

    async def run(self) -> dict[str, float]:
        """Probe every collection with kept searches now; the estimates by collection."""
        telemetry = self._telemetry
        totals: dict[str, tuple[float, int]] = {}
        gone: set[str] = set()
        for (name, tenant), kept in list(telemetry.probe_queries.items()):
            groups: dict[tuple[int | None, int | None], list[ProbeQuery]] = {}
            for query in list(kept):
                groups.setdefault((query.ef_search, query.probes), []).append(query)
            for (ef_search, probes), queries in groups.items():
                try:
                    recall = await self._lookup(name, tenant).measure_recall(
                        [
                            {"vector": q.vector, "limit": q.limit, "filter": q.filter}
                            for q in queries
                        ],
                        ef_search=ef_search,
                        probes=probes,
                    )
                except NotFound:
                    gone.add(name)
                    break
                except AgencyDataError as exc:
                    _log.warning("the recall probe of %r failed: %s", name, exc)
                    continue
                if recall is not None:
                    total, count = totals.get(name, (0.0, 0))
                    totals[name] = (total + recall * len(queries), count + len(queries))
        for name in gone:
            # A dropped collection: forget its searches and its estimate.
            for key in [k for k in telemetry.probe_queries if k[0] == name]:
                del telemetry.probe_queries[key]
            telemetry.recall.pop(name, None)
        estimates = {name: total / count for name, (total, count) in totals.items() if count}
        telemetry.recall.update(estimates)
        return estimates
