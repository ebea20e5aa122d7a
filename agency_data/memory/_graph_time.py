"""The knowledge graph's bi-temporal rules: what a new statement, or an explicit end, does to
the facts already believed. Pure functions over the current versions, so the rules are tested
without a database and the I/O layer only reads, decides and writes.

A fact's version is never edited (but for being invalidated, once). A change to what we
believe of a fact's valid time is a new version of the fact, recorded now, and the version
it replaces is invalidated now; so a read "as known at T" sees exactly what was believed at T.

The rules for ``relate(a, relation, b, [from, to))`` against the facts ``a -relation-> *``:

1. **Stated again.** A fact ``a -relation-> b`` already believed whose valid interval holds
   ``[from, to)`` is the same fact: nothing new is stored (if the statement comes from the
   same memory and brings new property keys, the fact gets a version with them).
2. **Extended.** A fact ``a -relation-> b`` from the same memory (or both from none) whose
   interval overlaps or touches ``[from, to)`` is the same fact over a longer time: it gets a
   version over the union of the intervals (several such facts become one). From another
   memory, the statement is a fact of its own, so that erasing either memory removes what it
   alone said.
3. **Exclusive** relations (one target at a time: lives_in, works_for) also end the facts
   ``a -relation-> c`` (c not b) that overlap ``[from, to)``: the later start ends the
   earlier state. A fact that began before ``from`` gets a version ending at ``from``; one
   that began at ``from`` is replaced outright; one that begins inside ``[from, to)`` (a
   newer state already known, when an older fact arrives late) ends the new fact where it
   begins. The outcome in valid time does not depend on the order facts arrive in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agency_data.memory.graph_models import Relation

__all__ = ["Plan", "Statement", "Version", "plan_invalidate", "plan_relate"]

# The end of an interval that has none.
_FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Statement:
    """A fact as relate() was told it, its interval resolved (``valid_from`` given or now)."""

    target_id: str
    properties: dict[str, Any]
    valid_from: datetime
    valid_to: datetime | None
    source_memory: str | None


@dataclass(frozen=True, slots=True)
class Version:
    """A version of a fact to insert."""

    id: str
    version: int
    target_id: str
    properties: dict[str, Any]
    valid_from: datetime
    valid_to: datetime | None
    source_memory: str | None


@dataclass
class Plan:
    """What to write: versions to invalidate ``(id, version, invalidated_by)`` and versions to
    add; and the answer, a version added (its ``(id, version)``) or one already stored."""

    ended: list[tuple[str, int, str | None]] = field(default_factory=list)
    added: list[Version] = field(default_factory=list)
    answer: tuple[str, int] | Relation | None = None


def _end(moment: datetime | None) -> datetime:
    return _FOREVER if moment is None else moment


def _bounded(moment: datetime) -> datetime | None:
    return None if moment == _FOREVER else moment


def _changed(
    fact: Relation,
    *,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    ends: bool = False,
    properties: dict[str, Any] | None = None,
) -> Version:
    """The next version of ``fact``, with what changed (``ends``: a new ``valid_to``)."""
    return Version(
        id=fact.id,
        version=fact.version + 1,
        target_id=fact.target_id,
        properties=fact.properties if properties is None else properties,
        valid_from=fact.valid_from if valid_from is None else valid_from,
        valid_to=valid_to if ends else fact.valid_to,
        source_memory=fact.source_memory,
    )


def plan_relate(
    current: Sequence[Relation], stated: Statement, *, exclusive: bool, new_id: str
) -> Plan:
    """What stating ``stated`` does, given the ``current`` versions of the facts from the same
    source with the same relation (every target if ``exclusive``, else those of the target).
    ``new_id`` is the id the statement gets if it is a fact of its own."""
    plan = Plan()
    start, end = stated.valid_from, _end(stated.valid_to)
    same = [f for f in current if f.target_id == stated.target_id]
    # One from the same memory first: a statement from it may bring new property keys.
    for fact in sorted(same, key=lambda f: f.source_memory != stated.source_memory):
        if fact.valid_from <= start and end <= _end(fact.valid_to):
            # Stated again: nothing new about its time.
            new_keys = fact.properties | stated.properties != fact.properties
            if fact.source_memory == stated.source_memory and new_keys:
                version = _changed(fact, properties=fact.properties | stated.properties)
                plan.ended.append((fact.id, fact.version, fact.id))
                plan.added.append(version)
                plan.answer = (version.id, version.version)
            else:
                plan.answer = fact
            return plan
    others = [f for f in current if f.target_id != stated.target_id] if exclusive else []
    # A state already known to begin inside the new fact's interval ends it there.
    for fact in others:
        if start < fact.valid_from < end:
            end = fact.valid_from
    merged = sorted(
        (
            f
            for f in same
            if f.source_memory == stated.source_memory
            and f.valid_from <= end
            and start <= _end(f.valid_to)
        ),
        key=lambda f: (f.valid_from, f.id),
    )
    if merged:
        keep = merged[0]
        fact_id = keep.id
        properties: dict[str, Any] = {}
        for fact in merged:
            properties |= fact.properties
            plan.ended.append((fact.id, fact.version, fact_id))
        low = min(start, keep.valid_from)
        high = max(end, *(_end(f.valid_to) for f in merged))
        version = _changed(
            keep,
            valid_from=low,
            valid_to=_bounded(high),
            ends=True,
            properties=properties | stated.properties,
        )
    else:
        fact_id = new_id
        version = Version(
            id=new_id,
            version=1,
            target_id=stated.target_id,
            properties=stated.properties,
            valid_from=start,
            valid_to=_bounded(end),
            source_memory=stated.source_memory,
        )
    for fact in others:
        if fact.valid_from <= start < _end(fact.valid_to):
            # The later start ends the earlier state; a state that began at the same moment
            # is replaced outright (its interval would be empty).
            plan.ended.append((fact.id, fact.version, fact_id))
            if fact.valid_from < start:
                plan.added.append(_changed(fact, valid_to=start, ends=True))
    plan.added.append(version)
    plan.answer = (version.id, version.version)
    return plan


def plan_invalidate(current: Relation, at: datetime) -> Plan:
    """What ending the fact at ``at`` does: a version that ends then; the fact withdrawn (no
    version left believed) when ``at`` is not after its start; nothing when it had already
    ended by ``at``."""
    plan = Plan()
    if current.valid_to is not None and at >= current.valid_to:
        plan.answer = current
        return plan
    plan.ended.append((current.id, current.version, None))
    if at <= current.valid_from:
        plan.answer = (current.id, current.version)
        return plan
    version = _changed(current, valid_to=at, ends=True)
    plan.added.append(version)
    plan.answer = (version.id, version.version)
    return plan
