"""Who is acting: the identity the audit trail records for the writes made meanwhile.

``with dl.as_actor("svc-planner"):`` (or :func:`acting_as`) names the caller for every call
made inside the block, in this task and the tasks it starts; PostgreSQL sees it as the
transaction-local setting ``agency_data.actor``. Without one, records name the database role.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from agency_data.inputs import check_text

__all__ = ["ACTOR_SETTING", "acting_as", "current_actor"]

ACTOR_SETTING = "agency_data.actor"

current_actor: ContextVar[str | None] = ContextVar("agency_data_actor", default=None)


@contextmanager
def acting_as(actor: str) -> Iterator[str]:
    """Name ``actor`` (up to 200 characters) as the one making the calls inside the block."""
    name = check_text(actor, "actor", max_length=200)
    token = current_actor.set(name)
    try:
        yield name
    finally:
        current_actor.reset(token)
