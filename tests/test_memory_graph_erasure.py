"""Erasing a fact of the knowledge graph undoes what its statement did to the other facts
(migration 0019's trigger on memory_relations deletes): on every path that erases one (hard
forget, subject erasure, forget_entity, SQL of one's own as the application, the owner's
cascades, the superuser), confined to the erased rows' tenant, against relate()'s lock, and
checked against a graph that was never told the erased facts."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agency_data import DataLayer
from agency_data.memory import Entity, KnowledgeGraph, Relation
from tests.conftest import DatabaseDsn, make_config

Y2020 = datetime(2020, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return Y2020 + timedelta(days=n)


async def remember(dl: DataLayer, tenant: str, *ids: str) -> None:
    """Rows in memories (raw SQL is enough for the graph)."""
    await dl.tenant(tenant).execute(
        "INSERT INTO memories (tenant_id, id, collection, kind, importance, happened_at) "
        "SELECT %s, x, 'memories', 'fact', 0.5, now() FROM unnest(%s::text[]) AS x",
        [tenant, list(ids)],
    )


async def mentioning(dl: DataLayer, tenant: str, moment: datetime) -> int:
    """Versions of the tenant's facts that begin or end at ``moment``, believed or not."""
    value = await dl.tenant(tenant).fetch_value(
        "SELECT count(*) FROM memory_relations WHERE valid_from = %s OR valid_to = %s",
        [moment, moment],
    )
    return int(value)


WAYS = ["forget_hard", "subject_erasure", "sql_as_app", "superuser", "facts_deleted", "entity"]


@pytest.mark.parametrize("way", WAYS)
async def test_every_way_of_erasing_a_fact_gives_back_what_it_ended(
    way: str, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, subjects={"collections": ["person"]})
    async with DataLayer(config) as dl:
        await dl.memory.setup(dimension=2)
        places: dict[str, dict[str, Entity]] = {}
        facts: dict[str, tuple[Relation, Relation]] = {}
        for tenant in ("acme", "other"):
            memory = dl.tenant(tenant).memory
            graph = memory.graph
            old = await memory.remember("a1", [1.0, 0.0], text="Ann lives in Berlin", dedup=False)
            new = await memory.remember(
                "a1",
                [0.0, 1.0],
                text="Ann moved to Paris",
                metadata={"person": "ann@example.com"},
                dedup=False,
            )
            named = {n: await graph.upsert_entity(n, "city") for n in ("Berlin", "Paris")}
            named["Ann"] = await graph.upsert_entity("Ann", "person")
            places[tenant] = named
            berlin = await move(graph, named["Ann"], named["Berlin"], 0, old.id)
            paris = await move(graph, named["Ann"], named["Paris"], 1000, new.id)
            facts[tenant] = (berlin, paris)
            assert len(await graph.versions(berlin)) == 2  # ended by the move
        acme = dl.tenant("acme")
        graph = acme.memory.graph
        berlin, paris = facts["acme"]
        assert paris.source_memory is not None
        if way == "forget_hard":
            await acme.memory.forget(paris.source_memory, hard=True)
        elif way == "subject_erasure":
            report = await dl.subjects.erase("acme", "ann@example.com")
            assert report.removed["memories"] == 1
        elif way == "sql_as_app":
            await acme.execute("DELETE FROM memories WHERE id = %s", [paris.source_memory])
        elif way == "superuser":
            # Outside row-level security: only the erased rows' tenant changes.
            with psycopg.connect(database.superuser, autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM memories WHERE tenant_id = 'acme' AND id = %s",
                    [paris.source_memory],
                )
        elif way == "facts_deleted":
            await acme.execute("DELETE FROM memory_relations WHERE id = %s", [paris.id])
        else:
            await graph.forget_entity(places["acme"]["Paris"])
        # As if the move had never been told: Berlin is believed open-ended again, and no
        # version anywhere holds the date only the erased fact gave.
        ann = places["acme"]["Ann"]
        assert [r.target_id for r in await graph.relations(ann)] == [berlin.target_id]
        assert [r.target_id for r in await graph.relations(ann, as_of=day(1500))] == [
            berlin.target_id
        ]
        (only,) = await graph.versions(berlin)
        assert (only.version, only.valid_to) == (1, None)
        assert (only.invalidated_at, only.invalidated_by) == (None, None)
        assert await mentioning(dl, "acme", day(1000)) == 0
        # The other tenant, with the same facts, is as it was.
        other = dl.tenant("other").memory.graph
        kept_berlin, kept_paris = facts["other"]
        held = await other.relations(places["other"]["Ann"])
        assert [r.id for r in held] == [kept_paris.id]
        assert len(await other.versions(kept_berlin)) == 2
        assert await mentioning(dl, "other", day(1000)) == 2


async def test_tenants_with_the_same_ids_are_undone_apart(dl: DataLayer) -> None:
    """The cascade from memories runs as the table owner, which the tenant policy does not
    bind: the trigger's own conditions keep it to the erased rows' tenant."""
    for tenant in ("t1", "t2"):
        await remember(dl, tenant, "m1", "m2")
        await dl.tenant(tenant).execute(
            "INSERT INTO memory_entities (tenant_id, id, name, type) VALUES "
            "(%(t)s, 'ann', 'Ann', 'person'), (%(t)s, 'ber', 'Berlin', 'city'), "
            "(%(t)s, 'par', 'Paris', 'city')",
            {"t": tenant},
        )
        # What relate() writes for Berlin from day 0 (m1), then Paris from day 1000 (m2).
        await dl.tenant(tenant).execute(
            "INSERT INTO memory_relations (tenant_id, id, version, source_id, relation, "
            "target_id, valid_from, valid_to, recorded_at, invalidated_at, invalidated_by, "
            "source_memory) VALUES "
            "(%(t)s, 'f-ber', 1, 'ann', 'lives_in', 'ber', %(d0)s, NULL, %(r1)s, %(r2)s, "
            " 'f-par', 'm1'), "
            "(%(t)s, 'f-ber', 2, 'ann', 'lives_in', 'ber', %(d0)s, %(d1)s, %(r2)s, NULL, NULL, "
            " 'm1'), "
            "(%(t)s, 'f-par', 1, 'ann', 'lives_in', 'par', %(d1)s, NULL, %(r2)s, NULL, NULL, "
            " 'm2')",
            {
                "t": tenant,
                "d0": day(0),
                "d1": day(1000),
                "r1": day(2000),
                "r2": day(2001),
            },
        )
    await dl.tenant("t1").execute("DELETE FROM memories WHERE id = 'm2'")
    one, two = dl.tenant("t1").memory.graph, dl.tenant("t2").memory.graph
    assert [(r.version, r.valid_to) for r in await one.versions("f-ber")] == [(1, None)]
    assert [(r.version, r.valid_to) for r in await two.versions("f-ber")] == [
        (2, day(1000)),
        (1, None),
    ]
    assert [r.target_id for r in await two.relations("ann")] == ["par"]


async def cities(graph: KnowledgeGraph, *names: str) -> list[Entity]:
    return [await graph.upsert_entity(n, "city") for n in names]


async def move(
    graph: KnowledgeGraph,
    who: Entity,
    place: Entity,
    start: int,
    memory: str | None = None,
    *,
    relation: str = "lives_in",
    properties: dict[str, Any] | None = None,
) -> Relation:
    """``who`` is in ``place`` from day ``start`` (exclusive: one place at a time), as told
    by ``memory``."""
    return await graph.relate(
        who,
        relation,
        place,
        valid_from=day(start),
        source_memory=memory,
        properties=properties,
        exclusive=True,
    )


async def test_a_late_fact_gets_back_its_own_end_up_to_the_next_state(dl: DataLayer) -> None:
    graph = dl.memory.graph
    await remember(dl, "default", "m-ber", "m-par", "m-rom")
    ann = await graph.upsert_entity("Ann", "person")
    berlin, paris, rome = await cities(graph, "Berlin", "Paris", "Rome")
    moved = await move(graph, ann, paris, 1000, "m-par")
    later = await move(graph, ann, rome, 1500, "m-rom")
    # Told late: it ends where Paris begins.
    late = await move(graph, ann, berlin, 0, "m-ber")
    assert (late.version, late.valid_to) == (2, day(1000))
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm-par'")
    # Without Paris, Berlin runs until the next state told, Rome.
    (now,) = await graph.relations(ann, as_of=day(1200))
    assert (now.id, now.valid_from, now.valid_to) == (late.id, day(0), day(1500))
    newest, first = await graph.versions(late)
    assert (first.version, first.valid_to, first.invalidated_by) == (1, None, later.id)
    assert newest.version == 2
    assert await mentioning(dl, "default", day(1000)) == 0
    assert [r.target_id for r in await graph.relations(ann)] == [rome.id]
    # Erasing Rome too: Berlin as it was told, open-ended, one version.
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm-rom'")
    (only,) = await graph.versions(late)
    assert (only.version, only.valid_to, only.invalidated_at) == (1, None, None)
    assert moved.id not in {r.id for r in await graph.relations(ann, as_of=day(1200))}


async def test_erasing_the_middle_of_a_chain_keeps_later_changes(dl: DataLayer) -> None:
    """Berlin from day 0, Paris from 1000 (ends Berlin), Rome from 500 (ends Berlin again,
    and is itself ended by Paris): erasing Paris leaves Berlin ended by Rome, Rome open."""
    graph = dl.memory.graph
    await remember(dl, "default", "m1", "m2", "m3")
    ann = await graph.upsert_entity("Ann", "person")
    berlin, paris, rome = await cities(graph, "Berlin", "Paris", "Rome")
    b = await move(graph, ann, berlin, 0, "m1")
    await move(graph, ann, paris, 1000, "m2")
    r = await move(graph, ann, rome, 500, "m3")
    assert (r.valid_to, len(await graph.versions(b))) == (day(1000), 3)
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm2'")
    held = [
        (x.target_id, x.valid_from, x.valid_to)
        for moment in (100, 2000)
        for x in await graph.relations(ann, as_of=day(moment))
    ]
    assert held == [(berlin.id, day(0), day(500)), (rome.id, day(500), None)]
    # Berlin's history: as told (ended by Rome), then ended at Rome's start; Paris's cut gone.
    newest, first = await graph.versions(b)
    assert (first.version, first.valid_to, first.invalidated_by) == (1, None, r.id)
    assert (newest.version, newest.valid_to, newest.invalidated_at) == (3, day(500), None)
    assert await mentioning(dl, "default", day(1000)) == 0
    # Then Rome (Berlin's versions now skip a number): Berlin as told, alone.
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm3'")
    (only,) = await graph.versions(b)
    assert (only.version, only.valid_to, only.invalidated_at) == (1, None, None)
    assert [x.target_id for x in await graph.relations(ann, as_of=day(2000))] == [berlin.id]


async def test_a_version_that_kept_the_erased_end_gets_the_told_one(dl: DataLayer) -> None:
    """Berlin ended by Paris, then Berlin told again from its memory with a new property:
    that version kept Paris's date, and erasing Paris gives it Berlin's own end."""
    graph = dl.memory.graph
    await remember(dl, "default", "m1", "m2")
    ann = await graph.upsert_entity("Ann", "person")
    berlin, paris = await cities(graph, "Berlin", "Paris")
    b = await move(graph, ann, berlin, 0, "m1")
    await move(graph, ann, paris, 1000, "m2")
    tagged = await move(graph, ann, berlin, 0, "m1", properties={"street": "Unter den Linden"})
    assert (tagged.version, tagged.valid_to) == (3, day(1000))
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm2'")
    newest, first = await graph.versions(b)
    assert (newest.version, newest.valid_to, newest.invalidated_at) == (3, None, None)
    assert newest.properties == {"street": "Unter den Linden"}
    assert (first.version, first.invalidated_by) == (1, b.id)
    assert await mentioning(dl, "default", day(1000)) == 0


async def test_of_two_states_given_back_from_one_moment_the_later_told_holds(
    dl: DataLayer,
) -> None:
    """C from day 10 (m0), B from day 20 (m1), B from day 10 (m2: replaces C), A from day 10
    (m3: replaces B). Erasing m1 and m2 gives back both C and A from day 10: A, told after
    C, holds, as it would had neither been told."""
    graph = dl.memory.graph
    await remember(dl, "default", "m0", "m1", "m2", "m3")
    ann = await graph.upsert_entity("Ann", "person")
    a, b, c = await cities(graph, "A", "B", "C")
    first = await graph.relate(
        ann, "in", c, valid_from=day(10), valid_to=day(30), source_memory="m0", exclusive=True
    )
    await move(graph, ann, b, 20, "m1", relation="in")
    await move(graph, ann, b, 10, "m2", relation="in")
    last = await move(graph, ann, a, 10, "m3", relation="in")
    assert (last.valid_to, [r.target_id for r in await graph.relations(ann)]) == (
        day(20),
        [b.id],
    )
    await dl.tenant("default").execute("DELETE FROM memories WHERE id IN ('m1', 'm2')")
    (held,) = await graph.relations(ann, relation="in", as_of=day(15))
    assert (held.id, held.valid_to) == (last.id, None)
    assert (await graph.versions(first))[0].invalidated_by == last.id


async def test_a_partial_delete_undoes_nothing_and_a_withdrawn_fact_comes_back(
    dl: DataLayer,
) -> None:
    graph = dl.memory.graph
    await remember(dl, "default", "m1", "m2")
    ann = await graph.upsert_entity("Ann", "person")
    berlin, paris = await cities(graph, "Berlin", "Paris")
    b = await move(graph, ann, berlin, 0)
    p = await move(graph, ann, paris, 10, "m1", properties={"a": 1})
    await move(graph, ann, paris, 10, "m1", properties={"b": 2})
    # One version of Paris deleted: the fact is still there, and Berlin stays ended.
    await dl.tenant("default").execute(
        "DELETE FROM memory_relations WHERE id = %s AND version = 1", [p.id]
    )
    assert [r.target_id for r in await graph.relations(ann)] == [paris.id]
    assert len(await graph.versions(b)) == 2
    # Replaced outright (the same start) by a fact then erased: believed again.
    wrong = await move(graph, ann, berlin, 0, relation="born_in")
    right = await move(graph, ann, paris, 0, "m2", relation="born_in")
    assert [r.id for r in await graph.relations(ann, relation="born_in")] == [right.id]
    await dl.tenant("default").execute("DELETE FROM memories WHERE id = 'm2'")
    (back,) = await graph.relations(ann, relation="born_in")
    assert (back.id, back.version, back.invalidated_by) == (wrong.id, 1, None)


async def test_erasing_a_tenant_with_ended_facts(dl: DataLayer) -> None:
    for tenant in ("a", "b"):
        graph = dl.tenant(tenant).memory.graph
        await remember(dl, tenant, "m1")
        ann = await graph.upsert_entity("Ann", "person")
        berlin, paris = await cities(graph, "Berlin", "Paris")
        await move(graph, ann, berlin, 0)
        await move(graph, ann, paris, 9, "m1")
    report = await dl.subjects.erase_tenant("a")
    assert report.removed["memory_relations"] == 3
    assert await dl.tenant("a").fetch_value("SELECT count(*) FROM memory_relations") == 0
    assert await dl.tenant("b").fetch_value("SELECT count(*) FROM memory_relations") == 3


async def test_relate_waits_for_an_erasure_under_way(dl: DataLayer) -> None:
    """The trigger takes relate()'s lock of the source and relation it changes: a relate()
    waits for the erasing transaction (and can be cut short), then sees what it gave back."""
    graph = dl.memory.graph
    await remember(dl, "default", "m1", "m2")
    ann = await graph.upsert_entity("Ann", "person")
    berlin, paris, rome = await cities(graph, "Berlin", "Paris", "Rome")
    b = await move(graph, ann, berlin, 0, "m1")
    await move(graph, ann, paris, 100, "m2")
    entered, release = asyncio.Event(), asyncio.Event()

    scope = dl.tenant("default")

    async def erase() -> None:
        async with scope.transaction():
            await scope.execute("DELETE FROM memories WHERE id = 'm2'")
            entered.set()
            await release.wait()

    holder = asyncio.create_task(erase())
    await asyncio.wait_for(entered.wait(), 10)
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            graph.relate(ann, "lives_in", rome, valid_from=day(200), exclusive=True), 0.5
        )
    assert time.perf_counter() - started < 5
    release.set()
    await holder
    moved = await asyncio.wait_for(
        graph.relate(ann, "lives_in", rome, valid_from=day(200), exclusive=True), 10
    )
    (then,) = await graph.relations(ann, as_of=day(150))
    assert (then.id, then.valid_to) == (b.id, day(200))
    assert [r.id for r in await graph.relations(ann)] == [moved.id]


# -- against a graph never told the erased facts --------------------------------------------------


def intervals(facts: list[Relation], names: dict[str, str]) -> list[tuple[str, int, int | None]]:
    def days(moment: datetime) -> int:
        return (moment - Y2020).days

    return sorted(
        (names[f.target_id], days(f.valid_from), None if f.valid_to is None else days(f.valid_to))
        for f in facts
    )


async def current(dl: DataLayer, source: str) -> list[Relation]:
    rows = await dl.tenant("default").fetch(
        "SELECT * FROM memory_relations WHERE source_id = %s AND invalidated_at IS NULL",
        [source],
    )
    return [Relation(**{k: v for k, v in row.items() if k != "tenant_id"}) for row in rows]


async def test_erasing_memories_leaves_the_graph_as_if_never_told(dl: DataLayer) -> None:
    """Random exclusive timelines (targets stated again, the same start told twice, bounded
    and open ends), each statement from a memory of its own, told in a random order, some
    told again with a property; a random set of the memories erased (at once or one by
    one). What the erased graph holds now is what a graph told only the rest, in the same
    order, holds."""
    graph = dl.memory.graph
    rng = random.Random(18)
    targets = await cities(graph, "A", "B", "C")
    names = {e.id: n for n, e in zip("ABC", targets, strict=True)}
    started = time.perf_counter()
    cases = 0
    while cases < 150:
        told: list[tuple[int, int, int | None]] = []
        seen: set[tuple[int, int]] = set()
        for _ in range(rng.randint(2, 6)):
            target, start = rng.randrange(3), 5 * rng.randint(0, 8)
            if (target, start) in seen:
                continue  # a fact told twice from two memories is kept once (stated again)
            seen.add((target, start))
            told.append((target, start, rng.choice([None, 5 * rng.randint(1, 6)])))
        rng.shuffle(told)
        erased = set(rng.sample(range(len(told)), rng.randint(1, len(told))))
        source = await graph.upsert_entity(f"erased {cases}", "person")
        fresh = await graph.upsert_entity(f"fresh {cases}", "person")
        memories = [f"c{cases}-{i}" for i in range(len(told))]
        await remember(dl, "default", *memories)
        steps = list(range(len(told)))
        # Some told again by their memory with a property of their own (a version each).
        steps += [rng.randrange(len(told)) for _ in range(rng.randint(0, 2))]
        for step, i in enumerate(steps):
            target, start, length = told[i]
            end = None if length is None else day(start + length)
            for who, memory in ((source, memories[i]), (fresh, None)):
                if who is fresh and i in erased:
                    continue
                await graph.relate(
                    who,
                    "in",
                    targets[target],
                    valid_from=day(start),
                    valid_to=end,
                    source_memory=memory,
                    properties={"step": step} if step >= len(told) else None,
                    exclusive=True,
                )
        gone = [memories[i] for i in erased]
        rng.shuffle(gone)
        if rng.random() < 0.5:
            await dl.tenant("default").execute("DELETE FROM memories WHERE id = ANY(%s)", [gone])
        else:
            for memory in gone:
                await dl.tenant("default").execute("DELETE FROM memories WHERE id = %s", [memory])
        left = await current(dl, source.id)
        expected = await current(dl, fresh.id)
        assert intervals(left, names) == intervals(expected, names), (told, sorted(erased))
        assert len({f.id for f in left}) == len(left)  # one believed version per fact
        cases += 1
    assert time.perf_counter() - started < 60
