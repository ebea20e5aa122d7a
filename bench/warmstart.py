"""Warm starts: how fast the first searches are after PostgreSQL restarts, cold and prewarmed.

The scenario runs an embedded PostgreSQL of its own (``.bench-data/warm-start``), so that
restarting it leaves the other scenarios' connections alone; with an external server
(AGENCY_DATA_POSTGRESQL__DSN) it is skipped, as the benchmark cannot restart that server.

Each measurement starts from the same state: a session that searches until the index is warm
(its p50 and mean over searches it has not run before are the baselines), then a restart (the
DataLayer closes, the last user out stops the server, and a new DataLayer starts it), then
300 searches with queries never run before: the first, the p50 of the first 20, and the mean
of all 300 (which shows whether a warm-up that competes with the first searches pays for
itself). Variants:

- fresh DataLayer, server not restarted: new connections, warm data (what new connections
  cost however warm the data is);
- cold: autoprewarm off, no prewarm (PostgreSQL as it ships);
- autoprewarm only: the embedded server's default, searched at once after the start;
- ``dl.admin.prewarm()`` awaited after the start (data only; new connections stay cold);
- the default start (autoprewarm, and ``vector.prewarm_on_start`` in the background), searched
  at once: the searches race the warm-up;
- the default start once its background warm-up has finished: the target row;
- the same two without autoprewarm: the layer's own warm-up only.

Where the OS can be told to forget files (``posix_fadvise``, Linux), two more variants evict
the server's table and index files from the OS page cache before the start, as a reboot would
(a restart of PostgreSQL alone keeps that cache): cold, and after the start's warm-up. Only
this server's files are evicted, so nothing else running on the machine is slowed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from agency_data import DataLayer, DataLayerConfig
from bench.context import Bench, clustered
from bench.harness import Result
from bench.vectors import DIM, make_items

NAME = "bench_warm"
TARGET = "first search after a restart, prewarmed"
AFTER_RESTART = 300  # searches measured after each start
FIRST = 20  # of which the first ones' p50 is reported
WARM_QUERIES = 200  # searches that warm the index before each restart
WARM_MEASURED = 100  # then the warm p50, over searches not run before
# pg_prewarm.autoprewarm off: PostgreSQL as it ships, nothing read back after a start.
COLD_SERVER = {"pg_prewarm.autoprewarm": "off"}

Prepare = Callable[[DataLayer], Awaitable[None]]
Measure = Callable[[], Awaitable[list[float]]]


async def warm_start(b: Bench, data_dir: Path) -> list[Result]:
    """First-search latency after a restart, cold and prewarmed, against a warm search's p50."""
    if not b.dl.config.postgresql.is_embedded:
        b.progress.console.print(
            "warm-start: skipped, PostgreSQL is an external server the benchmark cannot restart"
        )
        return []
    # Up to 100k: a million-vector index takes many minutes to build, and the restarts
    # measure the same thing at either size.
    n = min(b.vectors, 100_000)
    runs = b.size(1, b.runs)

    def config(server: dict[str, str] | None = None, **vector: Any) -> DataLayerConfig:
        redis = b.dl.config.redis
        return DataLayerConfig(
            embedded={"data_dir": data_dir, "postgres_settings": server or {}},
            migration={"backup_before_migration": False},
            postgresql={"pool_min_size": 4, "pool_max_size": 20, "statement_timeout": 0},
            redis={"url": b.dl.redis_url} if redis.is_embedded else redis,
            vector=vector,
        )

    prewarm_seconds: list[float] = []
    warm_up_seconds: list[float] = []

    async def prewarm(dl: DataLayer) -> None:
        report = await dl.admin.prewarm()
        if report.skipped:
            raise RuntimeError(f"prewarm skipped: {report.skipped}")
        prewarm_seconds.append(report.seconds)

    async def start_warm_up(dl: DataLayer) -> None:
        # The start's own background warm-up, awaited.
        started = time.perf_counter()
        await dl.prewarmed()
        warm_up_seconds.append(time.perf_counter() - started)

    no_autoprewarm = config(COLD_SERVER, prewarm_on_start=False)
    layer_only = config(COLD_SERVER)  # the layer's own warm-up, no autoprewarm
    autoprewarm = config(prewarm_on_start=False)
    plans: list[tuple[str, Measure | None]] = [
        ("fresh DataLayer, server not restarted", None),
        ("cold", lambda: restarted(no_autoprewarm)),
        ("autoprewarm only", lambda: restarted(autoprewarm)),
        ("dl.admin.prewarm() awaited", lambda: restarted(autoprewarm, prewarm)),
        ("default start, searched at once", lambda: restarted(config())),
        (TARGET, lambda: restarted(config(), start_warm_up)),
        ("default start without autoprewarm, searched at once", lambda: restarted(layer_only)),
        (
            "default start without autoprewarm, after its warm-up",
            lambda: restarted(layer_only, start_warm_up),
        ),
    ]
    if hasattr(os, "posix_fadvise"):
        plans += [
            ("OS cache evicted, cold", lambda: restarted(no_autoprewarm, evict=True)),
            (
                "OS cache evicted, default start after its warm-up",
                lambda: restarted(config(), start_warm_up, evict=True),
            ),
        ]

    sessions = len(plans) * runs
    data = clustered(b.rng(8), n + WARM_QUERIES + (WARM_MEASURED + AFTER_RESTART) * sessions, DIM)
    base, probes = data[:n], data[n:]
    warm_probes = probes[:WARM_QUERIES]
    # Measured searches never repeat the warm-up's, nor each other: a repeated query finds
    # exactly the pages it left, which flatters whichever side runs it.
    unseen = probes[WARM_QUERIES:]
    measured_warm = iter(np.array_split(unseen[: WARM_MEASURED * sessions], sessions))
    fresh = iter(np.array_split(unseen[WARM_MEASURED * sessions :], sessions))

    b.step(f"warm start: loading {n:,} x {DIM} and building HNSW")
    async with DataLayer(autoprewarm) as dl:
        await _drop_if_exists(dl)
        col = await dl.embeddings.create_collection(NAME, dimension=DIM)
        for start in range(0, n, 20_000):
            await col.store_many(make_items(base[start : start + 20_000], start))
        info = await col.create_index(kind="hnsw")
        index_bytes = info.index.size_bytes if info.index else None

    warm: list[list[float]] = []

    async def warmed_then(measure: Measure | None) -> list[float]:
        # The same starting point for each variant: an index warmed by WARM_QUERIES searches.
        async with DataLayer(autoprewarm) as dl:
            col = dl.embeddings.collection(NAME)
            for q in warm_probes:
                await col.find_similar(q, limit=10)
            warm.append(await _timed(col, next(measured_warm)))
            if measure is None:
                # While this DataLayer holds the server: new connections, warm data.
                return await _searches(autoprewarm, next(fresh), None)
        return await measure()

    async def restarted(
        cfg: DataLayerConfig, prepare: Prepare | None = None, *, evict: bool = False
    ) -> list[float]:
        if evict:
            _evict_from_os_cache(data_dir / "postgres" / "base")
        return await _searches(cfg, next(fresh), prepare)

    samples: dict[str, list[list[float]]] = {label: [] for label, _ in plans}
    for run in range(runs):
        for label, measure in plans:
            b.step(f"warm start: {label} (run {run + 1} of {runs})")
            samples[label].append(await warmed_then(measure))
    async with DataLayer(autoprewarm) as dl:
        await _drop_if_exists(dl)

    warm_p50 = statistics.median(statistics.median(w) for w in warm)
    warm_mean = statistics.median(statistics.fmean(w) for w in warm)
    results: list[Result] = []
    for label, runs_of in samples.items():
        first = statistics.median(s[0] for s in runs_of)
        p50 = statistics.median(statistics.median(s[:FIRST]) for s in runs_of)
        mean = statistics.median(statistics.fmean(s) for s in runs_of)
        target = label == TARGET
        extra: dict[str, Any] = {
            "first_ms_each_run": [round(s[0], 3) for s in runs_of],
            "first_searches_ms_each_run": [[round(x, 2) for x in s[:FIRST]] for s in runs_of],
            "vectors": n,
            "index_bytes": index_bytes,
            "warm_p50_each_session": [round(statistics.median(w), 3) for w in warm],
        }
        results.append(
            Result(
                "warm start",
                label if target else f"{label}: first search",
                "ms",
                first,
                warm_p50,
                "warm search p50",
                higher_is_better=False,
                target="within 2x of a warm search" if target else "",
                met=first <= 2 * warm_p50 if target else None,
                extra=extra,
            )
        )
        results.append(
            Result(
                "warm start",
                f"{label}: p50 of the first {FIRST} searches",
                "ms",
                p50,
                warm_p50,
                "warm search p50",
                higher_is_better=False,
            )
        )
        results.append(
            Result(
                "warm start",
                f"{label}: mean of the first {AFTER_RESTART} searches",
                "ms",
                mean,
                warm_mean,
                "warm search mean",
                higher_is_better=False,
            )
        )
    for what, seconds in (
        ("dl.admin.prewarm() after a restart", prewarm_seconds),
        ("the start's background warm-up, awaited after connect()", warm_up_seconds),
    ):
        results.append(
            Result(
                "warm start",
                f"{what} ({n:,} x {DIM}, HNSW)",
                "s",
                statistics.median(seconds),
                higher_is_better=False,
                extra={"each_run": seconds},
            )
        )
    return results


async def _searches(
    config: DataLayerConfig, probes: np.ndarray, prepare: Prepare | None
) -> list[float]:
    async with DataLayer(config) as dl:
        if prepare is not None:
            await prepare(dl)
        return await _timed(dl.embeddings.collection(NAME), probes)


async def _timed(col: Any, probes: np.ndarray) -> list[float]:
    samples = []
    for q in probes:
        started = time.perf_counter()
        await col.find_similar(q, limit=10)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _drop_if_exists(dl: DataLayer) -> None:
    if NAME in await dl.admin.list_collections():
        await dl.admin.drop_collection(NAME)


def _evict_from_os_cache(folder: Path) -> None:
    # Called while the server is stopped: its files are clean, and fsync makes sure of it
    # (the OS keeps dirty pages whatever it is told).
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
