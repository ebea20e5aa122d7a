"""Agent memory (``dl.memory``) on a synthetic long conversation (see :mod:`bench.conversation`),
against plain vector search over the same statements.

Ours: every statement remembered for one agent as an application would, facts with
``subject="<entity>.<attribute>"`` and chit-chat without, at its simulated time, deduplication
on (the default bound); questions answered by ``recall`` with the default weights. The
baseline: every statement stored as it is (no deduplication, no scoring) in a plain collection
with an HNSW index, questions answered by ``find_similar``. Both read the same vectors from the
same embedder (:class:`bench.conversation.HashEmbedder`), computed once beforehand so that the
figures measure the data layer, not the embedder (whose own speed is reported beside them).

Figures: recall@1 and recall@5 of a right memory for questions about facts that changed and
about facts that never did; recall's latency beside ``find_similar``'s; ``remember``'s
throughput (dedup and history on) beside the plain collection's ``store`` of the same rows,
one caller and eight; what share of changes and restatements deduplication merged.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from psycopg import sql

from agency_data import DataLayer
from agency_data.memory import Memory
from agency_data.memory.models import Remembered
from agency_data.vectors.collection import Collection
from bench.context import Bench
from bench.conversation import Conversation, HashEmbedder, Question, Statement, generate
from bench.harness import Result, paired_latency

__all__ = [
    "AGENT",
    "DIM",
    "Ranks",
    "ask",
    "exact_ranks",
    "first_right",
    "memory",
    "recall_at",
    "remember_all",
    "store_all",
]

T = TypeVar("T")
AGENT = "assistant"
DIM = 384
PLAIN = "bench_memory_plain"
CALLERS = 8
MONTH = 30 * 86_400.0
NO_RECENCY = {"recency": 0.0}


@dataclass
class Ranks:
    """Where each question's first right memory came (0-based), None when not in the top k."""

    updated: list[int | None]
    stable: list[int | None]


def first_right(ids: Sequence[T], right: set[T]) -> int | None:
    """The position of the first of ``ids`` that is in ``right``, None if none is."""
    return next((n for n, found in enumerate(ids) if found in right), None)


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    """The share of questions whose right memory came in the top ``k``."""
    if not ranks:
        raise ValueError("no questions: recall@k is undefined")
    return sum(1 for r in ranks if r is not None and r < k) / len(ranks)


async def ask(
    search: Callable[[np.ndarray], Awaitable[list[str]]],
    questions: Sequence[Question],
    vectors: np.ndarray,
    right: Sequence[set[str]],
) -> Ranks:
    """Each question's vector to ``search`` (ids, best first); where the right one came."""
    ranks = Ranks([], [])
    for question, vector, accepted in zip(questions, vectors, right, strict=True):
        found = first_right(await search(vector), accepted)
        (ranks.updated if question.type == "updated" else ranks.stable).append(found)
    return ranks


def exact_ranks(
    queries: np.ndarray, vectors: np.ndarray, questions: Sequence[Question], k: int = 5
) -> Ranks:
    """Plain similarity without an index (numpy, exact): where each question's answering
    statement came in the top ``k`` of every statement. The index's approximation apart,
    what the plain baseline would score."""
    ranks = Ranks([], [])
    for start in range(0, len(questions), 256):
        similarities = queries[start : start + 256] @ vectors.T
        nearest = np.argpartition(-similarities, k, axis=1)[:, :k]
        for row, question in enumerate(questions[start : start + 256]):
            top = nearest[row][np.argsort(-similarities[row, nearest[row]], kind="stable")]
            found = first_right([int(i) for i in top], set(question.answers))
            (ranks.updated if question.type == "updated" else ranks.stable).append(found)
    return ranks


def _item(statement: Statement, vector: np.ndarray) -> dict[str, Any]:
    return {
        "entity_type": statement.kind,
        "entity_id": AGENT,
        "vector": vector,
        "content": statement.text,
    }


async def _remember(memory: Memory, statement: Statement, vector: np.ndarray) -> Remembered:
    return await memory.remember(
        AGENT,
        vector,
        text=statement.text,
        kind=statement.kind,
        subject=statement.subject,
        at=statement.at,
    )


async def remember_all(
    memory: Memory, statements: Sequence[Statement], vectors: np.ndarray, callers: int
) -> list[Remembered]:
    """Remember every statement, ``callers`` at once; what each remember did, in order.

    A subject's statements all go to one caller, in the order they were said, as one
    conversation's would: a change must not overtake the statement it changes.
    """
    lanes: list[list[int]] = [[] for _ in range(callers)]
    for i, statement in enumerate(statements):
        lanes[zlib.crc32((statement.subject or statement.text).encode()) % callers].append(i)
    done: list[Remembered | None] = [None] * len(statements)

    async def lane(indexes: list[int]) -> None:
        for i in indexes:
            done[i] = await _remember(memory, statements[i], vectors[i])

    await asyncio.gather(*(lane(indexes) for indexes in lanes))
    return [d for d in done if d is not None]


async def store_all(
    plain: Collection, statements: Sequence[Statement], vectors: np.ndarray, batch: int = 2_000
) -> list[str]:
    """Store every statement as it is in the plain collection; their ids, in order."""
    ids: list[str] = []
    for start in range(0, len(statements), batch):
        ids += await plain.store_many(
            _item(s, v)
            for s, v in zip(
                statements[start : start + batch], vectors[start : start + batch], strict=True
            )
        )
    return ids


async def _rate(op: Callable[[int], Awaitable[Any]], indexes: Sequence[int], callers: int) -> float:
    """Calls per second of ``op`` over ``indexes``, ``callers`` at once."""
    lanes = [indexes[n::callers] for n in range(callers)]

    async def lane(mine: Sequence[int]) -> None:
        for i in mine:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane(mine) for mine in lanes))
    return len(indexes) / (time.perf_counter() - started)


async def _cleanup(dl: DataLayer) -> None:
    await dl.memory.flush()
    names = await dl.embeddings.list_collections()
    for name in (PLAIN, dl.memory.collection):
        if name in names:
            await dl.embeddings.drop_collection(name)
    # As the owner: the application role may not truncate. CASCADE: tables that refer to
    # memories (versions, links, the knowledge graph's facts) go with it.
    await dl.admin.execute("TRUNCATE memories CASCADE")
    if "memories" in await dl.changes.tracked():
        await dl.changes.untrack("memories")


async def memory(b: Bench) -> list[Result]:
    """The scenario (see the module's docstring)."""
    dl = b.dl
    size = b.size(4_000, 100_000)
    per_type = b.size(150, 1_000)
    await _cleanup(dl)
    embedder = HashEmbedder(DIM, seed=b.seed)
    b.step(f"memory: generating a conversation of {size:,} statements")
    talk = generate(size, per_type, seed=b.seed, end=datetime.now(UTC) - timedelta(hours=1))
    # The continuation that the throughput runs remember: runs x (one caller + eight).
    one, many = b.size(100, 500), b.size(400, 2_000)
    more = generate((one + many) * b.runs, 0, seed=b.seed + 1, end=talk.statements[-1].at)
    started = time.perf_counter()
    vectors = embedder([s.text for s in talk.statements])
    embed_rate = len(vectors) / (time.perf_counter() - started)
    questions = embedder([q.text for q in talk.questions])
    extra_vectors = embedder([s.text for s in more.statements])

    await dl.memory.setup(dimension=DIM, embedder=embedder)
    mem = dl.memory
    plain = await dl.embeddings.create_collection(PLAIN, dimension=DIM)

    b.step(f"memory: remembering {size:,} statements ({CALLERS} callers)")
    started = time.perf_counter()
    remembered = await remember_all(mem, talk.statements, vectors, CALLERS)
    load_rate = size / (time.perf_counter() - started)
    b.step(f"memory: storing {size:,} statements in a plain collection, then its HNSW index")
    started = time.perf_counter()
    stored = await store_all(plain, talk.statements, vectors)
    await plain.create_index("hnsw")
    plain_rate = size / (time.perf_counter() - started)
    # Statistics after a bulk load, as autovacuum would gather them soon after, for both.
    await dl.admin.execute("ANALYZE memories")
    for collection in (dl.embeddings.collection(mem.collection), plain):
        await dl.admin.execute(sql.SQL("ANALYZE {}").format((await collection.spec()).table_id))

    right_ours = [{remembered[i].id for i in q.answers} for q in talk.questions]
    right_plain = [{stored[i] for i in q.answers} for q in talk.questions]
    await _check_answers(mem, talk, right_ours)

    def recalling(memory: Memory, **options: Any) -> Callable[[np.ndarray], Awaitable[list[str]]]:
        async def search(vector: np.ndarray) -> list[str]:
            return [h.memory.id for h in await memory.recall(AGENT, vector, limit=5, **options)]

        return search

    async def base(vector: np.ndarray) -> list[str]:
        return [h.id for h in await plain.find_similar(vector, limit=5)]

    b.step(f"memory: asking {len(talk.questions):,} questions of each")
    ranks_base = await ask(base, talk.questions, questions, right_plain)
    ranks_exact = exact_ranks(questions, vectors, talk.questions)
    ranks: dict[str, Ranks] = {}
    # An application that gives facts a short half-life (30 days, the default a year): a second
    # DataLayer on the same database with that memory configuration.
    async with DataLayer(
        dl.config,
        memory={**dl.config.memory.model_dump(), "half_lives": {"fact": MONTH}},
        outbox={**dl.config.outbox.model_dump(), "relay": False},
    ) as tuned:
        passes = {
            "defaults": recalling(mem),
            "facts' half-life 30 days": recalling(tuned.memory),
            "without recency": recalling(mem, weights=NO_RECENCY),
        }
        for label, search in passes.items():
            ranks[label] = await ask(search, talk.questions, questions, right_ours)
            # Each pass starts from no recall counts: one pass's hits must not boost the next's.
            await tuned.memory.flush()
            await mem.flush()
            await dl.admin.execute(
                "UPDATE memories SET access_count = 0, last_accessed_at = NULL "
                "WHERE access_count > 0"
            )

    b.step("memory: remember against store, one caller and eight")
    throughput = await _throughput(b, mem, plain, more, extra_vectors, one, many)

    memories = await dl.admin.fetch_value(
        "SELECT count(*) FROM memories WHERE forgotten_at IS NULL AND agent_id = %s", [AGENT]
    )
    rows = await plain.count()
    b.step(f"memory: recall latency at {memories:,} memories")
    probes = questions[::2]  # half of each type
    lat_ours, lat_base = await paired_latency(recalling(mem), base, probes)

    async def base_wide(vector: np.ndarray) -> list[str]:
        return [h.id for h in await plain.find_similar(vector, limit=5, ef_search=100)]

    _, lat_wide = await paired_latency(recalling(mem), base_wide, probes[: len(probes) // 2])
    query_ms = _embed_ms(embedder, [q.text for q in talk.questions[:200]])
    await _cleanup(dl)
    return _results(
        talk, remembered, ranks, ranks_base, ranks_exact, throughput,
        (lat_ours, lat_base, lat_wide), memories, rows, load_rate, plain_rate, embed_rate,
        query_ms, full=not b.quick,
    )  # fmt: skip


async def _check_answers(mem: Memory, talk: Conversation, right: list[set[str]]) -> None:
    # The answer key itself, checked: each right memory now says what one of the question's
    # answering statements said (an update by deduplication rewrote it, or it was made so).
    for question, ids in zip(talk.questions, right, strict=True):
        texts = {talk.statements[i].text for i in question.answers}
        for memory_id in ids:
            found = await mem.get(memory_id)
            if found.text not in texts:
                raise AssertionError(
                    f"memory {memory_id} says {found.text!r}; {question.text!r} expects one of "
                    f"{sorted(texts)}: the benchmark's answer key is wrong"
                )


async def _throughput(
    b: Bench,
    mem: Memory,
    plain: Collection,
    more: Conversation,
    vectors: np.ndarray,
    one: int,
    many: int,
) -> dict[str, list[float]]:
    """remember and store of the same new statements (each run its own), interleaved."""
    rates: dict[str, list[float]] = {"ours1": [], "base1": [], "ours8": [], "base8": []}
    statements = more.statements

    async def remember(i: int) -> None:
        await _remember(mem, statements[i], vectors[i])

    async def store(i: int) -> None:
        await plain.store(_item(statements[i], vectors[i]))

    start = 0
    for run in range(b.runs):
        for callers, count in ((1, one), (CALLERS, many)):
            indexes = range(start, start + count)
            start += count
            pair = [(remember, "ours"), (store, "base")]
            for op, name in pair if run % 2 == 0 else pair[::-1]:
                rates[f"{name}{callers}"].append(await _rate(op, indexes, callers))
    return rates


def _embed_ms(embedder: HashEmbedder, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        embedder([text])
    return (time.perf_counter() - started) * 1000 / len(texts)


def _results(
    talk: Conversation,
    remembered: list[Remembered],
    ranks: dict[str, Ranks],
    base: Ranks,
    exact: Ranks,
    rates: dict[str, list[float]],
    latency: tuple[dict[str, float], dict[str, float], dict[str, float]],
    memories: int,
    rows: int,
    load_rate: float,
    plain_rate: float,
    embed_rate: float,
    query_ms: float,
    *,
    full: bool,
) -> list[Result]:
    name = "memory"
    statements = talk.statements
    events: dict[str, dict[str, int]] = {}
    for statement, done in zip(statements, remembered, strict=True):
        counts = events.setdefault(statement.role, {})
        counts[done.event] = counts.get(done.event, 0) + 1

    def merged(*roles: str) -> tuple[float, dict[str, int]]:
        counts: dict[str, int] = {}
        for role in roles:
            for event, n in events.get(role, {}).items():
                counts[event] = counts.get(event, 0) + n
        total = sum(counts.values())
        return (total - counts.get("created", 0)) / max(1, total), counts

    changed, changed_counts = merged("change", "correct")
    restated, restated_counts = merged("restate")
    data = {
        "statements": len(statements),
        "sessions": talk.sessions,
        "facts": len(talk.facts),
        "roles": {role: sum(c.values()) for role, c in events.items()},
        "questions": {"updated": len(base.updated), "stable": len(base.stable)},
        "corrected_questions": sum(1 for q in talk.questions if q.corrected),
    }
    results = []
    for label, mine in ranks.items():
        if label == "without recency":
            continue
        for kind, about in (("updated", "facts that changed"), ("stable", "facts never changed")):
            for k in (1, 5):
                ours_k = recall_at(getattr(mine, kind), k)
                theirs_k = recall_at(getattr(base, kind), k)
                target = (kind, k) == ("updated", 5)
                results.append(
                    Result(
                        name,
                        f"recall@{k}, {about} ({len(getattr(base, kind))} q.), {label}",
                        "recall",
                        ours_k,
                        theirs_k,
                        "find_similar over every statement",
                        target="above plain search" if target else "",
                        met=ours_k > theirs_k if target else None,
                        extra={
                            "without_recency": recall_at(
                                getattr(ranks["without recency"], kind), k
                            ),
                            "baseline_exact": recall_at(getattr(exact, kind), k),
                            "data": data,
                        },
                    )
                )
    ours_lat, base_lat, wide_lat = latency
    results += [
        Result(
            name,
            f"recall p50 ({memories:,} memories)",
            "ms",
            ours_lat["p50"],
            base_lat["p50"],
            f"find_similar, {rows:,} rows",
            higher_is_better=False,
            extra={"ours": ours_lat, "baseline": base_lat, "baseline_ef_search_100": wide_lat},
        ),
        Result(
            name,
            f"recall p95 ({memories:,} memories)",
            "ms",
            ours_lat["p95"],
            base_lat["p95"],
            f"find_similar, {rows:,} rows",
            higher_is_better=False,
            target="< 20 ms at 100k",
            met=ours_lat["p95"] < 20.0 if full else None,
        ),
        Result(
            name,
            f"recall p95 ({memories:,} memories), baseline at recall's ef_search",
            "ms",
            ours_lat["p95"],
            wide_lat["p95"],
            "find_similar, ef_search 100",
            higher_is_better=False,
        ),
    ]
    for callers in (1, CALLERS):
        results.append(
            Result(
                name,
                f"remember, dedup on ({callers} caller{'s' if callers > 1 else ''})",
                "memories/s",
                float(np.median(rates[f"ours{callers}"])),
                float(np.median(rates[f"base{callers}"])),
                "the same rows by store",
                extra={"runs": rates},
            )
        )
    results += [
        Result(
            name,
            "changes merged by dedup (rest: new memories)",
            "rate",
            changed,
            extra={"events": changed_counts},
        ),
        Result(
            name,
            "restatements merged by dedup",
            "rate",
            restated,
            extra={"events": restated_counts, "all": events},
        ),
        Result(
            name,
            f"building {len(statements):,} memories ({CALLERS} callers)",
            "memories/s",
            load_rate,
            plain_rate,
            "store_many, then the HNSW index",
        ),
        Result(
            name,
            "the bench's embedder (not in the figures above)",
            "texts/s",
            embed_rate,
            extra={"query_ms": query_ms},
        ),
    ]
    return results
