"""The sealer: chains committed audit records, in the background, in every DataLayer.

Writers only add records to ``audit_pending`` (migration 0010), so auditing never makes two
transactions wait on each other. ``agency_data_audit_seal`` then numbers each tenant's
committed records and links their hashes into ``audit_log``, under the tenant head's row lock,
which a sealer of another process skips rather than waits for. Every DataLayer runs one every
``audit.seal_interval`` seconds, and once more when it closes; a verify or a listing seals its
tenant first, so nothing waits for the next round to be seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = ["Sealer"]

_log = logging.getLogger("agency_data.audit")

# Records chained per call: a round seals in batches this size until none are left.
_BATCH = 10_000
# At close, a sealer down to its last round gives up after this long (the next one seals).
_LAST_ROUND = 2.0


class Sealer:
    """Runs ``agency_data_audit_seal`` every ``interval`` seconds as the owner role."""

    def __init__(self, db: Database, interval: float) -> None:
        self._db = db
        self.interval = interval
        self._loop: asyncio.Task[None] | None = None
        # Set before the loop is cancelled: a cancellation that lands inside a pool checkout
        # can come out as that checkout's own error, which the loop would take for a failed
        # round and go on.
        self._stopping = False

    async def seal(self) -> int:
        """Chain every committed record now; how many were chained."""
        total = 0
        while True:
            sealed = int(
                await self._db.fetch_value("SELECT agency_data_audit_seal(NULL, %s)", [_BATCH])
            )
            total += sealed
            if sealed < _BATCH:
                return total

    def start(self) -> None:
        """Seal every ``interval`` seconds in the background, the first after one interval."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run_forever(), name="agency-data-sealer")

    async def _run_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval)
            try:
                await self.seal()
            except Exception:  # noqa: BLE001 - the next round may succeed; logged
                if self._stopping:
                    return
                _log.exception("sealing the audit trail failed")

    async def aclose(self) -> None:
        """Stop the loop, and seal what this process committed meanwhile (briefly, if at all)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self._stopping = True
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        try:
            await asyncio.wait_for(self.seal(), _LAST_ROUND)
        except Exception:  # noqa: BLE001 - best effort: the next sealer chains them
            _log.debug("the last sealing round did not finish", exc_info=True)
