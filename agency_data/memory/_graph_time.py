"""The knowledge graph's bi-temporal rules: what a new statement, or an explicit end, does to
the facts already believed. Pure functions over the current versions, so the rules are tested
without a database and the I/O layer only reads, decides and writes.

A fact's version is never edited (but for being invalidated, once; erasure aside). A change
to what we believe of a fact's valid time is a new version of the fact, recorded now, and the
version it replaces is invalidated now; so a read "as known at T" sees exactly what was
believed at T.

The rules for ``relate(a, relation, b, [from, to))`` against the facts ``a -relation-> *``:

1. **Stated again.** A fact ``a -relation-> b`` already believed whose valid interval holds
   ``[from, to)`` (for an exclusive relation: one that also begins at ``from``) is the same
   fact: nothing new is stored (if the statement comes from the same memory and brings new
   property keys, the fact gets a version with them). It is checked after rule 3 has cut the
   statement's end, so restating a fact that a later one ended stores nothing either.
2. **Extended.** A fact ``a -relation-> b`` from the same memory (or both from none) whose
   interval overlaps or touches ``[from, to)`` (for an exclusive relation: that begins at
   ``from``) is the same fact over a longer time: it gets a version over the union of the
   intervals (several such facts become one). From another memory, the statement is a fact of
   its own, so that erasing either memory removes what it alone said.
3. **Exclusive** relations (one target at a time: lives_in, works_for) hold, at each moment,
   the state stated with the latest start before it, until that statement's own end. Each
   statement is a state of its own from its start, a restatement of the same target
   included (``b`` from day 20 after ``b`` from day 0 and ``c`` from day 10: ``b`` again on
   day 20), so a statement ends the other facts that overlap ``from``: one that began before
   gets a version ending at ``from``; one of another target that began at ``from`` is
   replaced outright. A fact already known to begin inside ``[from, to)`` (a newer state,
   when an older fact arrives late) ends the new fact where it begins; the new fact is then
   recorded as stated and at once invalidated by that newer fact, followed by the version
   that ends there, so that erasing the newer fact's memory can give it back its own end.
   The outcome in valid time does not depend on the order facts arrive in (distinct starts;
   of two states of different targets stated with the same start, the later told wins).

Erasing a fact (with its memory, its entity or its tenant, or by a DELETE of one's own)
undoes what its statement did to other facts, as if it had never been told: migration 0019's
``agency_data_relations_erased`` trigger does it in the database, on the ``invalidated_by``
links these rules leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    """A version of a fact to insert; with ``invalidated_by``, recorded already invalidated
    by that fact (what was stated, before a newer fact known at once ended it)."""

    id: str
    version: int
    target_id: str
    properties: dict[str, Any]
    valid_from: datetime
    valid_to: datetime | None
    source_memory: str | None
    invalidated_by: str | None = None


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
    start, told = stated.valid_from, _end(stated.valid_to)
    end = told
    cutter: Relation | None = None
    if exclusive:
        # A state already known to begin inside the new fact's interval ends it there, a
        # later statement of the same target included: its start is a state's start too.
        for fact in current:
            if start < fact.valid_from < end:
                end, cutter = fact.valid_from, fact

    def same_fact(fact: Relation) -> bool:
        # Exclusive: a statement that begins elsewhere is a state of its own (rule 3).
        return fact.target_id == stated.target_id and (not exclusive or fact.valid_from == start)

    same = [f for f in current if same_fact(f)]
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
        properties |= stated.properties
        low = min(start, keep.valid_from)
        ends = [_end(f.valid_to) for f in merged]
        high = max(end, *ends)
        version = _changed(
            keep, valid_from=low, valid_to=_bounded(high), ends=True, properties=properties
        )
        uncut = max(told, *ends)
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
        high, uncut = end, told
    if cutter is not None and high < uncut:
        # Recorded as stated, at once ended by the newer fact: erasing that one undoes the cut.
        plan.added.append(replace(version, valid_to=_bounded(uncut), invalidated_by=cutter.id))
        version = replace(version, version=version.version + 1)
    if exclusive:
        for fact in current:
            if fact.id == fact_id or not fact.valid_from <= start < _end(fact.valid_to):
                continue
            if fact.valid_from == start and fact.target_id == stated.target_id:
                # The same start and target from another memory: a fact of its own (rule 2).
                continue
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
