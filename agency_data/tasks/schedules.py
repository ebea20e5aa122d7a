"""Periodic tasks: a named schedule enqueues one task per tick, however many schedulers run.

A schedule is a row with its next due time. A scheduler locks the due rows it finds
(``FOR UPDATE SKIP LOCKED``), enqueues each one's task and moves its due time past now, in one
transaction: two schedulers never enqueue the same tick, and a tick missed while no scheduler
ran is enqueued once, late, not once per missed tick. Rules are ``cron`` expressions (five
fields, or six with seconds last, as croniter reads them; in the schedule's time zone) or
``every`` N seconds (ticks aligned to the Unix epoch, so every process agrees on them).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from agency_data.errors import Conflict, NotFound, ValidationError
from agency_data.inputs import (
    check_datetime,
    check_int,
    check_mapping,
    check_seconds,
    check_text,
    encode_json,
)
from agency_data.models import Task, TaskSchedule
from agency_data.observability import observed
from agency_data.security.fields import sealed_limit
from agency_data.tasks import _sql
from agency_data.tasks._sql import NewTask

if TYPE_CHECKING:
    from agency_data.postgres.database import Database
    from agency_data.tasks.runtime import TaskRuntime

__all__ = ["ScheduleOps", "next_tick", "tick_key"]

_COLUMNS = (
    "name, cron, every_seconds, timezone, type, data, priority, max_attempts, next_run_at, "
    "last_run_at, last_task_id"
)
_BATCH = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_EVERY = 86_400.0 * 366
_MAX_KEY = 200
# A field of croniter's hashed (H) or random (R) kind: each process would pick its own ticks.
_CHANCE = re.compile(r"(^|[,/-])[HhRr](\(|/|,|$)")
# Where a schedule whose rule has no tick left waits: past any real time.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)
_log = logging.getLogger("agency_data.tasks")


def next_tick(
    after: datetime, *, cron: str | None, every: float | None, zone: str = "UTC"
) -> datetime:
    """The first tick of a rule strictly after ``after`` (a datetime with a timezone).

    :class:`~agency_data.errors.ValidationError` for a rule that is not one, or has no tick
    after ``after``.
    """
    check_datetime(after, "after")
    if (cron is None) == (every is None):
        raise ValidationError("give a schedule cron or every (not both)", field="cron")
    if every is not None:
        every = check_seconds(every, "every", low=0.001, high=_MAX_EVERY)
        # In whole microseconds: float division puts a tick of every=0.1 on either side of
        # itself, and "strictly after" must hold.
        step = max(round(every * 1_000_000), 1)
        micros = (after - _EPOCH) // timedelta(microseconds=1)
        try:
            return _EPOCH + timedelta(microseconds=(micros // step + 1) * step)
        except OverflowError:
            raise ValidationError(
                f"every={every} has no tick after {after.isoformat()}", field="every"
            ) from None
    local = after.astimezone(ZoneInfo(_zone(zone)))
    try:
        following: datetime = croniter(_cron(cron), local).get_next(datetime)
    except (CroniterError, OverflowError) as exc:
        # croniter.is_valid passes rules no date matches ("0 0 31 2 *").
        raise ValidationError(
            f"cron {cron!r} has no tick after {after.isoformat()} ({exc}); check its day and month",
            field="cron",
        ) from None
    return following.astimezone(UTC)


def _cron(value: Any) -> str:
    rule = check_text(value, "cron", max_length=200)
    fields = rule.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(rule):
        raise ValidationError(
            f"cron {rule!r} is not a cron expression (five fields, like '*/5 * * * *', or six "
            "with seconds last)",
            field="cron",
        )
    if any(_CHANCE.search(field) for field in fields):
        raise ValidationError(
            f"cron {rule!r} has a hashed (H) or random (R) field; every process must agree "
            "on the ticks, so give fixed values",
            field="cron",
        )
    return rule


def tick_key(name: str, tick: datetime) -> str:
    """The key of the task a schedule enqueues for ``tick`` (within the 200 characters)."""
    key = f"schedule:{name}:{tick.isoformat()}"
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"schedule:sha256-{digest}:{tick.isoformat()}"


class ScheduleOps:
    """The schedules half of :class:`~agency_data.tasks.TaskStore`."""

    _db: Database
    tenant: str
    _runtime: TaskRuntime

    @observed("tasks.schedule")
    async def schedule(
        self,
        name: str,
        *,
        type: str,
        cron: str | None = None,
        every: float | None = None,
        data: dict[str, Any] | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timezone: str = "UTC",
    ) -> TaskSchedule:
        """Create or change the schedule ``name``: a task of ``type`` per tick of its rule.

        Give ``cron`` (``"*/5 * * * *"``, read in ``timezone``) or ``every`` (seconds). The
        first tick is the rule's next one from now; changing the rule moves it, changing
        only the task keeps it. Ticks are enqueued by :meth:`run_scheduler` (or
        :meth:`run_due_schedules`), in any number of processes.
        """
        check_text(name, "name", max_length=200)
        if not name.strip():
            raise ValidationError("a schedule needs a name", field="name")
        check_text(type, "type", max_length=100)
        if not type.strip():
            raise ValidationError("type must not be blank", field="type")
        if (cron is None) == (every is None):
            raise ValidationError("give a schedule cron or every (not both)", field="cron")
        if every is not None:
            every = check_seconds(every, "every", low=0.001, high=_MAX_EVERY)
        zone = _zone(timezone)
        if cron is not None:
            _cron(cron)
        template = check_mapping(data if data is not None else {}, "data")
        payload = encode_json(template, "data", self._db.config.max_json_bytes)
        cipher = self._db.cipher
        if cipher.chosen("tasks", "data"):
            # The template of every task it makes: sealed as they are, bound to the schedule.
            await cipher.ensure(self.tenant)
            sealed = cipher.seal(self.tenant, "task_schedules", "data", name, template)
            payload = encode_json(sealed, "data", sealed_limit(self._db.config.max_json_bytes))
        check_int(priority, "priority", 0, 1000)
        if max_attempts is not None:
            check_int(max_attempts, "max_attempts", 1, 1000)
        now = await self._db.fetch_value("SELECT clock_timestamp()")
        first = next_tick(now, cron=cron, every=every, zone=zone)
        row = await self._db.fetch_one(
            "INSERT INTO task_schedules (tenant_id, name, cron, every_seconds, timezone, type, "
            "data, priority, max_attempts, next_run_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) "
            "ON CONFLICT (tenant_id, name) DO UPDATE SET cron = EXCLUDED.cron, "
            "every_seconds = EXCLUDED.every_seconds, timezone = EXCLUDED.timezone, "
            "type = EXCLUDED.type, data = EXCLUDED.data, priority = EXCLUDED.priority, "
            "max_attempts = EXCLUDED.max_attempts, updated_at = clock_timestamp(), "
            "next_run_at = CASE WHEN (task_schedules.cron, task_schedules.every_seconds, "
            "task_schedules.timezone) IS NOT DISTINCT FROM "
            "(EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone) "
            "THEN task_schedules.next_run_at ELSE EXCLUDED.next_run_at END "
            "RETURNING " + _COLUMNS,
            [self.tenant, name, cron, every, zone, type, payload, priority, max_attempts, first],
            model=TaskSchedule,
        )
        assert row is not None
        return row

    @observed("tasks.unschedule")
    async def unschedule(self, name: str) -> None:
        """Remove the schedule ``name`` (tasks it already enqueued stay)."""
        check_text(name, "name", max_length=200)
        removed = await self._db.execute(
            "DELETE FROM task_schedules WHERE tenant_id = %s AND name = %s", [self.tenant, name]
        )
        if not removed:
            raise NotFound(f"schedule {name!r} does not exist", entity="schedule", key=name)

    @observed("tasks.schedules")
    async def schedules(self) -> builtins.list[TaskSchedule]:
        """Every schedule of this tenant, by name."""
        return await self._db.fetch(
            "SELECT " + _COLUMNS + " FROM task_schedules WHERE tenant_id = %s ORDER BY name",
            [self.tenant],
            model=TaskSchedule,
        )

    @observed("tasks.run_due_schedules")
    async def run_due_schedules(self) -> builtins.list[Task]:
        """Enqueue the task of every schedule that is due now; the tasks enqueued."""
        enqueued: builtins.list[Task] = []
        async with self._db.transaction():
            due = await self._db.fetch(
                "SELECT " + _COLUMNS + ", clock_timestamp() AS now FROM task_schedules "
                "WHERE tenant_id = %s AND next_run_at <= now() ORDER BY next_run_at "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                [self.tenant, _BATCH],
            )
            for row in due:
                enqueued.extend(await self._enqueue_tick(row))
        return enqueued

    async def _enqueue_tick(self, row: dict[str, Any]) -> builtins.list[Task]:
        """One due schedule's task, and its next tick; a broken one is logged, not fatal."""
        name, tick = row["name"], row["next_run_at"]
        try:
            following = next_tick(
                row["now"], cron=row["cron"], every=row["every_seconds"], zone=row["timezone"]
            )
        except ValidationError as exc:
            _log.error("schedule %r has no next tick (%s); it waits until changed", name, exc)
            following = _NEVER
        tasks: builtins.list[Task] = []
        try:
            task_id = uuid.uuid4()
            cipher = self._db.cipher
            await cipher.ensure(self.tenant)
            data = cipher.open(self.tenant, "task_schedules", "data", row["name"], row["data"])
            if cipher.chosen("tasks", "data"):
                await cipher.ensure(self.tenant)
                data = cipher.seal(self.tenant, "tasks", "data", task_id, data)
            task_row = NewTask(
                id=task_id,
                type=row["type"],
                data=encode_json(data, "data", sealed_limit(self._db.config.max_json_bytes)),
                priority=row["priority"],
                agent_id=None,
                run_at=None,
                delay=0.0,
                max_attempts=row["max_attempts"],
                key=tick_key(name, tick),
            )
            # A savepoint: one schedule's bad task (a constraint) must not stop the others.
            async with self._db.transaction():
                tasks = await self._db.fetch(
                    *_sql.insert(self.tenant, [task_row], self._runtime.defaults, "return"),
                    model=Task,
                )
        except (ValidationError, Conflict, NotFound) as exc:
            # Its data or type is refused: skip this tick (an outage goes up, and the pass
            # is tried again whole).
            _log.error("schedule %r could not enqueue its %s tick (%s); skipped", name, tick, exc)
        await self._db.execute(
            "UPDATE task_schedules SET next_run_at = %s, last_run_at = %s, last_task_id = %s "
            "WHERE tenant_id = %s AND name = %s",
            [following, tick, tasks[0].id if tasks else None, self.tenant, name],
        )
        return tasks


def _zone(name: Any) -> str:
    check_text(name, "timezone", max_length=100)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"timezone {name!r} is not an IANA time zone name (like 'UTC' or 'Europe/Paris')",
            field="timezone",
        ) from None
    return str(name)
