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

__all__ = [
    "ATTRIBUTES",
    "Conversation",
    "Fact",
    "HashEmbedder",
    "Question",
    "Statement",
    "generate",
]


def _words(text: str) -> list[str]:
    return text.split()


FIRST = _words(
    "Alice Bruno Chloe Daniel Elena Felix Grace Hugo Ines Jonas Karin Lucas Maya Nils Olivia "
    "Pablo Quinn Rosa Samir Tara Umar Vera Walter Xenia Yusuf Zoe Anton Bianca Carlos Dana "
    "Emil Fatima Gustav Hanna Ivan Julia Kenji Lena Marco Nadia Oscar Priya Rafael Sofia "
    "Tomas Ursula Victor Wanda Yara Zane Amir Beatrix Cyril Delia Erik Flora Gino Helga Igor "
    "Jana Kofi Leila Milo Nora Otto Pia Ravi Selma Theo Uma Vito Wilma Aiko Boris Celine "
    "Dario Elif Farid Gemma Hector"
)
LAST = _words(
    "Moreno Keller Novak Rossi Schmidt Dubois Jensen Kowalski Silva Tanaka Okafor Larsen "
    "Petrov Haddad Costa Fischer Nguyen Bauer Romano Varga Lindqvist Mendes Horvat Adeyemi "
    "Becker Castillo Doyle Eriksen Ferreira Gallo Hoffmann Ibrahim Janssen Kaur Laurent Meyer "
    "Nakamura Olsen Park Quist Richter Santos Toivonen Urban Vidal Weber Yilmaz Zimmer Abbott "
    "Brandt Conti Dalton Esposito Fontaine Greco Hansen Ivanova Jovanovic Klein Lombardi "
    "Marsh Nielsen Ortega Pereira Reyes Sato Thorne Ueda Vogel Wagner Xu Young Zhou Aldana "
    "Berg Carr Duarte Engel Frost Gruber"
)
CITIES = _words(
    "Berlin Lisbon Paris Rome Madrid Vienna Prague Oslo Dublin Athens Warsaw Budapest Zurich "
    "Munich Hamburg Milan Naples Porto Seville Valencia Lyon Marseille Brussels Antwerp "
    "Amsterdam Rotterdam Copenhagen Stockholm Helsinki Tallinn Riga Vilnius Krakow Bratislava "
    "Ljubljana Zagreb Belgrade Bucharest Istanbul Edinburgh Glasgow Manchester Bristol London "
    "Toronto Montreal Boston Chicago Denver Seattle Austin Tokyo Osaka Seoul Singapore Sydney "
    "Melbourne Auckland Nairobi Lagos"
)
COMPANIES = _words(
    "Acme Globex Initech Umbrella Hooli Vandelay Stark Wayne Cyberdyne Soylent Tyrell Wonka "
    "Aperture Massive Oscorp Gringotts Monarch Nakatomi Virtucon Dunder Prestige Sterling "
    "Wernham Bluth Krusty Gekko Duff Ollivander Zorg Nimbus Quantum Vertex Lumina Helix Orbit "
    "Pinnacle Beacon Summit Cascade Horizon Keystone Meridian Northwind Contoso Fabrikam "
    "Tailspin Litware Proseware Adatum Trilogic"
)
ROLES = _words(
    "engineer designer nurse teacher architect accountant chef pilot lawyer pharmacist "
    "journalist photographer librarian electrician plumber dentist veterinarian translator "
    "economist geologist surgeon paramedic carpenter baker barista florist mechanic programmer "
    "analyst consultant recruiter therapist physicist chemist biologist historian sculptor "
    "violinist gardener firefighter"
)
FOODS = _words(
    "sushi ramen lasagna paella tacos curry pho dumplings risotto falafel goulash pierogi "
    "moussaka burritos pancakes croissants gnocchi kimchi bibimbap couscous hummus shakshuka "
    "ceviche empanadas biryani fondue raclette tiramisu churros baklava gazpacho carbonara "
    "bruschetta tempura samosas ravioli brioche waffles porridge cheesecake"
)
HOBBIES = _words(
    "climbing painting knitting surfing gardening baking cycling running swimming fishing "
    "hiking sailing pottery chess photography birdwatching skiing rowing archery fencing "
    "juggling calligraphy woodworking origami kayaking bouldering snowboarding skating "
    "drumming singing dancing yoga karate judo boxing tennis badminton golf bowling beekeeping"
)
PETS = _words(
    "beagle poodle labrador dachshund terrier collie husky corgi greyhound parrot canary "
    "tortoise hamster rabbit ferret iguana goldfish chinchilla hedgehog gecko cockatiel budgie "
    "axolotl pug spaniel bulldog tabby siamese dalmatian whippet"
)
LANGUAGES = _words(
    "Spanish French German Italian Portuguese Japanese Korean Mandarin Arabic Russian Polish "
    "Dutch Swedish Norwegian Danish Finnish Greek Turkish Hindi Swahili Hebrew Czech Hungarian "
    "Romanian Vietnamese Thai Icelandic Welsh Catalan Latin"
)
CARS = _words(
    "Volvo Fiat Tesla Toyota Honda Skoda Peugeot Renault Citroen Mazda Subaru Kia Hyundai "
    "Audi Porsche Ferrari Jeep Saab Lancia Alfa Dacia Opel Lexus Nissan Suzuki Jaguar Bentley "
    "Cupra Rover Lada"
)
ADJECTIVES = _words(
    "Amber Silent Crimson Golden Hidden Rapid Frozen Bright Iron Silver Hollow Lunar Solar "
    "Cobalt Velvet Quiet Scarlet Emerald Swift Northern Distant Brave Copper Azure Marble "
    "Ivory Jade Onyx Coral Misty"
)
NOUNS = _words(
    "Falcon Harbor Lantern Orchid River Comet Meadow Anchor Compass Ember Glacier Island "
    "Jungle Kestrel Lotus Maple Nebula Oasis Pebble Quartz Raven Sparrow Thistle Tundra Willow "
    "Yarrow Zephyr Badger Cedar Delta Fjord Grove Heron Iris Juniper Koala Lynx Magpie Nectar "
    "Otter"
)
STATUSES = _words(
    "planning prototyping blocked testing reviewing paused shipped cancelled delayed piloting "
    "scaling archived"
)
MONTHS = _words(
    "January February March April May June July August September October November December"
)
TOPICS = [
    "football", "politics", "a podcast", "the new phone", "taxes", "a movie", "a concert",
    "board games", "the election", "housing prices", "cryptocurrency", "the climate",
    "a novel", "the stock market", "the holidays", "a wedding", "a birthday party",
    "a museum", "a recipe", "electric bikes", "the Olympics", "a video game", "jazz",
    "space travel", "artificial intelligence", "a documentary", "the neighbours", "coffee",
    "a cooking show", "the marathon", "a startup idea", "retirement plans", "the garden",
    "an old friend", "school memories", "a power cut", "a broken laptop", "a job interview",
    "the dentist", "a hiking trail",
]  # fmt: skip
WEATHER = _words("lovely awful rainy windy sunny freezing humid grey stormy mild")


@dataclass(frozen=True)
class Attribute:
    """A fact's kind: its values and how the conversation words it."""

    name: str
    entity: Literal["person", "project"]
    values: Sequence[str]
    # Words that mean this attribute: they share one concept token in the embedder.
    concept: Sequence[str]
    state: Sequence[str]
    change: Sequence[str]
    correct: Sequence[str]
    restate: Sequence[str]
    question: Sequence[str]
    # Chit-chat worded like the fact, about another value ({x}).
    hard: Sequence[str]


PEOPLE_NAMES = [f"{first} {last}" for first in FIRST for last in LAST]

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "home", "person", CITIES,
        _words("live lives living moved relocated based apartment city home"),
        ["{p} lives in {v}.", "{p} is based in {v} these days.", "{p} has an apartment in {v}."],
        ["{p} moved to {v}.", "{p} relocated to {v} last month.", "{p} lives in {v} now."],
        ["Correction: {p} does not live in {o}, {p} lives in {v}."],
        ["{p} still lives in {v}."],
        ["Where does {p} live now?", "Which city is {p} based in?"],
        ["{p} says {x} would be a lovely city to live in someday.", "{p} is visiting {x} soon."],
    ),
    Attribute(
        "employer", "person", COMPANIES,
        _words("work works working employed employs joined company job"),
        ["{p} works at {v}.", "{p} is employed by {v}."],
        ["{p} joined {v}.", "{p} left for a job at {v}.", "{p} works at {v} now."],
        ["Correction: {p} does not work at {o}; {p} works at {v}."],
        ["{p} still works at {v}."],
        ["Where does {p} work?", "Which company employs {p}?"],
        ["{p} had an interview at {x} but turned it down.", "{p}'s brother works at {x}."],
    ),
    Attribute(
        "role", "person", ROLES,
        _words("profession role position retrained occupation"),
        ["{p} is a {v} by profession.", "{p}'s role is {v}."],
        ["{p} retrained and is now a {v}.", "{p} got a new position as {v}.",
         "{p}'s role changed to {v}."],
        ["Correction: {p} is not a {o}, {p} is a {v} by profession."],
        ["{p} is still a {v} by profession."],
        ["What is {p}'s profession?", "What role does {p} have?"],
        ["{p} met a {x} at the party.", "{p} wanted to be a {x} as a child."],
    ),
    Attribute(
        "food", "person", FOODS,
        _words("favourite food dish eating loves eat"),
        ["{p}'s favourite food is {v}.", "{p} loves eating {v}."],
        ["{p} has a new favourite dish: {v}.", "These days {p}'s favourite food is {v}."],
        ["Correction: {p}'s favourite food is not {o}, it is {v}."],
        ["{p} still loves eating {v}."],
        ["What is {p}'s favourite food?", "Which dish does {p} love most?"],
        ["{p} tried {x} at a new restaurant and did not like it.", "{p} cooked {x} for a friend."],
    ),
    Attribute(
        "hobby", "person", HOBBIES,
        _words("hobby hobbies weekends weekend took pastime"),
        ["{p} spends the weekends on {v}.", "{p}'s hobby is {v}."],
        ["{p} took up {v}.", "{p} has switched hobbies to {v}."],
        ["Correction: {p}'s hobby is not {o}, it is {v}."],
        ["{p} still spends the weekends on {v}."],
        ["What hobby does {p} have?", "What does {p} do at the weekends?"],
        ["{p} watched a documentary about {x}.", "{p} thinks {x} looks dangerous."],
    ),
    Attribute(
        "pet", "person", PETS,
        _words("pet pets adopted owns animal"),
        ["{p} has a {v} as a pet.", "{p} owns a {v}."],
        ["{p} adopted a {v}.", "{p}'s pet now is a {v}."],
        ["Correction: {p}'s pet is not a {o}, it is a {v}."],
        ["{p} still has a {v} as a pet."],
        ["What pet does {p} have?", "What animal does {p} own?"],
        ["{p} was bitten by a neighbour's {x}.", "{p} is allergic to every {x}."],
    ),
    Attribute(
        "language", "person", LANGUAGES,
        _words("learning learn language studying study classes"),
        ["{p} is learning {v}.", "{p} takes evening classes in {v}."],
        ["{p} switched to studying {v}.", "{p} started learning {v} instead."],
        ["Correction: {p} is not learning {o}; {p} is learning {v}."],
        ["{p} is still learning {v}."],
        ["Which language is {p} learning?", "What language does {p} study?"],
        ["{p} watched a film in {x} with subtitles.", "{p}'s neighbour speaks {x}."],
    ),
    Attribute(
        "car", "person", CARS,
        _words("drive drives driving car bought"),
        ["{p} drives a {v}.", "{p}'s car is a {v}."],
        ["{p} bought a {v}.", "{p} sold the old car and drives a {v} now."],
        ["Correction: {p} does not drive a {o}, {p} drives a {v}."],
        ["{p} still drives a {v}."],
        ["What car does {p} drive?", "Which car does {p} have?"],
        ["{p} rented a {x} on holiday.", "{p} says a {x} is too expensive."],
    ),
    Attribute(
        "status", "project", STATUSES,
        _words("status phase progressed stage"),
        ["{p} is in the {v} phase.", "The status of {p} is {v}."],
        ["{p} has progressed to {v}.", "The status of {p} changed to {v}."],
        ["Correction: {p} is not {o}, its status is {v}."],
        ["{p} is still in the {v} phase."],
        ["What is the status of {p}?", "What phase is {p} in?"],
        ["The team joked that {p} would be {x} forever.", "{p} came up at the standup."],
    ),
    Attribute(
        "lead", "project", PEOPLE_NAMES,
        _words("leads lead led owner took charge"),
        ["{v} leads {p}.", "{p} is led by {v}."],
        ["{v} took over {p}.", "{p} is now led by {v}."],
        ["Correction: {o} does not lead {p}; {v} leads it."],
        ["{v} still leads {p}."],
        ["Who leads {p}?", "Who is in charge of {p}?"],
        ["{x} reviewed a design document for {p}.", "{x} asked a question about {p}."],
    ),
    Attribute(
        "deadline", "project", MONTHS,
        _words("due deadline slipped date"),
        ["{p} is due in {v}.", "The deadline for {p} is {v}."],
        ["The deadline for {p} slipped to {v}.", "{p} is now due in {v}."],
        ["Correction: {p} is not due in {o}, it is due in {v}."],
        ["{p} is still due in {v}."],
        ["When is {p} due?", "What is the deadline for {p}?"],
        ["{p} had a demo in {x}.", "{p} was presented to the board in {x}."],
    ),
)  # fmt: skip
PERSON_ATTRIBUTES = [a for a in ATTRIBUTES if a.entity == "person"]
PROJECT_ATTRIBUTES = [a for a in ATTRIBUTES if a.entity == "project"]
PROJECT_NAMES = [f"Project {adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS]
CHAT = [
    "Had lunch with {p}; we talked about {t}.",
    "{p} sent me a funny video about {t}.",
    "{p} asked how my weekend was.",
    "Reminder: call {p} about {t}.",
    "{p} recommended a podcast about {t}.",
    "{p} complained about the traffic in {c}.",
    "The weather was {w} today.",
    "I read an article about {t}.",
    "{p} and I argued about {t}.",
    "{p} is going to a concert in {c}.",
    "Remind me to buy a gift for {p}.",
    "{p} shared photos from a trip to {c}.",
    "Can you summarise what we said about {t}?",
    "{p} could not stop talking about {t}.",
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
    _words(
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
