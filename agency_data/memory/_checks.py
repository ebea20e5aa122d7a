"""Checks of agent memory's inputs, and rows read as memories."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from psycopg.types.json import Jsonb

from agency_data.errors import ValidationError
from agency_data.inputs import (
    as_items,
    check_mapping,
    check_number,
    check_seconds,
    check_text,
    encode_json,
)
from agency_data.memory.models import MemoryRecord
from agency_data.vectors.catalog import CollectionSpec
from agency_data.vectors.compat import HalfVector
from agency_data.vectors.filter_ast import And, FilterNode, parse_filter

MAX_AGENT = 512
MAX_TEXT = 100_000
MAX_SUBJECT = 512
MAX_ID = 512
MAX_KIND = 64


def history_key(memory_id: str, version: int) -> str:
    """The row id a version's sealed text and metadata are bound to."""
    return f"{memory_id}:{version}"


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
    """``vector`` as the collection's storage type takes it."""
    return HalfVector(vector) if spec.storage == "halfvec" else vector


def as_jsonb(value: dict[str, Any] | None) -> Any:
    """``value`` as a jsonb parameter (None stays NULL)."""
    return None if value is None else Jsonb(value)


def check_label(value: Any, field: str, most: int) -> str:
    """``value`` if it is a string of 1 to ``most`` characters, not blank."""
    text = check_text(value, field, max_length=most)
    if not text.strip():
        raise ValidationError(f"{field} is blank", field=field)
    return text


def check_agent(agent_id: Any) -> str | None:
    """An agent's id, or None (every agent's, or shared)."""
    return None if agent_id is None else check_label(agent_id, "agent_id", MAX_AGENT)


def check_subject(subject: Any) -> str | None:
    """What memories are about (``"alice.home"``), or None."""
    return None if subject is None else check_label(subject, "subject", MAX_SUBJECT)


def check_scope(agent_id: Any, shared: bool) -> list[str] | None:
    """The agents whose memories a recall reads (``""``: the shared ones); None: the tenant's."""
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
    """A memory's kind (``"fact"``, ``"episode"``)."""
    return check_label(kind, "kind", MAX_KIND)


def check_memory_id(value: Any, field: str = "memory_id") -> str:
    """A memory's id."""
    return check_label(value, field, MAX_ID)


def check_ids(ids: Any) -> list[str]:
    """One memory id or several, as a list."""
    if isinstance(ids, str):
        return [check_memory_id(ids)]
    return [check_memory_id(i) for i in as_items(ids, "ids", most=100_000)]


def check_dedup(dedup: Any, default: float) -> float | None:
    """The similarity from which a memory is a near-copy; None: deduplication off."""
    if isinstance(dedup, bool):
        return default if dedup else None
    return check_number(dedup, "dedup", low=0.0, high=1.0)


def seconds(value: Any, field: str) -> float:
    """A span of time given as seconds or a ``timedelta``."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return check_seconds(value, field, high=100 * 366 * 86_400.0)


def json_object(value: Any, field: str, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """``value`` (None: an empty one) as JSON text, and as the dict that text reads back as
    (what the database will hold: datetimes become ISO strings), checked before anything is
    written."""
    if value is None:
        return "{}", {}
    document = encode_json(check_mapping(value, field), field, max_bytes)
    read_back: dict[str, Any] = orjson.loads(document)
    return document, read_back


def optional_filter(raw: Any) -> FilterNode | None:
    """The parsed filter, if one was given."""
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
