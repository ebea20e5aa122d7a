"""What every tenant's task store of one DataLayer shares: wake-ups, leases, defaults."""

from __future__ import annotations

import time

from agency_data.config import TasksConfig
from agency_data.postgres.database import Database
from agency_data.tasks._sql import Defaults
from agency_data.tasks.leases import LeaseKeeper
from agency_data.tasks.wakeups import TaskWakeups

__all__ = ["TaskRuntime"]


class TaskRuntime:
    """The task queue's process-wide parts, made by the DataLayer and closed with it."""

    def __init__(self, db: Database, config: TasksConfig, wakeups: TaskWakeups | None) -> None:
        self.config = config
        self.defaults = Defaults(
            lease_seconds=config.lease_seconds,
            max_attempts=config.max_attempts,
            retry_first=config.retry_first,
            retry_most=config.retry_most,
            retry_jitter=config.retry_jitter,
        )
        self.wakeups = wakeups
        self.leases = LeaseKeeper(db, self.defaults)
        self._last_rescue: dict[str, float] = {}

    def rescue_due(self, tenant: str) -> bool:
        """Whether this claim should also rescue expired leases (and note that it does)."""
        now = time.monotonic()
        if now - self._last_rescue.get(tenant, float("-inf")) < self.config.rescue_interval:
            return False
        self._last_rescue[tenant] = now
        return True

    async def aclose(self) -> None:
        """Stop heartbeats and the wake-up listener."""
        await self.leases.aclose()
        if self.wakeups is not None:
            await self.wakeups.aclose()
