"""The task queue: leases, retries and dead letters, schedules, keys and dependencies."""

from agency_data.tasks.queue import MAX_CLAIM_WAIT, Job
from agency_data.tasks.runtime import TaskRuntime
from agency_data.tasks.schedules import next_tick
from agency_data.tasks.store import OnConflict, TaskStore
from agency_data.tasks.worker import Handler, Worker

__all__ = [
    "MAX_CLAIM_WAIT",
    "Handler",
    "Job",
    "OnConflict",
    "TaskRuntime",
    "TaskStore",
    "Worker",
    "next_tick",
]
