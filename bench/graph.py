"""The knowledge graph (agency_data.memory.graph): 2-hop neighbours and paths of up to 3 hops
on a generated graph of 100,000 relations (10,000 with --quick), each beside the same walk done
by hand: plain indexed queries from Python (the owner's psycopg pool, no row-level security,
ids only), one round trip per hop, and the walk in Python. The difference is what the
recursive SQL, row-level security and the models cost, or save."""

from __future__ import annotations

import random
from collections import defaultdict, deque
from datetime import UTC, datetime
from typing import Any

from bench.context import Bench
from bench.harness import Result, paired_latency

SCENARIO = "graph"
TENANT = "bench-graph"
SINCE = datetime(2020, 1, 1, tzinfo=UTC)
# What the hand-made walk asks of each hop: the facts believed now and true now, as the
# layer's walk does, through the same partial index.
_HOP = (
    "SELECT id, source_id, target_id FROM memory_relations "
    "WHERE tenant_id = %s AND source_id = ANY(%s) AND invalidated_at IS NULL "
    "AND valid_from <= now() AND (valid_to IS NULL OR valid_to > now())"
)


async def _load(b: Bench, entities: int, relations: int) -> dict[str, list[tuple[str, str]]]:
    """The generated graph, loaded one statement per table; its out-edges by entity."""
    await _drop(b)
    rng = random.Random(b.seed)
    ids = [f"e{i}" for i in range(entities)]
    scope = b.dl.tenant(TENANT)
    await scope.execute(
        "INSERT INTO memory_entities (tenant_id, id, name, type) "
        "SELECT %s, x, 'entity ' || x, 'node' FROM unnest(%s::text[]) AS x",
        [TENANT, ids],
    )
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    rows: list[tuple[str, str, str]] = []
    for i in range(relations):
        source, target = rng.sample(ids, 2)
        rows.append((f"r{i}", source, target))
        out[source].append((f"r{i}", target))
    await scope.execute(
        "INSERT INTO memory_relations (tenant_id, id, source_id, relation, target_id, valid_from) "
        "SELECT %s, i, s, 'to', t, %s FROM unnest(%s::text[], %s::text[], %s::text[]) "
        "AS u(i, s, t)",
        [TENANT, SINCE, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]],
    )
    await b.dl.admin.execute("VACUUM ANALYZE memory_entities, memory_relations")
    return out


async def _drop(b: Bench) -> None:
    # Relations, mentions and trigrams go with their entities.
    await b.dl.admin.execute("DELETE FROM memory_entities WHERE tenant_id = %s", [TENANT])


def _distances(out: dict[str, list[tuple[str, str]]], source: str) -> dict[str, int]:
    seen = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if seen[node] == 3:
            continue
        for _, nxt in out[node]:
            if nxt not in seen:
                seen[nxt] = seen[node] + 1
                queue.append(nxt)
    return seen


async def graph(b: Bench) -> list[Result]:
    """2-hop neighbours and 3-hop paths: the layer's calls beside hand-made walks."""
    entities, relations = b.size(2_000, 20_000), b.size(10_000, 100_000)
    b.step(f"graph: loading {relations:,} relations among {entities:,} entities")
    out = await _load(b, entities, relations)
    kg = b.dl.tenant(TENANT).memory.graph
    rng = random.Random(b.seed + 1)
    starts = [s for s in rng.sample(sorted(out), min(len(out), 400)) if out[s]]
    pairs: list[tuple[str, str]] = []
    for source in starts:
        far = [n for n, d in _distances(out, source).items() if d in (2, 3)]
        if far:
            pairs.append((source, rng.choice(sorted(far))))

    async def walk_by_hand(source: str) -> set[str]:
        seen = {source}
        frontier = [source]
        async with b.raw.connection() as conn:
            for _ in range(2):
                cursor = await conn.execute(_HOP, [TENANT, frontier])
                frontier = [r["target_id"] for r in await cursor.fetchall()]
                frontier = [n for n in dict.fromkeys(frontier) if n not in seen]
                seen.update(frontier)
        return seen - {source}

    async def neighbours(source: str) -> Any:
        return await kg.neighbours(source, hops=2, limit=1000)

    b.step("graph: 2-hop neighbours, the layer's and by hand")
    ours, base = await paired_latency(neighbours, walk_by_hand, starts)

    async def paths_by_hand(pair: tuple[str, str]) -> list[list[str]]:
        source, target = pair
        levels: list[list[dict[str, Any]]] = []
        frontier = [source]
        async with b.raw.connection() as conn:
            for hop in range(3):
                cursor = await conn.execute(_HOP, [TENANT, frontier])
                edges = await cursor.fetchall()
                if hop == 2:
                    edges = [e for e in edges if e["target_id"] == target]
                levels.append(edges)
                frontier = list({e["target_id"] for e in edges if e["target_id"] != target})
        by_source: list[dict[str, list[dict[str, Any]]]] = []
        for edges in levels:
            grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for edge in edges:
                grouped[edge["source_id"]].append(edge)
            by_source.append(grouped)
        found: list[list[str]] = []

        def extend(node: str, seen: list[str], taken: list[str]) -> None:
            if node == target:
                found.append(taken)
                return
            if len(taken) == 3:
                return
            for edge in by_source[len(taken)].get(node, []):
                if edge["target_id"] not in seen:
                    extend(edge["target_id"], [*seen, edge["target_id"]], [*taken, edge["id"]])

        extend(source, [source], [])
        return sorted(found, key=len)[:100]

    async def paths(pair: tuple[str, str]) -> Any:
        return await kg.paths(pair[0], pair[1], max_hops=3, limit=100)

    b.step("graph: paths of up to 3 hops, the layer's and by hand")
    ours_paths, base_paths = await paired_latency(paths, paths_by_hand, pairs)
    await _drop(b)
    size = f"{relations // 1000}k relations"
    hand = "by hand: a query per hop from Python (no RLS, ids only)"
    return [
        Result(
            SCENARIO,
            f"neighbours(hops=2) p50, {size}",
            "ms",
            ours["p50"],
            base["p50"],
            hand,
            higher_is_better=False,
            extra={"ours_ms": ours, "baseline_ms": base, "starts": len(starts)},
        ),
        Result(
            SCENARIO,
            f"neighbours(hops=2) p95, {size}",
            "ms",
            ours["p95"],
            base["p95"],
            hand,
            higher_is_better=False,
            target="reported (issue 18: graph 2-hop query p95)",
        ),
        Result(
            SCENARIO,
            f"paths(max_hops=3) p50, {size}",
            "ms",
            ours_paths["p50"],
            base_paths["p50"],
            hand,
            higher_is_better=False,
            extra={"ours_ms": ours_paths, "baseline_ms": base_paths, "pairs": len(pairs)},
        ),
        Result(
            SCENARIO,
            f"paths(max_hops=3) p95, {size}",
            "ms",
            ours_paths["p95"],
            base_paths["p95"],
            hand,
            higher_is_better=False,
        ),
    ]
