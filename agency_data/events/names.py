"""What store events there are, what their messages hold, and checking a subscription to them.

Pure functions: no I/O. The triggers of migration 0017 write the messages; this module is
the one place in Python that knows their names and fields.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from enum import Enum
from typing import Any

from agency_data.errors import ValidationError
from agency_data.inputs import brief
from agency_data.models import AgentStatus, TaskStatus

__all__ = [
    "EVENTS",
    "FIELDS",
    "SETTING",
    "Match",
    "check_match",
    "expand",
    "matches",
    "stream_of",
]

# The per-connection setting the triggers read: the stores whose events are on.
SETTING = "agency_data.events"

# Each event's family (what comes before the dot) and the families' message fields a
# subscription may match on (``at`` and an embedding event's ``ids`` are there too, not
# matched on: a time and a list equal nothing a subscriber could name in advance).
FIELDS: dict[str, tuple[str, ...]] = {
    "task": ("id", "type", "status", "previous", "agent", "priority", "attempts"),
    "agent": ("id", "type", "name", "status", "previous"),
    "embedding": ("collection", "count"),
}
EVENTS: tuple[str, ...] = (
    "task.created",
    *(f"task.{status.value}" for status in TaskStatus),
    "agent.created",
    *(f"agent.{status.value}" for status in AgentStatus),
    "agent.deleted",
    "embedding.stored",
    "embedding.deleted",
)
_KNOWN = frozenset(EVENTS)
_NAME = re.compile(r"[a-z]{1,20}\.(?:[a-z]{1,20}|\*)")

# A subscription's equality tests: field -> the JSON value it must hold.
Match = dict[str, str | int | float | bool | None]


def stream_of(event: str) -> str:
    """The stream (of the tenant's) that ``event``'s messages are relayed to."""
    return f"events:{event}"


def expand(event: object) -> tuple[str, ...]:
    """The events ``event`` names: itself, or every event of a family for ``task.*``."""
    if isinstance(event, str) and _NAME.fullmatch(event):
        family, _, which = event.partition(".")
        if which == "*" and family in FIELDS:
            return tuple(name for name in EVENTS if name.startswith(family + "."))
        if event in _KNOWN:
            return (event,)
    raise ValidationError(
        f"event {brief(event)} is not a store event: use one of {', '.join(EVENTS)}, or all "
        f"of a store's with {', '.join(f'{family}.*' for family in FIELDS)}",
        field="event",
    )


def check_match(events: tuple[str, ...], match: Mapping[str, Any]) -> Match:
    """``match`` as a subscription to ``events`` compares it: known fields, JSON scalars
    (a UUID or an enum member as its text)."""
    family = events[0].partition(".")[0]
    allowed = FIELDS[family]
    checked: Match = {}
    for name, value in match.items():
        if name not in allowed:
            raise ValidationError(
                f"{brief(name)} is not a field of {family} events: match on "
                f"{', '.join(allowed)} (e.g. type='report')",
                field=name if name else "match",
            )
        checked[name] = _scalar(name, value)
    return checked


def _scalar(name: str, value: Any) -> str | int | float | bool | None:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValidationError(
        f"{name} must be a string, number, boolean, UUID or None to compare a message's "
        f"{name} with, not {brief(value)}",
        field=name,
    )


def matches(fields: Mapping[str, Any], match: Match) -> bool:
    """Whether a message's ``fields`` hold each value of ``match`` (True is not 1 here)."""
    for name, wanted in match.items():
        have = fields.get(name)
        if isinstance(have, bool) or isinstance(wanted, bool):
            if have is not wanted:
                return False
        elif have != wanted:
            return False
    return True
