"""Checks of agent memory's inputs, and rows read as memories."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg.types.json import Jsonb

from agency_data.errors import ValidationError
from agency_data.inputs import as_items, check_number, check_text
from agency_data.memory.models import MemoryRecord
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.compat import HalfVector
from agency_data.vectors.filter_ast import And, FilterNode, parse_filter

MAX_AGENT = 512
MAX_TEXT = 100_000
MAX_SUBJECT = 512


def memory_record(row: dict[str, Any]) -> MemoryRecord:
    """A memory's row (its collection row's ``content`` and ``metadata`` opened) as a record;
    recall's rows are of live memories and name neither forgetting nor consolidation."""
    return MemoryRecord(
        id=row["id"],
        agent_id=row["agent_id"],
        kind=row["kind"],
        subject=row["subject"],
        text=row["content"],
        metadata=row["metadata"] or {},
        importance=row["importance"],
        happened_at=row["happened_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        access_count=row["access_count"],
        last_accessed_at=row["last_accessed_at"],
        forgotten_at=row.get("forgotten_at"),
        consolidated_into=row.get("consolidated_into"),
    )


def vector_param(vector: npt.NDArray[np.float32], spec: CollectionSpec) -> Any:
    return HalfVector(vector) if spec.storage == "halfvec" else vector


def as_jsonb(value: dict[str, Any] | None) -> Any:
    """``value`` as a jsonb parameter (None stays NULL)."""
    return None if value is None else Jsonb(value)


def check_agent(agent_id: Any) -> str | None:
    if agent_id is None:
        return None
    agent = check_text(agent_id, "agent_id", max_length=MAX_AGENT)
    check_nonblank(agent, "agent_id")
    return agent


def check_scope(agent_id: Any, shared: bool) -> list[str] | None:
    if agent_id is None:
        return None
    if isinstance(agent_id, str):
        agents = [check_agent(agent_id) or ""]
    else:
        agents = [check_agent(a) or "" for a in as_items(agent_id, "agent_id", most=10_000)]
        if not agents:
            raise ValidationError(
                "agent_id names no agent: give one, a team of several, or None for the tenant",
                field="agent_id",
            )
    return [*agents, ""] if shared else agents


def check_kind(kind: Any) -> str:
    value = check_text(kind, "kind", max_length=64)
    check_nonblank(value, "kind")
    return value


def check_memory_id(value: Any) -> str:
    found = check_text(value, "memory_id", max_length=512)
    check_nonblank(found, "memory_id")
    return found


def check_ids(ids: Any) -> list[str]:
    if isinstance(ids, str):
        return [check_memory_id(ids)]
    return [check_memory_id(i) for i in as_items(ids, "ids", most=100_000)]


def check_nonblank(value: str | None, field: str) -> None:
    if value is not None and not value.strip():
        raise ValidationError(f"{field} is blank", field=field)


def check_dedup(dedup: Any, default: float) -> float | None:
    if isinstance(dedup, bool):
        return default if dedup else None
    return check_number(dedup, "dedup", low=0.0, high=1.0)


def check_seconds(value: Any, field: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return check_number(value, field, low=0.0, high=100 * 366 * 86_400.0)


def optional_filter(raw: Any) -> FilterNode | None:
    return None if raw is None else parse_filter(raw)


def directed(
    vector: npt.NDArray[np.float32], field: str, *, embedded: bool = False
) -> npt.NDArray[np.float32]:
    """``vector`` if it has a direction: a zero vector's cosine distance to anything is NaN,
    which would rank it first for every query (PostgreSQL sorts NaN above all numbers)."""
    if not np.any(vector):
        said = "the embedder gave a zero vector for the " if embedded else "a zero vector as "
        raise ValidationError(
            f"{said}{field}: it has no direction, so it is neither similar nor dissimilar to "
            "anything (a text with no words the embedder knows?)",
            field=field,
        )
    return vector


def matches_all(node: FilterNode) -> bool:
    """Whether ``node`` matches every row whatever it holds: ``{}``, ``{"$and": []}``."""
    return isinstance(node, And) and all(matches_all(child) for child in node.children)
