"""The memory benchmark's own parts (bench/memory.py, bench/conversation.py) held to what they
claim, so that the benchmark cannot report nonsense: the generator's answer key, the embedder,
recall@k, and, against the real servers, a constructed case whose right answer is known to come
first for recall and second for plain similarity, and a small generated run whose ranks are
recomputed here from the stored rows by hand."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from psycopg import sql

from agency_data import DataLayer
from bench.conversation import Conversation, HashEmbedder, Question, Statement, generate
from bench.memory import (
    AGENT,
    DIM,
    _check_answers,
    ask,
    exact_ranks,
    first_right,
    recall_at,
    remember_all,
    store_all,
)
from tests.conftest import DatabaseDsn, make_config

DAY = 86_400.0
END = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
async def bench_dl(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> AsyncIterator[DataLayer]:
    # Recall counts never written during a test: the access part stays 0, so ranks computed
    # here by hand match recall's.
    config = make_config(database, redis_url, tmp_path, memory={"access_flush": 3600.0})
    async with DataLayer(config) as dl:
        yield dl


def test_recall_at_counts_a_right_answer_only_within_k() -> None:
    assert first_right(["a", "b", "c"], {"c", "z"}) == 2
    assert first_right(["a", "b"], {"z"}) is None
    ranks = [0, 2, None, 4, 1]
    assert recall_at(ranks, 1) == pytest.approx(0.2)
    assert recall_at(ranks, 3) == pytest.approx(0.6)
    assert recall_at(ranks, 5) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no questions"):
        recall_at([], 5)


def test_the_generator_is_reproducible_and_its_answer_key_holds() -> None:
    talk = generate(1_500, 40, seed=11, end=END)
    again = generate(1_500, 40, seed=11, end=END)
    assert talk.statements == again.statements
    assert talk.questions == again.questions
    assert len(talk.statements) == 1_500
    assert [s.at for s in talk.statements] == sorted(s.at for s in talk.statements)
    assert all(END - timedelta(days=366) <= s.at <= END for s in talk.statements)
    roles = {s.role for s in talk.statements}
    assert roles == {"state", "change", "correct", "restate", "chat"}
    assert sum(s.kind == "chat" for s in talk.statements) == round(1_500 * 0.35)
    types = [q.type for q in talk.questions]
    assert types.count("updated") == types.count("stable") == 40
    for question in talk.questions:
        said = [i for i, s in enumerate(talk.statements) if s.fact == question.fact]
        values = [talk.statements[i].value for i in said]
        final = values[-1]
        changed = any(talk.statements[i].role in ("change", "correct") for i in said)
        assert changed == (question.type == "updated")
        assert talk.statements[said[0]].role == "state"
        # The answers: every statement from the last one that set the value, all of it.
        assert question.answers == tuple(said[len(said) - len(question.answers) :])
        assert {talk.statements[i].value for i in question.answers} == {final}
        assert talk.statements[question.answers[0]].role != "restate"
        assert all(talk.statements[i].role == "restate" for i in question.answers[1:])
        # A change never goes back to an earlier value: no old statement is also right.
        setting = [
            v for i, v in zip(said, values, strict=True) if talk.statements[i].role != "restate"
        ]
        assert len(setting) == len(set(setting))
        assert final is not None
        # The question names the fact's entity, which every one of its statements names.
        subject = talk.facts[question.fact].subject
        entity = talk.facts[question.fact].entity
        assert entity in question.text
        assert all(talk.statements[i].subject == subject for i in said)
        assert all(entity in talk.statements[i].text for i in said)


def test_the_embedder_is_deterministic_unit_length_and_puts_a_question_near_its_fact() -> None:
    embedder = HashEmbedder(DIM, seed=3)
    texts = [
        "Where does Ann Lee live now?",
        "Ann Lee lives in Paris.",
        "Ann Lee still lives in Paris.",
        "Bo Kim drives a Volvo.",
    ]
    vectors = embedder(texts)
    assert vectors.shape == (4, DIM)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, HashEmbedder(DIM, seed=3)(texts))
    question, fact, restated, other = vectors
    assert float(question @ fact) > 0.6 > 0.2 > float(question @ other)
    # "still" is a stop word: a restatement is the same point, which deduplication merges.
    assert float(fact @ restated) == pytest.approx(1.0, abs=1e-5)


async def test_a_constructed_case_is_right_at_rank_1_for_recall_and_2_for_similarity(
    bench_dl: DataLayer,
) -> None:
    """The old statement is the more similar one; the newer one answers. Recall's recency
    (weighed at 0.4 against similarity's 0.6 here) puts the answer first; plain similarity puts it
    second: recall@1 is 1 and 0, recall@5 1 and 1."""
    now = datetime.now(UTC)
    said = [
        ("Ann Lee lives in Paris.", 730, "ann_lee.home", "state"),
        ("Ann Lee moved to Rome.", 2, "ann_lee.home", "change"),
        ("Bo Kim drives a Volvo.", 50, "bo_kim.car", "state"),
        ("The weather was lovely today.", 1, None, "chat"),
    ]
    statements = [
        Statement(
            text=text,
            at=now - timedelta(days=age),
            subject=subject,
            kind="chat" if subject is None else "fact",
            role=role,
            fact=None if subject is None else 0,
        )
        for text, age, subject, role in said
    ]
    question = Question("Where does Ann Lee live now?", fact=0, type="updated", answers=(1,))
    embedder = HashEmbedder(DIM, seed=3)
    vectors = embedder([s.text for s in statements])
    asked = embedder([question.text])
    assert float(asked[0] @ vectors[0]) > float(asked[0] @ vectors[1])

    await bench_dl.memory.setup(dimension=DIM, embedder=embedder)
    plain = await bench_dl.embeddings.create_collection("plain", dimension=DIM)
    remembered = await remember_all(bench_dl.memory, statements, vectors, callers=2)
    stored = await store_all(plain, statements, vectors)
    assert [r.event for r in remembered] == ["created"] * 4, "nothing here is a near-duplicate"

    async def ours(vector: np.ndarray) -> list[str]:
        weights = {"similarity": 0.6, "recency": 0.4}
        hits = await bench_dl.memory.recall(AGENT, vector, limit=5, weights=weights)
        return [h.memory.id for h in hits]

    async def base(vector: np.ndarray) -> list[str]:
        return [h.id for h in await plain.find_similar(vector, limit=5)]

    mine = await ask(ours, [question], asked, [{remembered[1].id}])
    theirs = await ask(base, [question], asked, [{stored[1]}])
    assert (mine.updated, theirs.updated) == ([0], [1])
    assert mine.stable == theirs.stable == []
    assert (recall_at(mine.updated, 1), recall_at(theirs.updated, 1)) == (1.0, 0.0)
    assert recall_at(mine.updated, 5) == recall_at(theirs.updated, 5) == 1.0
    # Asked for the superseded statement instead, both miss at 1 and find it within 5.
    wrong = await ask(ours, [question], asked, [{remembered[0].id}])
    assert wrong.updated == [1]


async def test_a_small_generated_run_scores_as_recomputed_by_hand(bench_dl: DataLayer) -> None:
    talk = generate(500, 25, seed=5, end=datetime.now(UTC) - timedelta(hours=1))
    embedder = HashEmbedder(DIM, seed=5)
    vectors = embedder([s.text for s in talk.statements])
    asked = embedder([q.text for q in talk.questions])
    memory = bench_dl.memory
    await memory.setup(dimension=DIM, embedder=embedder)
    plain = await bench_dl.embeddings.create_collection("plain", dimension=DIM)
    remembered = await remember_all(memory, talk.statements, vectors, callers=4)
    stored = await store_all(plain, talk.statements, vectors, batch=128)
    assert len(remembered) == len(stored) == 500
    right_ours = [{remembered[i].id for i in q.answers} for q in talk.questions]
    right_plain = [{stored[i] for i in q.answers} for q in talk.questions]
    # The answer key as stored: each right memory says one of its question's answers.
    await _check_answers(memory, talk, right_ours)
    # ... and would say so of a key that names a superseded memory instead.
    stale = [
        (q, remembered[_first_statement(talk, q)].id) for q in talk.questions if q.type == "updated"
    ]
    question, superseded = next(
        (q, m) for q, m in stale if m not in right_ours[talk.questions.index(q)]
    )
    with pytest.raises(AssertionError, match="answer key is wrong"):
        await _check_answers(memory, replace(talk, questions=[question]), [{superseded}])

    async def ours(vector: np.ndarray) -> list[str]:
        return [h.memory.id for h in await memory.recall(AGENT, vector, limit=5)]

    async def base(vector: np.ndarray) -> list[str]:
        # No index on the plain collection here: an exact scan, like the numpy search below.
        return [h.id for h in await plain.find_similar(vector, limit=5)]

    theirs = await ask(base, talk.questions, asked, right_plain)
    mine = await ask(ours, talk.questions, asked, right_ours)
    expected_plain = _ranks(talk, asked, right_plain, stored, vectors)
    assert theirs.updated + theirs.stable == expected_plain
    exact = exact_ranks(asked, vectors, talk.questions)
    assert exact.updated + exact.stable == expected_plain
    expected_ours = await _ours_by_hand(bench_dl, talk, asked, right_ours)
    assert mine.updated + mine.stable == expected_ours
    # Not a degenerate run: some answers come first, some later.
    everything = expected_plain + expected_ours
    assert 0 in everything
    assert any(r is not None and r > 0 for r in everything)


def _first_statement(talk: Conversation, question: Question) -> int:
    return next(i for i, s in enumerate(talk.statements) if s.fact == question.fact)


def _ranks(
    talk: Conversation,
    asked: np.ndarray,
    right: list[set[str]],
    ids: list[str],
    vectors: np.ndarray,
) -> list[int | None]:
    """Plain similarity by numpy: the rank of each question's first right row in its top 5."""
    out: list[list[int | None]] = [[], []]
    for question, query, accepted in zip(talk.questions, asked, right, strict=True):
        order = sorted(range(len(ids)), key=lambda i: (-float(vectors[i] @ query), ids[i]))
        ranked = [ids[i] for i in order[:5]]
        out[question.type == "stable"].append(first_right(ranked, accepted))
    return out[0] + out[1]


async def _ours_by_hand(
    dl: DataLayer, talk: Conversation, asked: np.ndarray, right: list[set[str]]
) -> list[int | None]:
    """Recall's score recomputed from the stored rows: the 100 nearest, scored by the
    configured weights of similarity, recency (the configured half-life) and importance (no
    recalls counted), best 5, ties by id."""
    config = dl.config.memory
    weights = config.weights
    spec = await dl.embeddings.collection(dl.memory.collection).spec()
    rows = await dl.admin.fetch(
        sql.SQL(
            "SELECT m.id, m.importance, extract(epoch FROM now() - m.happened_at) AS age, "
            "e.vector::text AS vector FROM memories m JOIN {} e ON e.id = m.id "
            "WHERE m.forgotten_at IS NULL"
        ).format(spec.table_id)
    )
    ids = [r["id"] for r in rows]
    matrix = np.array([json.loads(r["vector"]) for r in rows], dtype=np.float64)
    recency = np.array([math.pow(0.5, float(r["age"]) / config.half_life) for r in rows])
    importance = np.array([r["importance"] for r in rows])
    out: list[list[int | None]] = [[], []]
    for question, query, accepted in zip(talk.questions, asked, right, strict=True):
        cosine = matrix @ query.astype(np.float64)
        # Recall rescores the index's nearest 100 (memory.candidates).
        nearest = np.argsort(-cosine, kind="stable")[:100]
        score = (
            weights.similarity * np.clip(cosine, 0.0, 1.0)
            + weights.recency * recency
            + weights.importance * importance
        )
        order = sorted(nearest, key=lambda i: (-score[i], ids[i]))
        out[question.type == "stable"].append(first_right([ids[i] for i in order[:5]], accepted))
    return out[0] + out[1]
