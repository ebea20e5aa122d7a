"""Per-type policies shared by every process: lease length, attempts, backoff, paused."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from agency_data.errors import ValidationError
from agency_data.inputs import check_int, check_seconds, check_text
from agency_data.models import TaskTypePolicy
from agency_data.observability import observed
from agency_data.tasks import _sql

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = ["MAX_LEASE", "PolicyOps", "check_lease", "check_type"]

MAX_LEASE = 86_400.0


class PolicyOps:
    """The policy part of :class:`~agency_data.tasks.TaskStore`."""

    _db: Database
    tenant: str

    @observed("tasks.set_policy")
    async def set_policy(
        self,
        type: str,
        *,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        retry_first: float | None = None,
        retry_most: float | None = None,
    ) -> TaskTypePolicy:
        """Set one type's lease length, attempts and backoff, shared by every process.

        None means the configured default (``tasks.*``). ``max_attempts`` applies to tasks
        created from now on; the lease to claims from now on (a claimed task keeps its own).
        """
        name = check_type(type)
        values = {
            "lease_seconds": check_lease(lease_seconds),
            "max_attempts": None
            if max_attempts is None
            else check_int(max_attempts, "max_attempts", 1, 1000),
            "retry_first": None
            if retry_first is None
            else check_seconds(retry_first, "retry_first", high=86_400),
            "retry_most": None
            if retry_most is None
            else check_seconds(retry_most, "retry_most", high=2_592_000),
        }
        row = await self._db.fetch_one(
            *_sql.set_policy(self.tenant, name, values), model=TaskTypePolicy
        )
        assert row is not None
        return row

    @observed("tasks.policy")
    async def policy(self, type: str) -> TaskTypePolicy:
        """One type's policy (all defaults if it has none of its own)."""
        name = check_type(type)
        found = await self._db.fetch_one(*_sql.policies(self.tenant, name), model=TaskTypePolicy)
        return found if found is not None else TaskTypePolicy(type=name)

    @observed("tasks.policies")
    async def policies(self) -> builtins.list[TaskTypePolicy]:
        """The types with a policy of their own (paused, or with settings)."""
        return await self._db.fetch(*_sql.policies(self.tenant, None), model=TaskTypePolicy)

    @observed("tasks.pause")
    async def pause(self, type: str) -> TaskTypePolicy:
        """Stop claims of ``type`` (in every process) until :meth:`resume`; running tasks go on."""
        return await self._set_paused(type, True)

    @observed("tasks.resume")
    async def resume(self, type: str) -> TaskTypePolicy:
        """Let ``type`` be claimed again, waking workers that wait for it."""
        return await self._set_paused(type, False)

    async def _set_paused(self, type: str, paused: bool) -> TaskTypePolicy:
        name = check_type(type)
        async with self._db.transaction():
            row = await self._db.fetch_one(
                *_sql.set_paused(self.tenant, name, paused), model=TaskTypePolicy
            )
            if not paused:
                await self._db.execute("SELECT pg_notify('agency_data_tasks', %s)", [self.tenant])
        assert row is not None
        return row


def check_lease(seconds: float | None) -> float | None:
    """A lease length in seconds (0.05 s to a day), or None for the default."""
    if seconds is None:
        return None
    return check_seconds(seconds, "lease_seconds", low=0.05, high=MAX_LEASE)


def check_type(type: Any) -> str:
    """A task type name: non-blank text of at most 100 characters."""
    name = check_text(type, "type", max_length=100)
    if not name.strip():
        raise ValidationError("type must not be blank", field="type")
    return name
