"""The temporal knowledge graph of agent memory (agency_data.memory.graph) on the real servers:
entities found again by name and searched by trigram and embedding; facts that a newer one
contradicts, answered as of now, as of earlier, and as believed earlier; walks and paths,
checked against a breadth-first search in Python on a generated graph of 100,000 relations;
tenancy, erasure, bad input and cancellation."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agency_data import AgencyDataError, Conflict, DataLayer, NotFound, ValidationError
from agency_data.memory import Entity, KnowledgeGraph, Relation
from agency_data.memory import _graph_sql as q
from agency_data.memory._graph_time import Plan, Statement, plan_relate
from agency_data.sync import DataLayer as SyncDataLayer
from tests.conftest import DatabaseDsn, make_config, other_connection

Y2020 = datetime(2020, 1, 1, tzinfo=UTC)
Y2021 = datetime(2021, 1, 1, tzinfo=UTC)
Y2022 = datetime(2022, 1, 1, tzinfo=UTC)
Y2023 = datetime(2023, 1, 1, tzinfo=UTC)
Y2024 = datetime(2024, 1, 1, tzinfo=UTC)


async def remember(dl: DataLayer, tenant: str, *ids: str) -> None:
    """Rows in memories (the lead's store writes them; raw SQL is enough for the graph)."""
    for ident in ids:
        await dl.tenant(tenant).execute(
            "INSERT INTO memories (tenant_id, id, collection, kind, importance, happened_at) "
            "VALUES (%s, %s, 'memories', 'fact', 0.5, now())",
            [tenant, ident],
        )


async def count(dl: DataLayer, table: str, tenant: str = "default") -> int:
    value = await dl.admin.fetch_value(
        f"SELECT count(*) FROM {table} WHERE tenant_id = %s",  # type: ignore[arg-type]
        [tenant],
    )
    return int(value)


def at_now(relations: Sequence[Relation]) -> set[str]:
    return {r.target_id for r in relations}


# -- entities -------------------------------------------------------------------------------------


async def test_upsert_finds_the_same_entity_and_merges_its_properties(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann = await graph.upsert_entity("Ann Smith", "person", {"email": "a@x", "age": 40})
    again = await graph.upsert_entity("  ann SMITH ", "person", {"age": 41, "city": "Oslo"})
    assert again.id == ann.id
    assert again.name == "Ann Smith"  # the first spelling stays
    assert again.properties == {"email": "a@x", "age": 41, "city": "Oslo"}
    assert again.updated_at > ann.updated_at
    # Another type is another entity.
    pet = await graph.upsert_entity("Ann Smith", "pet")
    assert pet.id != ann.id
    assert await count(dl, "memory_entities") == 2
    # An embedding given replaces the one held; None keeps it; reads leave it out unless asked.
    await graph.upsert_entity("Ann Smith", "person", embedding=[1.0, 0.0, 0.0])
    await graph.upsert_entity("Ann Smith", "person", {"x": 1})
    assert (await graph.get_entity(ann.id)).embedding is None
    held = await graph.get_entity(ann, include_vector=True)
    assert held.embedding == [1.0, 0.0, 0.0]
    await graph.upsert_entity("Ann Smith", "person", embedding=[0.0, 2.0])
    assert (await graph.get_entity(ann.id, include_vector=True)).embedding == [0.0, 2.0]
    with pytest.raises(NotFound):
        await graph.get_entity("nobody")


async def test_find_entities_by_trigram_similarity(dl: DataLayer) -> None:
    graph = dl.memory.graph
    for name, kind in [
        ("Ann Smith", "person"),
        ("Anne Smyth", "person"),
        ("Annabel Smith", "person"),
        ("Bob Jones", "person"),
        ("Ann Smith Ltd", "company"),
    ]:
        await graph.upsert_entity(name, kind)
    found = await graph.find_entities("ann smith")
    names = [m.entity.name for m in found]
    assert names[0] == "Ann Smith"
    assert found[0].similarity == pytest.approx(1.0)
    assert "Bob Jones" not in names
    assert [m.similarity for m in found] == sorted((m.similarity for m in found), reverse=True)
    assert all(m.similarity >= 0.3 for m in found)
    people = await graph.find_entities("ann smith", type="person", limit=2)
    assert people[0].entity.name == "Ann Smith"
    assert len(people) == 2
    assert all(m.entity.type == "person" for m in people)
    strict = await graph.find_entities("ann smith", min_similarity=0.99)
    assert [m.entity.name for m in strict] == ["Ann Smith"]
    assert await graph.find_entities("zzzz qqqq") == []


async def test_find_entities_uses_an_index_under_row_level_security(dl: DataLayer) -> None:
    """A trigram (GIN) index would be of no use to the application role, whose queries row-level
    security filters (pg_trgm's operators are not leakproof): the trigram table's key is."""
    await dl.tenant("default").execute(
        "INSERT INTO memory_entities (tenant_id, name, type) "
        "SELECT 'default', 'thing ' || md5(i::text), 'thing' FROM generate_series(1, 5000) i"
    )
    await dl.admin.execute("ANALYZE memory_entities, memory_entity_trigrams")
    query, params = q.find_entities("default", "thing c4ca4238a0b9", None, 10, 0.3)
    plan = await dl.tenant("default").fetch("EXPLAIN " + query, params)  # type: ignore[operator]
    text = "\n".join(str(next(iter(row.values()))) for row in plan)
    assert "memory_entity_trigrams_pkey" in text, text
    assert "Seq Scan on memory_entity_trigrams" not in text, text
    graph = dl.memory.graph
    found = await graph.find_entities("thing c4ca4238a0b9")  # md5('1') begins so
    assert found[0].entity.name == "thing c4ca4238a0b923820dcc509a6f75849b"
    # The similarity is pg_trgm's own.
    for match in found:
        own = await dl.tenant("default").fetch_value(
            "SELECT similarity(lower(%s), lower(%s))", [match.entity.name, "thing c4ca4238a0b9"]
        )
        assert match.similarity == pytest.approx(own, abs=1e-6)
    # Renaming (SQL of one's own) moves its trigrams.
    await dl.tenant("default").execute(
        "UPDATE memory_entities SET name = 'Zebra Crossing' WHERE id = %s", [found[0].entity.id]
    )
    assert [m.entity.id for m in await graph.find_entities("zebra crossing")] == [
        found[0].entity.id
    ]
    assert await graph.find_entities("!!!") == []  # no trigrams: nothing


async def test_similar_entities_by_embedding(dl: DataLayer) -> None:
    graph = dl.memory.graph
    east = await graph.upsert_entity("East", "place", embedding=[1.0, 0.0, 0.0])
    north = await graph.upsert_entity("North", "place", embedding=[0.0, 1.0, 0.0])
    await graph.upsert_entity("Up", "direction", embedding=[0.0, 0.0, 1.0])
    await graph.upsert_entity("Flat", "place", embedding=[1.0, 1.0])  # another dimension
    await graph.upsert_entity("Nowhere", "place")  # no embedding
    found = await graph.similar_entities([0.9, 0.1, 0.0])
    assert [m.entity.id for m in found[:2]] == [east.id, north.id]
    assert found[0].similarity == pytest.approx(0.9 / math.hypot(0.9, 0.1), abs=1e-5)
    assert len(found) == 3
    places = await graph.similar_entities([0.0, 0.0, 1.0], type="place", limit=1)
    assert [m.entity.type for m in places] == ["place"]
    assert [m.entity.name for m in await graph.similar_entities([1.0, 1.0])] == ["Flat"]
    with pytest.raises(ValidationError) as info:
        await graph.similar_entities([0.0, 0.0, 0.0])
    assert info.value.field == "vector"


# -- facts in time -------------------------------------------------------------------------------


async def people_and_cities(graph: KnowledgeGraph) -> tuple[Entity, Entity, Entity, Entity]:
    ann = await graph.upsert_entity("Ann", "person")
    london = await graph.upsert_entity("London", "city")
    paris = await graph.upsert_entity("Paris", "city")
    rome = await graph.upsert_entity("Rome", "city")
    return ann, london, paris, rome


async def test_a_contradicted_fact_is_gone_now_but_true_earlier_and_believed_before(
    dl: DataLayer,
) -> None:
    graph = dl.memory.graph
    ann, london, paris, _ = await people_and_cities(graph)
    first = await graph.relate(ann, "lives_in", london, valid_from=Y2020, exclusive=True)
    assert (first.version, first.valid_to, first.invalidated_at) == (1, None, None)
    before_move = datetime.now(UTC)
    await asyncio.sleep(0.01)
    moved = await graph.relate(ann, "lives_in", paris, valid_from=Y2023, exclusive=True)

    # Now: Paris only.
    assert at_now(await graph.relations(ann)) == {paris.id}
    # Earlier: London, with its closed interval, as currently believed.
    (then,) = await graph.relations(ann, as_of=Y2021)
    assert (then.id, then.target_id, then.version) == (first.id, london.id, 2)
    assert (then.valid_from, then.valid_to, then.invalidated_at) == (Y2020, Y2023, None)
    assert await graph.relations(ann, as_of=Y2020 - timedelta(days=1)) == []
    # As believed before the move was learned: London, open-ended, now and in 2024.
    (believed,) = await graph.relations(ann, known_at=before_move)
    assert (believed.id, believed.version, believed.valid_to) == (first.id, 1, None)
    assert at_now(await graph.relations(ann, as_of=Y2024, known_at=before_move)) == {london.id}
    # Nothing was deleted: the first version is invalidated, by the move.
    old, *_ = reversed(await graph.versions(first.id))
    assert old.version == 1
    assert old.invalidated_by == moved.id
    assert old.invalidated_at is not None
    assert old.invalidated_at > before_move
    assert await count(dl, "memory_relations") == 3
    # Incoming, and both ways.
    assert [r.source_id for r in await graph.relations(paris, direction="in")] == [ann.id]
    assert await graph.relations(london, direction="in") == []
    assert len(await graph.relations(london, direction="both", as_of=Y2022)) == 1


async def test_a_fact_that_arrives_late_ends_where_the_newer_one_begins(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, london, paris, rome = await people_and_cities(graph)
    newer = await graph.relate(ann, "lives_in", paris, valid_from=Y2023, exclusive=True)
    late = await graph.relate(ann, "lives_in", london, valid_from=Y2020, exclusive=True)
    assert (late.valid_from, late.valid_to) == (Y2020, Y2023)
    assert (await graph.versions(newer.id))[0].version == 1  # untouched
    # Recorded as told, ended at once by the newer fact (what erasing it would undo), then
    # as it holds; the first was never believed at any time.
    told, cut = reversed(await graph.versions(late))
    assert (told.version, told.valid_to, told.invalidated_by) == (1, None, newer.id)
    assert told.invalidated_at == told.recorded_at == cut.recorded_at
    assert (cut.version, cut.invalidated_at) == (late.version, None) == (2, None)
    assert at_now(await graph.relations(ann, as_of=Y2024, known_at=late.recorded_at)) == {paris.id}
    assert at_now(await graph.relations(ann)) == {paris.id}
    assert at_now(await graph.relations(ann, as_of=Y2021)) == {london.id}
    # One more between them: it ends London and is ended by Paris.
    middle = await graph.relate(ann, "lives_in", rome, valid_from=Y2022, exclusive=True)
    assert (middle.valid_from, middle.valid_to) == (Y2022, Y2023)
    assert at_now(await graph.relations(ann, as_of=Y2021)) == {london.id}
    (london_now,) = await graph.relations(ann, as_of=Y2021)
    assert london_now.valid_to == Y2022
    assert at_now(await graph.relations(ann, as_of=Y2022 + timedelta(days=1))) == {rome.id}


async def test_the_same_start_replaces_and_the_same_fact_is_not_stored_twice(
    dl: DataLayer,
) -> None:
    graph = dl.memory.graph
    ann, london, paris, _ = await people_and_cities(graph)
    wrong = await graph.relate(ann, "lives_in", london, valid_from=Y2020, exclusive=True)
    right = await graph.relate(ann, "lives_in", paris, valid_from=Y2020, exclusive=True)
    # Replaced outright: never true as now believed, at any time.
    assert at_now(await graph.relations(ann, as_of=Y2021)) == {paris.id}
    assert (await graph.versions(wrong.id))[0].invalidated_by == right.id
    # Stated again (same interval, or within it): the same fact, nothing written.
    rows = await count(dl, "memory_relations")
    assert await graph.relate(ann, "lives_in", paris, valid_from=Y2020, exclusive=True) == right
    assert await graph.relate(ann, "lives_in", paris, valid_from=Y2022) == right
    assert await count(dl, "memory_relations") == rows
    # With a new property: a version with it.
    tagged = await graph.relate(ann, "lives_in", paris, valid_from=Y2021, properties={"k": 1})
    assert (tagged.id, tagged.version, tagged.properties) == (right.id, 2, {"k": 1})
    assert (tagged.valid_from, tagged.valid_to) == (Y2020, None)


async def test_a_fact_stated_over_a_longer_time_is_extended(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, _, paris, _ = await people_and_cities(graph)
    await remember(dl, "default", "m1", "m2")
    first = await graph.relate(
        ann, "visited", paris, valid_from=Y2021, valid_to=Y2022, source_memory="m1"
    )
    # Touching it, from the same memory: one fact over both times.
    longer = await graph.relate(
        ann, "visited", paris, valid_from=Y2022, valid_to=Y2023, source_memory="m1"
    )
    assert (longer.id, longer.version) == (first.id, 2)
    assert (longer.valid_from, longer.valid_to) == (Y2021, Y2023)
    # Earlier, from the same memory: extended back.
    back = await graph.relate(ann, "visited", paris, valid_from=Y2020, source_memory="m1")
    assert (back.id, back.valid_from, back.valid_to) == (first.id, Y2020, None)
    # From another memory: a fact of its own (erasing either memory removes what it said).
    other = await graph.relate(
        ann, "visited", paris, valid_from=Y2020 - timedelta(days=400), source_memory="m2"
    )
    assert other.id != first.id
    assert other.source_memory == "m2"
    # Within what is known: nothing new. The fact of the same memory answers, else the
    # earliest.
    rows = await count(dl, "memory_relations")
    assert (await graph.relate(ann, "visited", paris, valid_from=Y2024)).id == other.id
    again = await graph.relate(ann, "visited", paris, valid_from=Y2024, source_memory="m1")
    assert (again.id, again.version) == (first.id, 3)
    assert await count(dl, "memory_relations") == rows


async def test_invalidate_ends_withdraws_or_leaves_a_fact(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, london, paris, rome = await people_and_cities(graph)
    fact = await graph.relate(ann, "likes", london, valid_from=Y2020)
    ended = await graph.invalidate(fact, at=Y2022)
    assert (ended.id, ended.version, ended.valid_to) == (fact.id, 2, Y2022)
    assert await graph.relations(ann) == []
    assert at_now(await graph.relations(ann, as_of=Y2021)) == {london.id}
    # Already ended by then: left as it is.
    assert await graph.invalidate(fact.id, at=Y2023) == ended
    # Ended at (or before) its start: withdrawn, never true.
    withdrawn = await graph.invalidate(fact.id, at=Y2020)
    assert withdrawn.version == 2
    assert withdrawn.invalidated_at is not None
    assert await graph.relations(ann, as_of=Y2021) == []
    with pytest.raises(Conflict, match="withdrawn"):
        await graph.invalidate(fact.id)
    # Default: ends now.
    current = await graph.relate(ann, "likes", paris, valid_from=Y2020)
    now_ended = await graph.invalidate(current.id)
    assert now_ended.valid_to is not None
    assert now_ended.valid_to > Y2024
    assert await graph.relations(ann) == []
    with pytest.raises(NotFound):
        await graph.invalidate("no-such-relation")
    with pytest.raises(NotFound):
        await graph.versions("no-such-relation")
    # A fact merged into another cannot be ended by its old id.
    a = await graph.relate(ann, "saw", rome, valid_from=Y2020, valid_to=Y2021)
    b = await graph.relate(ann, "saw", rome, valid_from=Y2022, valid_to=Y2023)
    joined = await graph.relate(ann, "saw", rome, valid_from=Y2021, valid_to=Y2022)
    assert joined.id == a.id
    assert (joined.valid_from, joined.valid_to) == (Y2020, Y2023)
    with pytest.raises(Conflict, match=f"merged into relation {a.id}"):
        await graph.invalidate(b.id)


async def test_concurrent_exclusive_facts_leave_one_state_at_a_time(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann = await graph.upsert_entity("Ann", "person")
    cities = [await graph.upsert_entity(f"City {i}", "city") for i in range(8)]
    starts = [Y2020 + timedelta(days=30 * i) for i in range(8)]
    order = list(range(8))
    random.Random(7).shuffle(order)
    await asyncio.gather(
        *(
            graph.relate(ann, "lives_in", cities[i], valid_from=starts[i], exclusive=True)
            for i in order
        )
    )
    # Whatever order they were told in: city i from start i to start i + 1.
    for i, start in enumerate(starts):
        (held,) = await graph.relations(ann, as_of=start + timedelta(days=1))
        assert held.target_id == cities[i].id
        assert held.valid_to == (starts[i + 1] if i < 7 else None)
    rows = await dl.tenant("default").fetch(
        "SELECT count(*) AS n FROM memory_relations WHERE invalidated_at IS NULL"
    )
    assert rows[0]["n"] == 8


# -- the rules, without a database: arrival order does not matter --------------------------------


class _Store:
    """What the database would hold, for plan_relate's plans."""

    def __init__(self) -> None:
        self.current: dict[str, Relation] = {}
        self.clock = 0

    def tell(self, target: str, start: datetime, end: datetime | None) -> None:
        self.clock += 1
        stamp = Y2024 + timedelta(seconds=self.clock)
        plan: Plan = plan_relate(
            list(self.current.values()),
            Statement(target, {}, start, end, None),
            exclusive=True,
            new_id=f"f{self.clock}",
        )
        for ident, _, _ in plan.ended:
            del self.current[ident]
        for v in plan.added:
            if v.invalidated_by is not None:
                continue  # recorded already invalidated: never believed
            assert v.id not in self.current, "one current version per fact"
            self.current[v.id] = Relation(
                id=v.id,
                version=v.version,
                source_id="a",
                relation="r",
                target_id=v.target_id,
                properties=v.properties,
                valid_from=v.valid_from,
                valid_to=v.valid_to,
                recorded_at=stamp,
                source_memory=None,
            )

    def at(self, moment: datetime) -> list[str]:
        return sorted(
            f.target_id
            for f in self.current.values()
            if f.valid_from <= moment and (f.valid_to is None or moment < f.valid_to)
        )


_days = st.integers(min_value=0, max_value=60)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_days, st.integers(0, 3), st.one_of(st.none(), st.integers(1, 30))),
        min_size=1,
        max_size=7,
        unique_by=lambda s: s[0],
    ),
    st.randoms(use_true_random=False),
)
def test_exclusive_facts_give_the_same_timeline_in_any_order(
    facts: list[tuple[int, int, int | None]], shuffler: random.Random
) -> None:
    """Distinct starts, targets drawn from a few (so a target is often stated again, before
    or after other targets): each state runs from its start to its own end or the next
    start, whichever comes first, however the facts arrive."""
    told = [
        (f"t{target}", Y2020 + timedelta(days=start), length) for start, target, length in facts
    ]

    def timeline(order: list[int]) -> list[list[str]]:
        store = _Store()
        for index in order:
            target, start, length = told[index]
            end = None if length is None else start + timedelta(days=length)
            store.tell(target, start, end)
        return [store.at(Y2020 + timedelta(days=d, hours=12)) for d in range(0, 100)]

    order = list(range(len(told)))
    expected = timeline(order)
    shuffler.shuffle(order)
    assert timeline(order) == expected
    for day, held in enumerate(expected):
        moment = Y2020 + timedelta(days=day, hours=12)
        started = [t for t in told if t[1] <= moment]
        if not started:
            assert held == []
            continue
        target, start, length = max(started, key=lambda t: t[1])
        alive = length is None or moment < start + timedelta(days=length)
        assert held == ([target] if alive else [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(1, 30))),
        min_size=1,
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_one_target_stated_again_from_one_start_is_one_fact_over_the_union(
    facts: list[tuple[int, int | None]], shuffler: random.Random
) -> None:
    """Of one target, statements with the same start are one fact, extended over the union
    of their intervals; with other starts, each is a state of its own. In any order."""
    told = [(Y2020 + timedelta(days=start), length) for start, length in facts]

    def timeline(order: list[int]) -> tuple[list[list[str]], int]:
        store = _Store()
        for index in order:
            start, length = told[index]
            store.tell("t", start, None if length is None else start + timedelta(days=length))
        return [store.at(Y2020 + timedelta(days=d, hours=12)) for d in range(0, 80)], len(
            store.current
        )

    order = list(range(len(told)))
    expected, facts_held = timeline(order)
    shuffler.shuffle(order)
    assert timeline(order) == (expected, facts_held)
    assert facts_held == len({start for start, _ in told})
    for day, held in enumerate(expected):
        moment = Y2020 + timedelta(days=day, hours=12)
        latest = max((s for s, _ in told if s <= moment), default=None)
        if latest is None:
            assert held == []
            continue
        ends = [None if n is None else latest + timedelta(days=n) for s, n in told if s == latest]
        alive = any(e is None or moment < e for e in ends)
        assert held == (["t"] if alive else [])


# -- walks ---------------------------------------------------------------------------------------


async def small_graph(graph: KnowledgeGraph) -> dict[str, Entity]:
    """a -> b -> c -> d, a -> c, d -> a (a cycle), c -> e (ended in 2021), isolated f."""
    nodes = {n: await graph.upsert_entity(n.upper(), "node") for n in "abcdef"}
    for source, target in ["ab", "bc", "cd", "ac", "da"]:
        await graph.relate(nodes[source], "to", nodes[target], valid_from=Y2020)
    await graph.relate(nodes["c"], "to", nodes["e"], valid_from=Y2020, valid_to=Y2021)
    await graph.relate(nodes["b"], "near", nodes["f"], valid_from=Y2020)
    return nodes


def _ids(neighbours: Sequence[Any], nodes: dict[str, Entity]) -> list[tuple[str, int]]:
    names = {e.id: n for n, e in nodes.items()}
    return [(names[n.entity.id], n.distance) for n in neighbours]


async def test_neighbours_on_a_small_graph(dl: DataLayer) -> None:
    graph = dl.memory.graph
    nodes = await small_graph(graph)
    a = nodes["a"]
    assert _ids(await graph.neighbours(a), nodes) == [("b", 1), ("c", 1)]
    assert _ids(await graph.neighbours(a, hops=2), nodes) == [
        ("b", 1),
        ("c", 1),
        ("d", 2),
        ("f", 2),
    ]
    assert _ids(await graph.neighbours(a, hops=2, relation="to"), nodes) == [
        ("b", 1),
        ("c", 1),
        ("d", 2),
    ]
    # e only while c -> e held.
    assert ("e", 2) in _ids(await graph.neighbours(a, hops=2, as_of=Y2020), nodes)
    assert _ids(await graph.neighbours(a, direction="in"), nodes) == [("d", 1)]
    assert _ids(await graph.neighbours(a, direction="both"), nodes) == [
        ("b", 1),
        ("c", 1),
        ("d", 1),
    ]
    assert _ids(await graph.neighbours(a, hops=6, relation=["to", "near"]), nodes) == [
        ("b", 1),
        ("c", 1),
        ("d", 2),
        ("f", 2),
    ]
    assert _ids(await graph.neighbours(a, hops=2, limit=3), nodes) == [
        ("b", 1),
        ("c", 1),
        ("d", 2),
    ]
    assert await graph.neighbours(nodes["f"]) == []
    with pytest.raises(NotFound):
        await graph.neighbours("nope")


async def test_paths_on_a_small_graph(dl: DataLayer) -> None:
    graph = dl.memory.graph
    nodes = await small_graph(graph)
    names = {e.id: n for n, e in nodes.items()}

    def spelled(paths: Sequence[Any]) -> list[str]:
        return ["".join(names[i] for i in p.entity_ids) for p in paths]

    found = await graph.paths(nodes["a"], nodes["d"])
    assert spelled(found) == ["acd", "abcd"]  # shortest first, no cycle through d -> a
    first = found[0]
    assert first.hops == 2
    assert [(names[r.source_id], names[r.target_id]) for r in first.relations] == [
        ("a", "c"),
        ("c", "d"),
    ]
    assert spelled(await graph.paths(nodes["a"], nodes["d"], max_hops=2)) == ["acd"]
    assert spelled(await graph.paths(nodes["a"], nodes["d"], limit=1)) == ["acd"]
    assert await graph.paths(nodes["d"], nodes["b"], max_hops=1) == []
    assert spelled(await graph.paths(nodes["d"], nodes["b"])) == ["dab"]
    # Against the arrows: d <- c <- a is a way from d to a too.
    assert spelled(await graph.paths(nodes["d"], nodes["a"], direction="both")) == [
        "da",
        "dca",
        "dcba",
    ]
    assert spelled(await graph.paths(nodes["d"], nodes["a"], direction="in", max_hops=2)) == ["dca"]
    assert await graph.paths(nodes["a"], nodes["e"]) == []
    assert spelled(await graph.paths(nodes["a"], nodes["e"], as_of=Y2020)) == ["ace", "abce"]
    assert await graph.paths(nodes["a"], nodes["f"], relation="to") == []
    with pytest.raises(NotFound) as info:
        await graph.paths(nodes["a"], "nope")
    assert "target" in str(info.value)


async def load_graph(
    dl: DataLayer, entities: int, relations: int, seed: int
) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """``entities`` nodes and ``relations`` random facts among them, loaded with one
    statement each; a tenth of the facts ended in 2021 and a tenth invalidated (neither
    counts now). Returns the ids and the facts (id, source, target, counts now)."""
    rng = random.Random(seed)
    ids = [f"n{i}" for i in range(entities)]
    await dl.tenant("default").execute(
        "INSERT INTO memory_entities (tenant_id, id, name, type) "
        "SELECT 'default', x, x, 'node' FROM unnest(%s::text[]) AS x",
        [ids],
    )
    facts: list[tuple[str, str, str, bool]] = []
    ends: list[datetime | None] = []
    invalid: list[datetime | None] = []
    for i in range(relations):
        source, target = rng.sample(ids, 2)
        kind = rng.random()
        facts.append((f"r{i}", source, target, kind >= 0.2))
        ends.append(Y2021 if kind < 0.1 else None)
        invalid.append(Y2022 if 0.1 <= kind < 0.2 else None)
    await dl.tenant("default").execute(
        "INSERT INTO memory_relations (tenant_id, id, source_id, relation, target_id, "
        "valid_from, valid_to, invalidated_at) "
        "SELECT 'default', i, s, 'to', t, %s, e, v "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], "
        "%s::timestamptz[]) AS u(i, s, t, e, v)",
        [
            Y2020,
            [f[0] for f in facts],
            [f[1] for f in facts],
            [f[2] for f in facts],
            ends,
            invalid,
        ],
    )
    await dl.admin.execute("VACUUM ANALYZE memory_relations")
    return ids, facts


def simple_paths(
    out: dict[str, list[tuple[str, str]]], source: str, target: str, most: int
) -> set[tuple[str, ...]]:
    """Every path from source to target of at most ``most`` edges passing no node twice, as
    the tuple of its edge ids: depth-first, the plain way."""
    found: set[tuple[str, ...]] = set()

    def walk(node: str, seen: list[str], taken: list[str]) -> None:
        if node == target:
            found.add(tuple(taken))
            return
        if len(taken) == most:
            return
        for edge, nxt in out[node]:
            if nxt not in seen:
                walk(nxt, [*seen, nxt], [*taken, edge])

    walk(source, [source], [])
    return found


def distances(out: dict[str, list[tuple[str, str]]], source: str, most: int) -> dict[str, int]:
    seen = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if seen[node] == most:
            continue
        for _, nxt in out[node]:
            if nxt not in seen:
                seen[nxt] = seen[node] + 1
                queue.append(nxt)
    del seen[source]
    return seen


async def test_paths_and_neighbours_match_a_breadth_first_search_on_100k_relations(
    dl: DataLayer,
) -> None:
    started = time.perf_counter()
    ids, facts = await load_graph(dl, entities=20_000, relations=100_000, seed=18)
    assert await count(dl, "memory_relations") == 100_000
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for ident, source, target, counts in facts:
        if counts:
            out[source].append((ident, target))
    # Walked by index under row-level security (its conditions are all leakproof).
    query, params = q.neighbours("default", ids[0], 2, None, "both", None, None, 100)
    plan = await dl.tenant("default").fetch("EXPLAIN " + query, params)  # type: ignore[operator]
    text = "\n".join(str(next(iter(row.values()))) for row in plan)
    assert "memory_relations_out" in text, text
    assert "memory_relations_in" in text, text
    assert "Seq Scan" not in text, text
    graph = dl.memory.graph
    rng = random.Random(4)
    checked = {2: 0, 3: 0}
    for source in rng.sample(ids, 40):
        near = distances(out, source, 3)
        assert {
            n.entity.id: n.distance for n in await graph.neighbours(source, hops=2, limit=1000)
        } == {n: d for n, d in near.items() if d <= 2}
        for hops in (2, 3):
            targets = sorted(n for n, d in near.items() if d == hops)
            if not targets:
                continue
            target = rng.choice(targets)
            expected = simple_paths(out, source, target, 3)
            found = await graph.paths(source, target, max_hops=3, limit=1000)
            assert {tuple(r.id for r in p.relations) for p in found} == expected
            assert [p.hops for p in found] == sorted(p.hops for p in found)
            assert found[0].hops == hops
            for path in found:
                assert (path.entity_ids[0], path.entity_ids[-1]) == (source, target)
                assert len(set(path.entity_ids)) == len(path.entity_ids)
            checked[hops] += 1
    assert min(checked.values()) >= 10, checked
    assert time.perf_counter() - started < 60


# -- memories, tenancy, erasure -------------------------------------------------------------------


async def test_mentions_and_what_a_memory_is_about(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, london, paris, rome = await people_and_cities(graph)
    await remember(dl, "default", "m1", "m2", "m3")
    assert await graph.link("m1", [ann, london.id]) == 2
    assert await graph.link("m1", [ann, paris]) == 1  # ann was linked already
    assert await graph.link("m2", [rome]) == 1
    moved = await graph.relate(ann, "lives_in", paris, valid_from=Y2023, source_memory="m2")
    home = await graph.relate(ann, "born_in", london, valid_from=Y2020)
    await graph.relate(ann, "visited", rome, valid_from=Y2020)  # rome: not mentioned by m1
    mentioned = await graph.mentions(["m1", "m2", "m3"])
    assert sorted(e.name for e in mentioned["m1"]) == ["Ann", "London", "Paris"]
    assert [e.name for e in mentioned["m2"]] == ["Rome"]
    assert mentioned["m3"] == []
    about = await graph.about(["m1", "m2", "m3"])
    entities, facts = about["m1"]
    assert sorted(e.name for e in entities) == ["Ann", "London", "Paris"]
    assert sorted(f.id for f in facts) == sorted([moved.id, home.id])
    # m2 mentions only Rome, but Ann's move was learned from it.
    assert [f.id for f in about["m2"][1]] == [moved.id]
    assert about["m3"] == ([], [])
    assert await graph.about([]) == {}
    assert await graph.mentions(iter([])) == {}
    # Before the move was true: among m1's entities only the birth place held.
    assert [f.id for f in (await graph.about(["m1"], as_of=Y2021))["m1"][1]] == [home.id]
    with pytest.raises(NotFound, match="memory"):
        await graph.link("m9", [ann])
    with pytest.raises(NotFound, match="ghost"):
        await graph.link("m3", [ann, "ghost"])
    assert (await graph.mentions(["m3"]))["m3"] == []  # nothing linked
    with pytest.raises(NotFound, match="source_memory"):
        await graph.relate(ann, "knows", rome, source_memory="m9")


async def test_erasing_a_memory_erases_what_was_learned_from_it(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, london, paris, _ = await people_and_cities(graph)
    await remember(dl, "default", "m1", "m2")
    await graph.link("m1", [ann, london])
    learned = await graph.relate(ann, "lives_in", london, valid_from=Y2020, source_memory="m1")
    await graph.relate(ann, "lives_in", paris, valid_from=Y2022, exclusive=True, source_memory="m2")
    assert len(await graph.versions(learned.id)) == 2  # ended by the move: two versions
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm1'")
    with pytest.raises(NotFound):
        await graph.versions(learned.id)  # every version went
    assert (await graph.mentions(["m1"]))["m1"] == []
    assert at_now(await graph.relations(ann)) == {paris.id}  # m2's fact stays
    # Forgetting an entity takes its facts and mentions, both ends.
    await graph.link("m2", [paris, ann])
    await graph.forget_entity(paris)
    assert await graph.relations(ann) == []
    assert [e.name for e in (await graph.mentions(["m2"]))["m2"]] == ["Ann"]
    with pytest.raises(NotFound):
        await graph.forget_entity(paris.id)


async def test_tenants_see_only_their_own_graph(dl: DataLayer) -> None:
    a, b = dl.tenant("a").memory.graph, dl.tenant("b").memory.graph
    ann = await a.upsert_entity("Ann", "person", embedding=[1.0, 0.0])
    bob = await a.upsert_entity("Bob", "person")
    fact = await a.relate(ann, "knows", bob)
    assert await b.find_entities("Ann") == []
    assert await b.similar_entities([1.0, 0.0]) == []
    for call in (
        b.get_entity(ann.id),
        b.relations(ann.id),
        b.neighbours(ann.id),
        b.paths(ann.id, bob.id),
        b.relate(ann.id, "knows", bob.id),
        b.invalidate(fact.id),
        b.versions(fact.id),
        b.forget_entity(ann.id),
    ):
        with pytest.raises(NotFound):
            await call
    own = await b.upsert_entity("Ann", "person")
    assert own.id != ann.id
    assert await b.relations(own) == []
    # The default tenant's view sees neither.
    assert await dl.memory.graph.find_entities("Ann") == []
    # Without a tenant, row-level security shows nothing at all.
    async with other_connection(dl, "c") as conn:
        cursor = await conn.execute("SELECT count(*) FROM memory_relations")
        assert await cursor.fetchone() == {"count": 0}
    assert [n.entity.id for n in await a.neighbours(ann)] == [bob.id]
    report = await dl.subjects.erase_tenant("a")
    assert report.removed["memory_entities"] == 2
    assert report.removed["memory_relations"] == 1
    assert await count(dl, "memory_entities", "a") == 0
    assert await count(dl, "memory_entities", "b") == 1


# -- bad input and cancellation ------------------------------------------------------------------


async def test_bad_input_is_refused_with_a_typed_error_naming_it(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann, london, _, _ = await people_and_cities(graph)
    await remember(dl, "default", "m1")
    fact = await graph.relate(ann, "lives_in", london, valid_from=Y2020)
    naive = datetime(2024, 1, 1)
    cases: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: graph.upsert_entity("", "person"), "name"),
        (lambda: graph.upsert_entity("   ", "person"), "name"),
        (lambda: graph.upsert_entity(5, "person"), "name"),  # type: ignore[arg-type]
        (lambda: graph.upsert_entity("x" * 513, "person"), "name"),
        (lambda: graph.upsert_entity("Ann", ""), "type"),
        (lambda: graph.upsert_entity("Ann", "t" * 65), "type"),
        (lambda: graph.upsert_entity("Ann", "p", properties=[1]), "properties"),  # type: ignore[arg-type]
        (lambda: graph.upsert_entity("Ann", "p", properties={"x": math.nan}), "properties"),
        (lambda: graph.upsert_entity("Ann", "p", embedding="abc"), "embedding"),  # type: ignore[arg-type]
        (lambda: graph.upsert_entity("Ann", "p", embedding=[]), "embedding"),
        (lambda: graph.upsert_entity("Ann", "p", embedding=[1.0, math.inf]), "embedding"),
        (lambda: graph.upsert_entity("Ann", "p", embedding=[0.0, 0.0]), "embedding"),
        (lambda: graph.get_entity(""), "entity_id"),
        (lambda: graph.get_entity(None), "entity_id"),  # type: ignore[arg-type]
        (lambda: graph.get_entity(ann, include_vector="yes"), "include_vector"),  # type: ignore[arg-type]
        (lambda: graph.find_entities(""), "name"),
        (lambda: graph.find_entities("ann", limit=0), "limit"),
        (lambda: graph.find_entities("ann", limit=5000), "limit"),
        (lambda: graph.find_entities("ann", min_similarity=1.5), "min_similarity"),
        (lambda: graph.find_entities("ann", min_similarity=math.nan), "min_similarity"),
        (lambda: graph.find_entities("ann", type=""), "type"),
        (lambda: graph.similar_entities([math.nan]), "vector"),
        (lambda: graph.similar_entities([1.0], limit=-1), "limit"),
        (lambda: graph.forget_entity(5), "entity_id"),  # type: ignore[arg-type]
        (lambda: graph.relate("", "r", london), "source"),
        (lambda: graph.relate(ann, "", london), "relation"),
        (lambda: graph.relate(ann, "r" * 129, london), "relation"),
        (lambda: graph.relate(ann, "r", 7), "target"),  # type: ignore[arg-type]
        (lambda: graph.relate(ann, "r", london, valid_from=naive), "valid_from"),
        (lambda: graph.relate(ann, "r", london, valid_to="2024"), "valid_to"),  # type: ignore[arg-type]
        (lambda: graph.relate(ann, "r", london, valid_from=Y2022, valid_to=Y2021), "valid_to"),
        (lambda: graph.relate(ann, "r", london, valid_to=Y2021), "valid_to"),  # before now
        (lambda: graph.relate(ann, "r", london, source_memory=""), "source_memory"),
        (lambda: graph.relate(ann, "r", london, properties={1: 2}), "properties"),  # type: ignore[dict-item]
        (lambda: graph.relate(ann, "r", london, exclusive=1), "exclusive"),  # type: ignore[arg-type]
        (lambda: graph.invalidate(""), "relation_id"),
        (lambda: graph.invalidate(fact, at=naive), "at"),
        (lambda: graph.versions(3), "relation_id"),  # type: ignore[arg-type]
        (lambda: graph.relations(ann, direction="up"), "direction"),  # type: ignore[arg-type]
        (lambda: graph.relations(ann, relation=[]), "relation"),
        (lambda: graph.relations(ann, relation=[""]), "relation[0]"),
        (lambda: graph.relations(ann, as_of=naive), "as_of"),
        (lambda: graph.relations(ann, known_at="now"), "known_at"),  # type: ignore[arg-type]
        (lambda: graph.neighbours(ann, hops=0), "hops"),
        (lambda: graph.neighbours(ann, hops=7), "hops"),
        (lambda: graph.neighbours(ann, hops=True), "hops"),  # type: ignore[arg-type]
        (lambda: graph.paths(ann, ann), "target"),
        (lambda: graph.paths(ann, london, max_hops=9), "max_hops"),
        (lambda: graph.paths(ann, london, limit=0), "limit"),
        (lambda: graph.link("", [ann]), "memory_id"),
        (lambda: graph.link("m1", ann), "entity_ids"),  # type: ignore[arg-type]
        (lambda: graph.link("m1", [ann, 5]), "entity_ids[1]"),  # type: ignore[list-item]
        (lambda: graph.mentions("m1"), "memory_ids"),
        (lambda: graph.mentions([None]), "memory_ids[0]"),  # type: ignore[list-item]
        (lambda: graph.about(["m1"], as_of=naive), "as_of"),
        (lambda: graph.about(["m1"] * 2000), "memory_ids"),
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as info:
            await call()
        assert info.value.field == field, (field, str(info.value))
    # Nothing was written by any of them.
    assert await count(dl, "memory_entities") == 4
    assert await count(dl, "memory_relations") == 1
    assert await count(dl, "memory_mentions") == 0


async def dense_graph(dl: DataLayer, size: int) -> None:
    """Every entity related to every other: paths up to six hops number in the billions."""
    ids = [f"d{i}" for i in range(size)]
    scope = dl.tenant("default")
    await scope.execute(
        "INSERT INTO memory_entities (tenant_id, id, name, type) "
        "SELECT 'default', x, x, 'dense' FROM unnest(%s::text[]) AS x",
        [ids],
    )
    await scope.execute(
        "INSERT INTO memory_relations (tenant_id, id, source_id, relation, target_id, "
        "valid_from) SELECT 'default', s || '-' || t, s, 'to', t, %s "
        "FROM unnest(%s::text[]) AS s, unnest(%s::text[]) AS t WHERE s <> t",
        [Y2020, ids, ids],
    )


async def active_graph_queries(dl: DataLayer) -> int:
    value = await dl.admin.fetch_value(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE 'WITH RECURSIVE p(node%%' AND pid <> pg_backend_pid()"
    )
    return int(value)


async def test_a_long_paths_query_is_cancelled_on_the_server(dl: DataLayer) -> None:
    await dense_graph(dl, 40)
    graph = dl.memory.graph
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(graph.paths("d0", "d1", max_hops=6, direction="both"), 0.5)
    assert time.perf_counter() - started < 5
    # The server stopped running it (not merely the client waiting).
    for _ in range(100):
        if not await active_graph_queries(dl):
            break
        await asyncio.sleep(0.1)
    assert await active_graph_queries(dl) == 0
    # The layer goes on working.
    assert len(await graph.paths("d0", "d1", max_hops=2, limit=100)) == 39


async def test_calls_waiting_for_a_facts_lock_can_be_cancelled(dl: DataLayer) -> None:
    """relate() and invalidate() wait for the transaction that holds the facts of the same
    source and relation; cut short, they leave nothing behind, and the lock is free after."""
    graph = dl.memory.graph
    ann, london, paris, rome = await people_and_cities(graph)
    earlier = await graph.relate(ann, "lives_in", rome, valid_from=Y2020, valid_to=Y2021)
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with dl.transaction():
            await graph.relate(ann, "lives_in", london, valid_from=Y2021, exclusive=True)
            entered.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await entered.wait()
    for call in (
        lambda: graph.relate(ann, "lives_in", paris, valid_from=Y2022, exclusive=True),
        lambda: graph.invalidate(earlier, at=Y2020 + timedelta(days=10)),
    ):
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(), 0.5)
        assert time.perf_counter() - started < 5
    release.set()
    await holder
    # The cancelled calls wrote nothing, and the facts' lock is free again.
    assert at_now(await graph.relations(ann)) == {london.id}
    assert (await graph.versions(earlier))[0].version == 1
    moved = await asyncio.wait_for(
        graph.relate(ann, "lives_in", paris, valid_from=Y2022, exclusive=True), 10
    )
    assert at_now(await graph.relations(ann)) == {moved.target_id}
    ended = await asyncio.wait_for(graph.invalidate(earlier, at=Y2020 + timedelta(days=10)), 10)
    assert ended.version == 2


async def test_errors_are_the_layers_own(dl: DataLayer) -> None:
    """What the database refuses comes out as an AgencyDataError, never the driver's."""
    graph = dl.memory.graph
    ann = await graph.upsert_entity("Ann", "person")
    with pytest.raises(AgencyDataError):
        await graph.relate(ann, "knows", "nobody")


def test_the_graph_through_the_sync_face(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    with SyncDataLayer(make_config(database, redis_url, tmp_path)) as layer:
        graph = layer.tenant("acme").memory.graph
        ann = graph.upsert_entity("Ann", "person")
        bob = graph.upsert_entity("Bob", "person")
        fact = graph.relate(ann, "knows", bob, valid_from=Y2020)
        assert [n.entity.id for n in graph.neighbours(ann)] == [bob.id]
        assert [r.id for r in graph.paths(ann, bob)[0].relations] == [fact.id]
        assert graph.find_entities("ann")[0].entity.id == ann.id
        with pytest.raises(ValidationError):
            graph.neighbours(ann, hops=0)
