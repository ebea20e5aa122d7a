"""Edges of the knowledge graph's bi-temporal rules: restated and erased facts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from agency_data import DataLayer

Y2020 = datetime(2020, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return Y2020 + timedelta(days=n)


async def test_exclusive_timeline_with_a_target_restated_does_not_depend_on_order(
    dl: DataLayer,
) -> None:
    graph = dl.memory.graph
    told = [("A", 0), ("B", 10), ("A", 20)]
    timelines = {}
    for index, order in enumerate(itertools.permutations(range(len(told)))):
        ann = await graph.upsert_entity(f"Ann {index}", "person")
        places = {name: await graph.upsert_entity(f"{name} {index}", "city") for name in "AB"}
        names = {entity.id: name for name, entity in places.items()}
        for k in order:
            target, start = told[k]
            await graph.relate(
                ann, "lives_in", places[target], valid_from=day(start), exclusive=True
            )
        timelines[order] = [
            sorted(names[r.target_id] for r in await graph.relations(ann, as_of=day(d)))
            for d in (5, 15, 25)
        ]
    assert all(t == [["A"], ["B"], ["A"]] for t in timelines.values()), timelines


async def test_restating_a_fact_a_later_one_ended_stores_nothing_new(dl: DataLayer) -> None:
    graph = dl.memory.graph
    ann = await graph.upsert_entity("Ann", "person")
    a = await graph.upsert_entity("A", "city")
    b = await graph.upsert_entity("B", "city")
    first = await graph.relate(ann, "lives_in", a, valid_from=day(0), exclusive=True)
    await graph.relate(ann, "lives_in", b, valid_from=day(5 * 365), exclusive=True)
    before = await graph.versions(first)
    again = await graph.relate(ann, "lives_in", a, valid_from=day(0), exclusive=True)
    assert (again.id, again.version) == (before[0].id, before[0].version)
    assert len(await graph.versions(first)) == len(before)


async def test_erasing_a_memory_undoes_what_its_exclusive_fact_ended(dl: DataLayer) -> None:
    await dl.memory.setup(dimension=2)
    memory = dl.memory
    graph = memory.graph
    old = await memory.remember("a1", [1.0, 0.0], text="Ann lives in Berlin", dedup=False)
    new = await memory.remember("a1", [0.0, 1.0], text="Ann moved to Paris", dedup=False)
    ann = await graph.upsert_entity("Ann", "person")
    berlin = await graph.upsert_entity("Berlin", "city")
    paris = await graph.upsert_entity("Paris", "city")
    await graph.relate(
        ann, "lives_in", berlin, valid_from=day(0), source_memory=old.id, exclusive=True
    )
    await graph.relate(
        ann, "lives_in", paris, valid_from=day(1000), source_memory=new.id, exclusive=True
    )
    await memory.forget(new.id, hard=True)
    now = [r.target_id for r in await graph.relations(ann)]
    assert now == [berlin.id]
    (current,) = [r for r in await graph.relations(ann, as_of=day(500))]
    assert current.valid_to is None
