"""A synthetic long conversation for the memory benchmark, and the embedder it is read with.

LongMemEval and LoCoMo are not available offline, so :func:`generate` writes a conversation in
their spirit: many sessions over a simulated year between a user and an agent, in which the
user states facts about people (where they live, work, what they eat, drive, learn...) and
projects (status, lead, deadline); a sizeable share of those facts later change (a plain
update, or a correction that names the old value and the new one), some are restated, and
chit-chat about the same people, places and things is mixed in, some of it worded like the
facts (hard negatives: "Alice Moreno says Lisbon would be a lovely city to live in someday").
Every question asks for a fact's current value, so the statements that answer it are known:
those that state the final value after its last change.

:class:`HashEmbedder` stands in for a sentence model: words (lowercased, crudely stemmed,
stop words dropped), word pairs at half weight and a concept token per attribute (so that
"moved to", "lives in" and "where does ... live" meet, as a model's semantics would make them)
are hashed (crc32) into a fixed table of random Gaussian rows, summed and L2-normalised: a
random projection of a hashed bag of words. Deterministic, no model, a few microseconds a text.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from bench.conversation_words import (
    ATTRIBUTES,
    CHAT,
    CITIES,
    PEOPLE_NAMES,
    PERSON_ATTRIBUTES,
    PROJECT_ATTRIBUTES,
    PROJECT_NAMES,
    TOPICS,
    WEATHER,
    Attribute,
    words,
)

__all__ = [
    "ATTRIBUTES",
    "Conversation",
    "Fact",
    "HashEmbedder",
    "Question",
    "Statement",
    "generate",
]


Role = Literal["state", "change", "correct", "restate", "chat"]


@dataclass(frozen=True)
class Statement:
    """One thing the user said: a memory to remember."""

    text: str
    at: datetime
    # "<entity>.<attribute>" for a fact (what an application passes as subject=), else None.
    subject: str | None
    kind: Literal["fact", "chat"]
    role: Role
    # Index of the fact it states (in Conversation.facts), None for chit-chat.
    fact: int | None = None
    value: str | None = None


@dataclass(frozen=True)
class Question:
    """A question about a fact's current value, and the statements that answer it."""

    text: str
    fact: int
    # "updated": the fact changed at least once; "stable": it never did.
    type: Literal["updated", "stable"]
    # Indexes (in Conversation.statements) of the statements of the final value after its
    # last change: any of them, or the memory it became, is a right answer.
    answers: tuple[int, ...]
    # The last change was a correction that names the old value too.
    corrected: bool = False


@dataclass(frozen=True)
class Fact:
    """What a fact is about: an entity's attribute."""

    # "<entity>.<attribute>": what an application passes as subject=.
    subject: str
    entity: str
    attribute: Attribute


@dataclass(frozen=True)
class Conversation:
    """The statements in the order they were said, and the questions with their answers."""

    statements: list[Statement]
    questions: list[Question]
    facts: list[Fact]
    sessions: int


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def generate(
    size: int,
    questions: int,
    *,
    seed: int,
    end: datetime,
    days: float = 365.0,
    chat_share: float = 0.35,
    changed_share: float = 0.45,
    per_session: int = 40,
) -> Conversation:
    """``size`` statements said over ``days`` days up to ``end``, in sessions of about
    ``per_session``; ``chat_share`` of them chit-chat, the rest facts of which
    ``changed_share`` change one to four times (a quarter of the changes are corrections)
    and 15% are restated; up to ``questions`` questions of each type (about changed facts and
    about stable ones). The same arguments give the same conversation."""
    rng = random.Random(seed)
    sessions = max(2, size // per_session)
    span = timedelta(days=days)
    starts = sorted(end - span + span * rng.random() for _ in range(sessions))
    # Every (entity, attribute) pair a fact could be about, drawn without replacement.
    people = len(PEOPLE_NAMES) * len(PERSON_ATTRIBUTES)
    slots = people + len(PROJECT_NAMES) * len(PROJECT_ATTRIBUTES)
    order = iter(rng.sample(range(slots), min(slots, size)))
    planned: list[tuple[int, Statement]] = []  # (session, statement), its time set below
    facts: list[Fact] = []
    budget = size - round(size * chat_share)
    while budget > 0 and (slot := next(order, None)) is not None:
        fact = _fact(slot, people)
        changes = 0 if rng.random() >= changed_share else 1 + min(3, _geometric(rng, 0.5))
        restated = rng.random() < 0.15
        count = min(budget, 1 + changes + restated, sessions)
        budget -= count
        index = len(facts)
        facts.append(fact)
        attribute = fact.attribute
        used: list[str] = []
        for step, session in enumerate(sorted(rng.sample(range(sessions), count))):
            role: Role
            if step == 0:
                role, value = "state", rng.choice(attribute.values)
            elif restated and step == count - 1:
                role, value = "restate", used[-1]
            else:
                role = "correct" if rng.random() < 0.25 else "change"
                value = _other(rng, attribute.values, used)
            template = rng.choice(getattr(attribute, role))
            text = template.format(p=fact.entity, v=value, o=used[-1] if used else value)
            used.append(value)
            planned.append(
                (session, Statement(text, end, fact.subject, "fact", role, index, value))
            )
    while len(planned) < size:
        planned.append((rng.randrange(sessions), Statement(_chat(rng), end, None, "chat", "chat")))
    # Within a session, statements a minute apart in a shuffled order; a fact's statements
    # are in different sessions, so their order holds.
    rng.shuffle(planned)
    planned.sort(key=lambda p: p[0])
    statements: list[Statement] = []
    position = 0
    for i, (session, statement) in enumerate(planned):
        position = position + 1 if i and planned[i - 1][0] == session else 0
        at = min(end, starts[session] + timedelta(minutes=position))
        statements.append(replace(statement, at=at))
    return Conversation(statements, _questions(rng, statements, facts, questions), facts, sessions)


def _fact(slot: int, people: int) -> Fact:
    if slot < people:
        entity = PEOPLE_NAMES[slot // len(PERSON_ATTRIBUTES)]
        attribute = PERSON_ATTRIBUTES[slot % len(PERSON_ATTRIBUTES)]
    else:
        slot -= people
        entity = PROJECT_NAMES[slot // len(PROJECT_ATTRIBUTES)]
        attribute = PROJECT_ATTRIBUTES[slot % len(PROJECT_ATTRIBUTES)]
    return Fact(f"{_key(entity)}.{attribute.name}", entity, attribute)


def _other(rng: random.Random, values: Sequence[str], used: list[str]) -> str:
    # A value the fact has not had: a change never reverts, so an old statement is never
    # also a right answer.
    while True:
        value = rng.choice(values)
        if value not in used:
            return value


def _geometric(rng: random.Random, p: float) -> int:
    count = 0
    while rng.random() >= p:
        count += 1
    return count


def _chat(rng: random.Random) -> str:
    if rng.random() < 0.3:
        # A hard negative: chit-chat worded like a fact about someone.
        attribute = rng.choice(ATTRIBUTES)
        entity = rng.choice(PEOPLE_NAMES if attribute.entity == "person" else PROJECT_NAMES)
        return rng.choice(attribute.hard).format(p=entity, x=rng.choice(attribute.values))
    return rng.choice(CHAT).format(
        p=rng.choice(PEOPLE_NAMES),
        t=rng.choice(TOPICS),
        c=rng.choice(CITIES),
        w=rng.choice(WEATHER),
    )


def _questions(
    rng: random.Random, statements: list[Statement], facts: list[Fact], most: int
) -> list[Question]:
    by_fact: dict[int, list[int]] = {}
    for i, statement in enumerate(statements):
        if statement.fact is not None:
            by_fact.setdefault(statement.fact, []).append(i)
    updated: list[int] = []
    stable: list[int] = []
    for fact, said in by_fact.items():
        changed = any(statements[i].role in ("change", "correct") for i in said)
        (updated if changed else stable).append(fact)
    chosen: list[tuple[int, Literal["updated", "stable"]]] = [
        *((f, "updated") for f in rng.sample(updated, min(most, len(updated)))),
        *((f, "stable") for f in rng.sample(stable, min(most, len(stable)))),
    ]
    out = []
    for fact, kind in chosen:
        said = by_fact[fact]
        # The last statement that set the value; a restatement after it answers too.
        last = max(n for n, i in enumerate(said) if statements[i].role != "restate")
        out.append(
            Question(
                text=rng.choice(facts[fact].attribute.question).format(p=facts[fact].entity),
                fact=fact,
                type=kind,
                answers=tuple(said[last:]),
                corrected=statements[said[last]].role == "correct",
            )
        )
    return out


_STOP = frozenset(
    words(
        "a an the is are was were be been in at on of to for and or it its by as now still does "
        "do did not what which where who when how has have had this these that with me my i we "
        "our about so from there can you your they their them he she his her up then than"
    )
)
_CONCEPTS: dict[str, list[str]] = {}
for _attribute in ATTRIBUTES:
    for _word in _attribute.concept:
        _CONCEPTS.setdefault(_word, []).append(f"@{_attribute.name}")
_WORD = re.compile(r"[a-z]+")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class HashEmbedder:
    """Texts to unit vectors by a random projection of hashed words, word pairs and concepts
    (see the module's docstring). A plain callable: ``embedder(texts) -> (n, dimension)``."""

    def __init__(self, dimension: int = 384, *, seed: int = 7, buckets: int = 1 << 15) -> None:
        self.dimension = dimension
        self._buckets = buckets
        rng = np.random.default_rng(seed)
        self._table = rng.standard_normal((buckets, dimension), dtype=np.float32)

    def features(self, text: str) -> dict[str, float]:
        """The weighted features of ``text``: its words, their concepts, its word pairs."""
        words = [w for w in _WORD.findall(text.lower().replace("'s", "")) if w not in _STOP]
        stems = [_stem(w) for w in words]
        weights: dict[str, float] = {}
        for word, stem in zip(words, stems, strict=True):
            weights[stem] = weights.get(stem, 0.0) + 1.0
            for concept in _CONCEPTS.get(word) or _CONCEPTS.get(stem) or ():
                weights[concept] = weights.get(concept, 0.0) + 1.0
        for left, right in itertools.pairwise(stems):
            pair = f"{left} {right}"
            weights[pair] = weights.get(pair, 0.0) + 0.5
        return weights

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            features = self.features(text)
            if not features:
                continue
            index = np.fromiter(
                (zlib.crc32(f.encode()) % self._buckets for f in features), np.int64
            )
            weight = np.fromiter(features.values(), np.float32)
            out[row] = weight @ self._table[index]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return out / norms
