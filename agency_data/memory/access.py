"""Recall counts, gathered in memory and written in batches.

A recall that wrote its hits' counts would turn every read into a write. The counts are
summed here instead and written every ``memory.access_flush`` seconds, in one statement per
tenant, and on close. Counts of the last interval are lost if the process dies: they steer
ranking, they are not records.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from agency_data.errors import AgencyDataError
from agency_data.memory._sql import flush_sql
from agency_data.postgres.database import Database
from agency_data.postgres.errors import translate_errors

__all__ = ["AccessLog"]

log = logging.getLogger(__name__)


class AccessLog:
    """The recall counts of one tenant's memories not yet written."""

    def __init__(self, db: Database, tenant: str, interval: float) -> None:
        # Never in a caller's transaction: its rollback would take the counts with it.
        self._db = db.outside_transactions(tenant)
        self._tenant = tenant
        self._interval = interval
        self._pending: dict[str, tuple[int, datetime]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, ids: Iterable[str]) -> None:
        """Count one recall of each of ``ids``."""
        now = datetime.now(UTC)
        pending = self._pending
        for memory_id in ids:
            count, _ = pending.get(memory_id, (0, now))
            pending[memory_id] = (count + 1, now)
        if pending and self._task is None:
            # In a context of its own: a copy of the recall's would carry the caller's
            # transaction, which the timer's write would join (or, ended, reuse the
            # connection of).
            self._task = asyncio.get_running_loop().create_task(
                self._later(), context=contextvars.Context()
            )

    async def _later(self) -> None:
        try:
            await asyncio.sleep(self._interval)
        finally:
            self._task = None
        try:
            await self.flush()
        except AgencyDataError as exc:
            # Counts stay pending (flush put them back) and go with the next recall's flush.
            log.warning("recall counts not written (%s); will try again", exc)

    async def flush(self) -> int:
        """Write the gathered counts now; return how many memories they touched."""
        counts, self._pending = self._pending, {}
        if not counts:
            return 0
        query, params = flush_sql(self._tenant, counts)
        try:
            with translate_errors("writing recall counts"):
                return await self._db.execute(query, params)
        except BaseException:
            for memory_id, (count, at) in counts.items():
                more, later = self._pending.get(memory_id, (0, at))
                self._pending[memory_id] = (count + more, max(at, later))
            raise

    async def aclose(self) -> None:
        """Stop the timer and write what is pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self.flush()
        except AgencyDataError as exc:
            log.warning("recall counts not written at close (%s)", exc)
