"""Checking the knowledge graph's input: ids, names, relation names, times, properties,
vectors. Each refusal is a :class:`ValidationError` naming the argument."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from agency_data.errors import NotFound, ValidationError
from agency_data.inputs import (
    MAX_PAGE,
    as_items,
    brief,
    check_choice,
    check_datetime,
    check_text,
)
from agency_data.memory._checks import check_memory_id, directed, json_object
from agency_data.memory._graph_sql import Direction
from agency_data.memory.graph_models import Entity, Relation
from agency_data.vectors.validation import MAX_DIMENSION, as_vector

__all__ = [
    "MAX_NAME",
    "MAX_RELATION",
    "MAX_TYPE",
    "entity_id",
    "memory_id",
    "memory_ids",
    "name",
    "no_entity",
    "properties",
    "relation_id",
    "vector",
    "walk_args",
]

MAX_NAME = 512
MAX_TYPE = 64
MAX_RELATION = 128
_MAX_ID = 256
_DIRECTIONS = ("out", "in", "both")


def text_id(value: Any, field: str) -> str:
    """An id: a non-empty string of at most 256 characters."""
    check_text(value, field, max_length=_MAX_ID)
    if not value:
        raise ValidationError(f"{field} must not be empty", field=field)
    return str(value)


def relation_id(value: Any, field: str = "relation_id") -> str:
    """The id of a relation, or of the one given."""
    if isinstance(value, Relation):
        return value.id
    return text_id(value, field)


def entity_id(value: Any, field: str) -> str:
    """The id of an entity, or of the one given."""
    if isinstance(value, Entity):
        return value.id
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} must be an entity or an entity id (a string), not {brief(value)}",
            field=field,
        )
    return text_id(value, field)


def memory_id(value: Any, field: str) -> str:
    """A memory's id (checked as agent memory checks it)."""
    return check_memory_id(value, field)


def memory_ids(values: Any) -> list[str]:
    """Memory ids (at most a page of them), each once, in the order given."""
    items = as_items(values, "memory_ids", most=MAX_PAGE)
    ids = [memory_id(v, f"memory_ids[{i}]") for i, v in enumerate(items)]
    return list(dict.fromkeys(ids))


def name(value: Any, field: str, most: int) -> str:
    """A name, type or relation: text of 1 to ``most`` characters once trimmed."""
    check_text(value, field, max_length=most)
    text = str(value).strip()
    if not text:
        raise ValidationError(f"{field} must not be empty or blank", field=field)
    return text


def relation_names(value: Any) -> list[str] | None:
    """One relation name or several, as a list (None: every relation)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [name(value, "relation", MAX_RELATION)]
    items = as_items(value, "relation", most=MAX_PAGE)
    if not items:
        raise ValidationError(
            "relation is an empty list, which no fact matches; pass None for every relation",
            field="relation",
        )
    return [name(v, f"relation[{i}]", MAX_RELATION) for i, v in enumerate(items)]


def walk_args(
    relation: Any, direction: Any, as_of: Any, known_at: Any
) -> tuple[list[str] | None, Direction, datetime | None, datetime | None]:
    """What a walk follows: relation names, direction, valid time, transaction time."""
    names = relation_names(relation)
    way = cast(Direction, check_choice(direction, "direction", _DIRECTIONS))
    when = None if as_of is None else check_datetime(as_of, "as_of")
    known = None if known_at is None else check_datetime(known_at, "known_at")
    return names, way, when, known


def properties(value: Any, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """``value`` (None: none) as JSON text, and as the dict that text reads back as (what the
    database will hold, to compare with)."""
    return json_object(value, "properties", max_bytes)


def vector(value: Any, field: str) -> npt.NDArray[np.float32]:
    """An embedding of any dimension: finite numbers, not all zero (cosine needs a direction)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise ValidationError(
            f"{field} must be a sequence of numbers, not {brief(value)}", field=field
        )
    try:
        size = len(value)
    except TypeError:
        raise ValidationError(f"{field} must be a sequence of numbers", field=field) from None
    if not 1 <= size <= MAX_DIMENSION:
        raise ValidationError(
            f"{field} has {size} dimensions; from 1 to {MAX_DIMENSION} are accepted", field=field
        )
    return directed(as_vector(value, size, "vector", where=field), field)


def no_entity(ident: str, field: str = "entity_id") -> NotFound:
    """The error for an entity this tenant does not have."""
    return NotFound(
        f"{field}: no entity {brief(ident)} in this tenant; make it with upsert_entity",
        entity="entity",
        key=ident,
    )
