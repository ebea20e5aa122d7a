"""Agent memory (dl.memory) against the real servers: recall ranking on constructed cases,
deduplication with history, forgetting (soft, and hard with no trace left), recall as of a
past time, scopes and tenants, consolidation, pruning and the change feed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agency_data import ConfigError, Conflict, DataLayer, NotFound, ValidationError
from agency_data.memory import Memory, ScoreParts
from tests.conftest import DatabaseDsn, make_config, other_connection
from tests.memory_support import DIM, unit

DAY = 86_400.0


def words(texts: list[str]) -> list[list[float]]:
    """A bag-of-words embedder: texts sharing words are similar (enough for tests)."""
    out = []
    for text in texts:
        vector = np.zeros(64)
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.blake2b(word.encode(), digest_size=4).hexdigest(), 16) % 64] += 1
        out.append(list(vector / (np.linalg.norm(vector) or 1.0)))
    return out


@pytest.fixture
async def mem(database: DatabaseDsn, redis_url: str, tmp_path: Path) -> AsyncIterator[DataLayer]:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        memory={
            "half_life": 30 * DAY,
            "half_lives": {"working": 3600.0},
            "weights": {"similarity": 0.6, "recency": 0.2, "importance": 0.15, "access": 0.05},
        },
    )
    async with DataLayer(config) as dl:
        await dl.memory.setup(dimension=DIM)
        yield dl


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def test_a_fresh_unimportant_memory_beats_an_old_important_one_by_default(
    mem: DataLayer,
) -> None:
    memory = mem.memory
    fresh = await memory.remember("a1", unit(1, 0), text="fresh", importance=0.1, dedup=False)
    old = await memory.remember(
        "a1", unit(1, 0), text="old", importance=0.9, at=ago(60 * DAY), dedup=False
    )
    hits = await memory.recall("a1", unit(1, 0), limit=2)
    assert [h.memory.id for h in hits] == [fresh.id, old.id]
    first, second = hits
    # Same similarity (1), recency 1 and 0.25 (two half-lives), importance 0.1 and 0.9.
    assert first.signals.similarity == pytest.approx(1.0)
    assert first.signals.recency == pytest.approx(1.0, abs=1e-4)
    assert second.signals.recency == pytest.approx(0.25, abs=1e-4)
    assert first.score == pytest.approx(0.6 + 0.2 + 0.15 * 0.1, abs=1e-4)
    assert second.score == pytest.approx(0.6 + 0.2 * 0.25 + 0.15 * 0.9, abs=1e-4)
    for hit in hits:
        assert math.isclose(hit.parts.total, hit.score, rel_tol=1e-12)
        assert hit.parts.importance == pytest.approx(0.15 * hit.memory.importance)
    # Weighted towards importance, the old one wins.
    weighted = await memory.recall(
        "a1",
        unit(1, 0),
        limit=2,
        weights={"similarity": 0.6, "recency": 0.2, "importance": 0.5, "access": 0.0},
    )
    assert [h.memory.id for h in weighted] == [old.id, fresh.id]
    assert weighted[0].parts.importance == pytest.approx(0.45)


async def test_recency_decays_by_each_kinds_half_life(mem: DataLayer) -> None:
    memory = mem.memory
    made = {}
    for kind, age in [("fact", 30 * DAY), ("working", 3600.0), ("working", 7200.0)]:
        done = await memory.remember(
            "a1", unit(1, 0), text=f"{kind} {age}", kind=kind, at=ago(age), dedup=False
        )
        made[(kind, age)] = done.id
    hits = {h.memory.id: h for h in await memory.recall("a1", unit(1, 0), limit=10)}
    assert hits[made[("fact", 30 * DAY)]].signals.recency == pytest.approx(0.5, abs=1e-3)
    assert hits[made[("working", 3600.0)]].signals.recency == pytest.approx(0.5, abs=1e-3)
    assert hits[made[("working", 7200.0)]].signals.recency == pytest.approx(0.25, abs=1e-3)


async def test_recalls_boost_a_memory_once_counted(mem: DataLayer) -> None:
    memory = mem.memory
    one = await memory.remember("a1", unit(1, 0), text="one", metadata={"n": 1}, dedup=False)
    two = await memory.remember("a1", unit(1, 0), text="two", metadata={"n": 2}, dedup=False)
    for _ in range(3):
        assert [h.memory.id for h in await memory.recall("a1", unit(1, 0), filter={"n": 2})] == [
            two.id
        ]
    assert await memory.flush() == 1
    hits = await memory.recall("a1", unit(1, 0), limit=2)
    assert [h.memory.id for h in hits] == [two.id, one.id]
    assert hits[0].memory.access_count == 3
    assert hits[0].signals.access == pytest.approx(math.log(4) / math.log(101))
    assert hits[0].parts.access == pytest.approx(0.05 * math.log(4) / math.log(101))
    assert hits[1].signals.access == 0.0


async def test_a_near_duplicate_updates_the_memory_and_keeps_its_history(mem: DataLayer) -> None:
    memory = mem.memory
    with mem.as_actor("planner"):
        first = await memory.remember(
            "a1", unit(1, 0.1), text="Alice lives in Paris", subject="alice.home"
        )
    with mem.as_actor("scribe"):
        again = await memory.remember(
            "a1", unit(1, 0.12), text="Alice lives in Berlin", subject="alice.home", importance=0.8
        )
    assert (again.id, again.event, again.version) == (first.id, "updated", 2)
    assert again.similarity is not None
    assert again.similarity > 0.99
    # The same text again only refreshes it.
    same = await memory.remember(
        "a1", unit(1, 0.12), text="Alice lives in Berlin", subject="alice.home"
    )
    assert (same.id, same.event, same.version) == (first.id, "merged", 3)
    # Another subject, or not close enough: a memory of its own.
    other = await memory.remember("a1", unit(1, 0.1), text="Bob lives in Paris", subject="bob.home")
    far = await memory.remember("a1", unit(0, 1), text="Alice likes tea", subject="alice.home")
    assert other.event == far.event == "created"
    assert len({first.id, other.id, far.id}) == 3

    got = await memory.get(first.id)
    assert (got.text, got.version, got.importance) == ("Alice lives in Berlin", 3, 0.8)
    versions = await memory.history(first.id)
    assert [(v.version, v.event, v.text, v.actor) for v in versions] == [
        (1, "created", "Alice lives in Paris", "planner"),
        (2, "updated", "Alice lives in Berlin", "scribe"),
        (3, "merged", "Alice lives in Berlin", versions[2].actor),
    ]
    assert versions[0].valid_to == versions[1].valid_from or versions[0].valid_to is not None
    assert versions[-1].valid_to is None
    hits = await memory.recall("a1", unit(1, 0.1), limit=5)
    assert [h.memory.text for h in hits].count("Alice lives in Paris") == 0


async def test_concurrent_near_duplicates_meet_in_one_memory(mem: DataLayer) -> None:
    memory = mem.memory
    done = await asyncio.gather(
        *(memory.remember("a1", unit(1, 0.01 * i), text=f"v{i}", subject="s") for i in range(8))
    )
    assert len({d.id for d in done}) == 1
    assert sorted(d.version for d in done) == list(range(1, 9))


async def test_recall_as_of_ranks_the_versions_current_then(mem: DataLayer) -> None:
    memory = mem.memory
    first = await memory.remember("a1", unit(1, 0), text="Alice lives in Paris", subject="alice")
    await asyncio.sleep(0.05)
    between = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await memory.remember("a1", unit(1, 0.05), text="Alice lives in Berlin", subject="alice")
    later = await memory.remember("a1", unit(0, 1), text="Bob is new", subject="bob")
    then = await memory.recall("a1", unit(1, 0), limit=5, as_of=between)
    assert [(h.memory.id, h.memory.text, h.memory.version) for h in then] == [
        (first.id, "Alice lives in Paris", 1)
    ]
    now = await memory.recall("a1", unit(1, 0), limit=5)
    assert [h.memory.text for h in now] == ["Alice lives in Berlin", "Bob is new"]
    assert later.id not in {h.memory.id for h in then}
    # Forgotten after `between`: still recalled as of then.
    await memory.forget(first.id)
    assert [h.memory.id for h in await memory.recall("a1", unit(1, 0), as_of=between)] == [first.id]
    assert first.id not in {h.memory.id for h in await memory.recall("a1", unit(1, 0))}


async def test_scopes_agent_team_tenant_and_shared(mem: DataLayer) -> None:
    memory = mem.memory
    mine = await memory.remember("a1", unit(1, 0), text="a1's")
    theirs = await memory.remember("a2", unit(1, 0.01), text="a2's")
    outside = await memory.remember("a3", unit(1, 0.02), text="a3's")
    shared = await memory.remember(None, unit(1, 0.03), text="everyone's")

    def ids(hits: list[Any]) -> set[str]:
        return {h.memory.id for h in hits}

    assert ids(await memory.recall("a1", unit(1, 0), limit=10)) == {mine.id, shared.id}
    assert ids(await memory.recall("a1", unit(1, 0), limit=10, shared=False)) == {mine.id}
    assert ids(await memory.recall(["a1", "a2"], unit(1, 0), limit=10)) == {
        mine.id,
        theirs.id,
        shared.id,
    }
    assert ids(await memory.recall(None, unit(1, 0), limit=10)) == {
        mine.id,
        theirs.id,
        outside.id,
        shared.id,
    }
    assert [m.id for m in await memory.list(shared=True)] == [shared.id]
    # Another tenant sees none of it, and its own only.
    other = mem.tenant("other").memory
    assert await other.recall(None, unit(1, 0)) == []
    with pytest.raises(NotFound):
        await other.get(mine.id)
    assert await other.forget(mine.id) == 0
    theirs_too = await other.remember("a1", unit(1, 0), text="other tenant's")
    assert ids(await other.recall("a1", unit(1, 0))) == {theirs_too.id}
    assert mine.id in ids(await memory.recall("a1", unit(1, 0)))


async def test_soft_forget_keeps_history_hard_forget_leaves_no_trace(mem: DataLayer) -> None:
    memory = mem.memory
    marker = "zebra-7781 secret phone number"
    kept = await memory.remember("a1", unit(0, 1), text="unrelated")
    soft = await memory.remember("a1", unit(1, 0), text="soft " + marker, subject="s1")
    hard = await memory.remember("a1", unit(1, 0.5), text="hard " + marker, subject="s2")
    await memory.remember("a1", unit(1, 0.52), text="hard v2 " + marker, subject="s2")
    await memory.recall("a1", unit(1, 0))
    await memory.flush()

    assert await memory.forget(soft.id) == 1
    assert soft.id not in {h.memory.id for h in await memory.recall("a1", unit(1, 0), limit=10)}
    forgotten = await memory.get(soft.id)
    assert forgotten.forgotten_at is not None
    # Its collection row is gone; the text read is its last version's.
    assert forgotten.text == "soft " + marker
    assert [v.event for v in await memory.history(soft.id)] == ["created", "forgotten"]
    assert soft.id not in {m.id for m in await memory.list("a1")}
    assert soft.id in {m.id for m in await memory.list("a1", forgotten=True)}

    # Erasure: by subject, the soft-forgotten one too by id.
    assert await memory.forget(agent_id="a1", subject="s2", hard=True) == 1
    assert await memory.forget([soft.id], hard=True) == 1
    for gone in (soft.id, hard.id):
        with pytest.raises(NotFound):
            await memory.get(gone)
        with pytest.raises(NotFound):
            await memory.history(gone)
    # No table of the database holds the text any more; nor does Redis.
    tables = await mem.admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_type = 'BASE TABLE'"
    )
    for table in tables:
        found = await mem.admin.fetch_value(
            f'SELECT count(*) FROM "{table["table_name"]}" t WHERE t::text LIKE %s',
            ["%zebra-7781%"],
        )
        assert found == 0, table["table_name"]
    async for key in mem.redis.scan_iter(count=1000):
        kind = await mem.redis.type(key)
        if kind in (b"string", "string"):
            assert b"zebra-7781" not in (await mem.redis.get(key) or b""), key
    assert [m.id for m in await memory.list("a1")] == [kept.id]


async def test_a_rolled_back_remember_leaves_nothing(mem: DataLayer) -> None:
    memory = mem.memory

    async def remember_then_fail() -> None:
        async with mem.transaction():
            await memory.remember("a1", unit(1, 0), text="never")
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await remember_then_fail()
    assert await memory.list("a1", forgotten=True) == []
    assert await mem.admin.fetch_value("SELECT count(*) FROM memory_history") == 0
    assert await mem.admin.fetch_value("SELECT count(*) FROM emb_memories") == 0


async def test_consolidation_replaces_old_unimportant_memories_with_a_summary(
    mem: DataLayer,
) -> None:
    memory = mem.memory
    old = [
        await memory.remember(
            "a1",
            unit(1, i),
            text=f"coffee note {i}",
            subject="coffee",
            importance=0.2,
            at=ago((10 + i) * DAY),
            dedup=False,
        )
        for i in range(3)
    ]
    important = await memory.remember(
        "a1", unit(0, 0, 1), text="big", subject="coffee", importance=0.9, at=ago(20 * DAY)
    )
    recent = await memory.remember(
        "a1", unit(0, 0, 0, 1), text="new", subject="coffee", importance=0.1
    )
    lonely = await memory.remember(
        "a1", unit(0, 1), text="alone", subject="tea", importance=0.1, at=ago(20 * DAY)
    )
    seen: list[list[str]] = []

    async def summarise(group: list[Any]) -> str:
        seen.append([m.text for m in group])
        return "summary: " + "; ".join(m.text for m in group)

    made = await memory.consolidate("a1", summarise, older_than=7 * DAY, max_importance=0.3)
    assert seen == [["coffee note 2", "coffee note 1", "coffee note 0"]]
    (summary,) = made
    got = await memory.get(summary.id)
    assert (got.kind, got.subject, got.importance) == ("summary", "coffee", 0.2)
    assert got.text == "summary: coffee note 2; coffee note 1; coffee note 0"
    assert got.happened_at == (await memory.get(old[0].id)).happened_at
    replaced = await memory.replaced(summary.id)
    assert {m.id for m in replaced} == {o.id for o in old}
    assert [m.text for m in replaced] == ["coffee note 2", "coffee note 1", "coffee note 0"]
    assert await memory.replaced(important.id) == []
    with pytest.raises(NotFound):
        await memory.replaced("no-such-summary")
    assert all(m.consolidated_into == summary.id and m.forgotten_at for m in replaced)
    assert (await memory.history(old[0].id))[-1].event == "consolidated"
    live = {m.id for m in await memory.list("a1")}
    assert live == {summary.id, important.id, recent.id, lonely.id}
    # Nothing left to consolidate.
    assert await memory.consolidate("a1", summarise, older_than=7 * DAY) == []


async def test_prune_by_age_importance_and_count(mem: DataLayer) -> None:
    memory = mem.memory
    made = {}
    for name, importance, age in [
        ("old-low", 0.1, 40),
        ("old-high", 0.9, 40),
        ("new-low", 0.1, 1),
        ("new-mid", 0.5, 1),
    ]:
        done = await memory.remember(
            "a1", unit(1, importance), text=name, importance=importance, at=ago(age * DAY),
            dedup=False,
        )  # fmt: skip
        made[name] = done.id
    other = await memory.remember("a2", unit(1, 0), text="a2's", importance=0.0, at=ago(99 * DAY))
    assert await memory.prune("a1", older_than=30 * DAY, below_importance=0.5) == 1
    assert made["old-low"] not in {m.id for m in await memory.list("a1")}
    assert await memory.prune("a1", keep=2) == 1
    assert {m.text for m in await memory.list("a1")} == {"old-high", "new-mid"}
    assert (await memory.get(other.id)).forgotten_at is None


async def test_texts_are_embedded_by_the_given_embedder(mem: DataLayer) -> None:
    memory = mem.memory.using("notes")
    await mem.memory.setup(dimension=64, collection="notes", embedder=words)
    await memory.remember("a1", "Alice lives in Berlin", subject="alice")
    await memory.remember("a1", "the weather is cold today")
    hits = await memory.recall("a1", "where does Alice live?", limit=1)
    assert hits[0].memory.text == "Alice lives in Berlin"
    plain = mem.tenant("t").memory
    with pytest.raises(ValidationError, match="embedder"):
        await plain.remember("a1", "no embedder for memories")


async def test_memory_changes_reach_other_agents(mem: DataLayer) -> None:
    memory = mem.memory
    start = await mem.changes.position() if hasattr(mem.changes, "position") else None
    made = await memory.remember("a1", unit(1, 0), text="news")
    await memory.remember("a1", unit(1, 0.01), text="news, again")
    await memory.forget(made.id)
    stream = memory.changes(since=start or "start", wait=False)
    seen = [(c.op, c.memory_id, c.version, c.forgotten) async for c in stream]
    assert seen == [
        ("insert", made.id, 1, False),
        ("update", made.id, 2, False),
        ("update", made.id, 3, True),
    ]


async def test_bad_input_is_a_validation_error_and_writes_nothing(mem: DataLayer) -> None:
    memory = mem.memory
    bad_calls: list[Any] = [
        memory.remember("", unit(1, 0)),
        memory.remember("a1", [1.0, 2.0]),
        memory.remember("a1", [float("nan")] * DIM),
        memory.remember("a1", unit(1, 0), importance=1.5),
        memory.remember("a1", unit(1, 0), importance=True),
        memory.remember("a1", unit(1, 0), kind=""),
        memory.remember("a1", unit(1, 0), subject=" "),
        memory.remember("a1", unit(1, 0), metadata=["x"]),  # type: ignore[arg-type]
        memory.remember("a1", unit(1, 0), at=datetime(2024, 1, 1)),
        memory.remember("a1", unit(1, 0), dedup=2.0),
        memory.remember("a1", "text", text="twice"),
        memory.remember(7, unit(1, 0)),  # type: ignore[arg-type]
        memory.recall("a1", unit(1, 0), limit=0),
        memory.recall("a1", unit(1, 0), filter={"$bad": 1}),
        memory.recall("a1", unit(1, 0), weights={"similarity": -1}),
        memory.recall("a1", unit(1, 0), weights={"nope": 1}),
        memory.recall([], unit(1, 0)),
        memory.recall("a1", ""),
        memory.recall("a1", unit(1, 0), as_of="yesterday"),  # type: ignore[arg-type]
        memory.forget(),
        memory.forget([""]),
        memory.get(""),
        memory.history(None),  # type: ignore[arg-type]
        memory.prune("a1"),
        memory.prune("a1", keep=-1),
        memory.consolidate("a1", "not callable"),  # type: ignore[arg-type]
        memory.consolidate("a1", len, min_group=1),
        memory.list(limit=0),
    ]
    for call in bad_calls:
        with pytest.raises(ValidationError):
            await call
    assert await mem.admin.fetch_value("SELECT count(*) FROM memories") == 0
    with pytest.raises(NotFound, match="setup"):
        await memory.using("nowhere").recall("a1", unit(1, 0))
    with pytest.raises(Conflict, match="8 dimensions"):
        await mem.memory.setup(dimension=DIM + 1)


async def test_a_summariser_that_returns_no_text_changes_nothing(mem: DataLayer) -> None:
    memory = mem.memory
    for i in range(2):
        await memory.remember(
            "a1", unit(1, i), text=f"n{i}", importance=0.1, at=ago(30 * DAY), dedup=False
        )
    with pytest.raises(ValidationError, match="summarise"):
        await memory.consolidate("a1", lambda group: None)  # type: ignore[arg-type,return-value]
    assert len(await memory.list("a1")) == 2


async def test_cancelled_calls_leave_nothing_half_done(mem: DataLayer) -> None:
    gate = asyncio.Event()

    async def slow(texts: list[str]) -> list[list[float]]:
        await gate.wait()
        return words(texts)

    await mem.memory.setup(dimension=64, collection="slow", embedder=slow)
    memory: Memory = mem.memory.using("slow")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(memory.remember("a1", "never stored"), 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(memory.recall("a1", "never answered"), 0.2)

    async def summarise(group: list[Any]) -> str:
        await gate.wait()
        return "never"

    direct = mem.memory
    for i in range(2):
        await direct.remember(
            "a1", unit(1, i), text=f"n{i}", importance=0.1, at=ago(30 * DAY), dedup=False
        )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(direct.consolidate("a1", summarise), 0.2)
    assert await mem.admin.fetch_value("SELECT count(*) FROM memories") == 2
    assert len(await direct.list("a1")) == 2


async def test_memory_text_is_sealed_where_the_collection_seals_it(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    kek = base64.b64encode(os.urandom(32)).decode()
    config = make_config(
        database,
        redis_url,
        tmp_path,
        encryption={
            "fields": ["memories.content", "memories.metadata"],
            "kek": kek,
            "key_store": tmp_path / "keys",
        },
    )
    async with DataLayer(config) as dl:
        await dl.memory.setup(dimension=DIM)
        memory = dl.memory
        made = await memory.remember(
            "a1",
            unit(1, 0),
            text="Ann's diagnosis",
            metadata={"ward": "ward-seven-b"},
            subject="ann",
        )
        await memory.remember("a1", unit(1, 0.01), text="Ann's new diagnosis", subject="ann")
        between = datetime.now(UTC)
        await memory.remember("a1", unit(1, 0.02), text="Ann's latest diagnosis", subject="ann")
        for table in ("emb_memories", "memory_history"):
            rows = await dl.admin.fetch(f"SELECT t::text AS row FROM {table} t")
            assert rows
            assert not any("diagnosis" in r["row"] or "ward-seven" in r["row"] for r in rows), table
        versions = await memory.history(made.id)
        assert [v.text for v in versions] == [
            "Ann's diagnosis",
            "Ann's new diagnosis",
            "Ann's latest diagnosis",
        ]
        assert versions[0].metadata == {"ward": "ward-seven-b"}
        (then,) = await memory.recall("a1", unit(1, 0), as_of=between)
        assert (then.memory.text, then.memory.metadata) == (
            "Ann's new diagnosis",
            {"ward": "ward-seven-b"},
        )
        (now,) = await memory.recall("a1", unit(1, 0))
        assert now.memory.text == "Ann's latest diagnosis"


async def test_erasing_a_subject_takes_its_memories_and_every_version(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(database, redis_url, tmp_path, subjects={"collections": ["person"]})
    async with DataLayer(config) as dl:
        await dl.memory.setup(dimension=DIM)
        memory = dl.tenant("acme").memory
        about = {"person": "ann@example.com"}
        ann = await memory.remember(
            "a1", unit(1, 0), text="ann-mark v1", metadata=about, subject="ann"
        )
        await memory.remember("a1", unit(1, 0.01), text="ann-mark v2", subject="ann")
        bob = await memory.remember("a1", unit(0, 1), text="bob", metadata={"person": "bob"})
        report = await dl.subjects.erase("acme", "ann@example.com")
        assert report.removed["memories"] == 1
        with pytest.raises(NotFound):
            await memory.get(ann.id)
        assert [m.id for m in await memory.list("a1")] == [bob.id]
        for table in ("emb_memories", "memory_history", "memories"):
            found = await dl.admin.fetch_value(
                f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%%ann-mark%%'"
            )
            assert found == 0, table


async def test_a_duplicate_forgotten_while_remembering_is_not_revived(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(make_config(database, redis_url, tmp_path)) as dl:
        await dl.memory.setup(dimension=DIM)
        memory = dl.memory
        first = await memory.remember("a1", unit(1, 0), text="first", subject="s")
        async with other_connection(dl) as conn:
            # A forget under way holds the memory's row when remember finds it.
            await conn.execute("UPDATE memories SET forgotten_at = now() WHERE id = %s", [first.id])
            pending = asyncio.create_task(
                memory.remember("a1", unit(1, 0.01), text="second", subject="s")
            )
            await asyncio.sleep(0.3)
            assert not pending.done()
        again = await pending
        assert again.event == "created"
        assert again.id != first.id
        assert (await memory.get(first.id)).version == 1
        assert [m.text for m in await memory.list("a1")] == ["second"]


async def test_recall_expands_results_with_what_they_mention(mem: DataLayer) -> None:
    memory = mem.memory
    graph = memory.graph
    moved = await memory.remember("a1", unit(1, 0), text="Ann moved to Berlin", subject="ann")
    other = await memory.remember("a1", unit(1, 0.3), text="Bob likes tea", subject="bob")
    ann = await graph.upsert_entity("Ann", "person")
    paris = await graph.upsert_entity("Paris", "city")
    berlin = await graph.upsert_entity("Berlin", "city")
    start = datetime.now(UTC) - timedelta(days=300)
    await graph.relate(ann, "lives_in", paris, valid_from=start)
    between = datetime.now(UTC) - timedelta(days=100)
    moving = datetime.now(UTC) - timedelta(days=10)
    await graph.relate(
        ann, "lives_in", berlin, valid_from=moving, source_memory=moved.id, exclusive=True
    )
    await graph.link(moved.id, [ann, berlin])
    hits = {h.memory.id: h for h in await memory.recall("a1", unit(1, 0), limit=2, expand=True)}
    now = hits[moved.id]
    assert {e.name for e in now.entities} == {"Ann", "Berlin"}
    assert [(r.relation, r.target_id) for r in now.relations] == [("lives_in", berlin.id)]
    assert hits[other.id].entities == []
    assert hits[other.id].relations == []
    # Without expand, nothing is looked up.
    plain = await memory.recall("a1", unit(1, 0), limit=1)
    assert plain[0].entities == []
    # Before the move, the graph's answer is the earlier fact, which the move ended.
    facts = await graph.relations(ann, as_of=between)
    assert [f.target_id for f in facts] == [paris.id]


async def test_a_vector_without_direction_is_refused_not_ranked_first(mem: DataLayer) -> None:
    memory = mem.memory
    kept = await memory.remember("a1", unit(1, 0), text="real")
    with pytest.raises(ValidationError, match="zero vector"):
        await memory.remember("a1", [0.0] * DIM, text="no direction")
    with pytest.raises(ValidationError, match="zero vector"):
        await memory.recall("a1", [0.0] * DIM)

    def blank(texts: list[str]) -> list[list[float]]:
        return [[0.0] * DIM for _ in texts]

    with pytest.raises(ValidationError, match="embedder gave a zero vector"):
        await memory.with_embedder(blank).remember("a1", "!!!")
    # One already stored (a collection row written by other means) ranks last, not first.
    await mem.embeddings.collection("memories").store(
        {"id": "zero", "entity_type": "fact", "entity_id": "a1", "vector": [0.0] * DIM}
    )
    await mem.admin.execute(
        "INSERT INTO memories (tenant_id, id, collection, agent_id, kind, importance, "
        "happened_at) VALUES ('default', 'zero', 'memories', 'a1', 'fact', 0.5, now())"
    )
    hits = await memory.recall("a1", unit(1, 0), limit=2)
    assert [h.memory.id for h in hits] == [kept.id, "zero"]
    assert hits[1].signals.similarity == 0.0


async def test_weights_given_replace_only_the_ones_named(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    weights = {"similarity": 0.9, "recency": 0.0, "importance": 0.1, "access": 0.0}
    config = make_config(database, redis_url, tmp_path, memory={"weights": weights})
    async with DataLayer(config) as dl:
        await dl.memory.setup(dimension=DIM)
        await dl.memory.remember("a1", unit(1, 0), text="x", importance=1.0)
        (hit,) = await dl.memory.recall("a1", unit(1, 0), weights={"similarity": 1.0})
        assert hit.parts == ScoreParts(similarity=1.0, recency=0.0, importance=0.1, access=0.0)
        with pytest.raises(ValidationError, match=r"weights\.similarity"):
            await dl.memory.recall("a1", unit(1, 0), weights={"similarity": float("nan")})
        with pytest.raises(ValidationError, match="all 0"):
            await dl.memory.recall("a1", unit(1, 0), weights={"similarity": 0, "importance": 0})
    with pytest.raises(ConfigError, match="all 0"):
        make_config(database, redis_url, tmp_path, memory={"weights": dict.fromkeys(weights, 0.0)})


async def test_a_hard_forget_leaves_the_feed_only_that_it_was_deleted(mem: DataLayer) -> None:
    memory = mem.memory
    made = await memory.remember("secret-agent", unit(1, 0), text="x", kind="secret-kind")
    await memory.remember("secret-agent", unit(1, 0.01), text="y", kind="secret-kind")
    assert await memory.forget(made.id, hard=True) == 1
    rows = await mem.admin.fetch(
        "SELECT op, old, new FROM changes WHERE table_name = 'memories' AND row_id = %s",
        [made.id],
    )
    assert rows == [{"op": "delete", "old": None, "new": None}]
