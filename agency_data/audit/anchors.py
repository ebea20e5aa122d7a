"""Periodic anchors: every chain's head written to the log and to the metrics.

A chain proves on its own that no record was edited or removed, unless whoever edited it
also recomputed every hash after the edit (the owner role could). An anchor kept outside
the database (a log line shipped elsewhere, a metric in Prometheus) closes that gap:
``audit verify --anchor SEQ:HASH`` fails when the record an anchor names no longer has that
hash. ``audit.anchor_interval`` takes one every so many seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from agency_data.audit.trail import Anchor, anchors

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = ["AnchorLog"]

_log = logging.getLogger("agency_data.audit")


class AnchorLog:
    """Takes anchors of every chain the owner role sees, logs them and exports them."""

    def __init__(self, db: Database, interval: float, *, by_tenant: bool = False) -> None:
        self._db = db
        self.interval = interval
        # Tenant names as label values only when monitoring.tenant_labels allows them.
        self._by_tenant = by_tenant
        self.latest: list[Anchor] = []
        self.taken_at: float | None = None
        self._loop: asyncio.Task[None] | None = None
        # Set before the loop is cancelled (see Sealer: a cancellation may come out as an
        # error of the round it interrupted).
        self._stopping = False

    async def take(self) -> list[Anchor]:
        """Read every chain's head now, log each as an anchor, keep them for the metrics."""
        taken = await anchors(self._db)
        for anchor in taken:
            _log.info(
                "audit anchor: tenant %s, record %s, hash %s",
                anchor.tenant,
                anchor.seq,
                anchor.hash,
            )
        self.latest = taken
        self.taken_at = time.time()
        return taken

    def start(self) -> None:
        """Take an anchor now and every ``interval`` seconds, in the background."""
        if self._loop is None and self.interval > 0:
            self._loop = asyncio.create_task(self._run_forever(), name="agency-data-anchors")

    async def _run_forever(self) -> None:
        while not self._stopping:
            try:
                await self.take()
            except Exception:  # noqa: BLE001 - the next round may succeed; logged
                if self._stopping:
                    return
                _log.exception("taking audit anchors failed")
            await asyncio.sleep(self.interval)

    def families(self) -> Iterator[Metric]:
        """``agency_data_audit_records`` (chain lengths) and the time of the last anchor."""
        if self.taken_at is None:
            return
        records = GaugeMetricFamily(
            "agency_data_audit_records",
            "Records in the audit chains at the last anchor (by tenant with tenant labels on).",
            labels=["tenant"] if self._by_tenant else [],
        )
        if self._by_tenant:
            for anchor in self.latest:
                records.add_metric([anchor.tenant], anchor.seq)
        else:
            records.add_metric([], sum(anchor.seq for anchor in self.latest))
        yield records
        yield GaugeMetricFamily(
            "agency_data_audit_anchor_timestamp_seconds",
            "When the audit chains' heads were last logged as anchors (Unix time).",
            value=self.taken_at,
        )

    async def aclose(self) -> None:
        """Stop taking anchors."""
        loop, self._loop = self._loop, None
        if loop is not None:
            self._stopping = True
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
