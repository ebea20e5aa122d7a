"""``python -m bench [SCENARIO ...] [--quick] [--size 100k|1m]``: every figure beside its
baseline, measured in the same run on the same data.

It runs on embedded servers in ``.bench-data`` (a data directory of its own, which it empties),
or on the servers that AGENCY_DATA_POSTGRESQL__DSN / AGENCY_DATA_REDIS__URL name: point
those at throwaway databases, as the benchmark deletes what it finds there. The raw baselines
log in as the owner role (the embedded server's, or AGENCY_DATA_POSTGRESQL__ADMIN_DSN's), which
must bypass row-level security; the ``rls`` scenario also creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agency_data import DataLayer, DataLayerConfig
from bench import (
    audit,
    cache,
    changes,
    coord,
    encryption,
    events,
    graph,
    heartbeats,
    langchain,
    langgraph_store,
    memory,
    observability,
    outbox,
    pgbouncer,
    recovery,
    relational,
    rls,
    service,
    sync,
    vectors,
    warmstart,
)
from bench.context import Bench
from bench.databases import raw_pool
from bench.harness import Result, environment, print_table, write_json

SCENARIOS = [
    "point-reads",
    "writes",
    "claiming",
    "heartbeats",
    "vector-ingest",
    "vector-search",
    "langchain",
    "langgraph-store",
    "rls",
    "cache",
    "locks",
    "pubsub",
    "concurrency",
    "pgbouncer",
    "warm-start",
    "observability",
    "recovery",
    "audit",
    "encryption",
    "sync",
    "outbox",
    "changes",
    "events",
    "graph",
    "memory",
    "service",
]
SIZES = {"20k": 20_000, "100k": 100_000, "1m": 1_000_000}
ROOT = Path(__file__).parent.parent


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help=f"any of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: about 4 minutes in all")
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default=None,
        help="vectors for the search scenario (default: 100k, or 20k with --quick)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="timed runs per figure (the median is kept)"
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    console = Console(width=max(140, Console().width))
    # The benchmark's bulk statements are slow by design and its loads trip alerts; their log
    # lines would bury the table (the statements are still timed and counted, as by default).
    for noisy in ("agency_data.slow_query", "agency_data.alerts"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    chosen = args.scenarios or SCENARIOS
    size = SIZES[args.size] if args.size else (20_000 if args.quick else 100_000)
    config = DataLayerConfig(
        embedded={"data_dir": ROOT / ".bench-data"},
        migration={"backup_before_migration": False},
        postgresql={
            "pool_max_size": 20,
            "pool_min_size": 4,
            "pool_timeout": 30,
            "statement_timeout": 0,
        },
        cache={"max_entries": 20_000},
    )
    # The second DataLayer (the cache's L2-only runs) relays no outbox: the outbox scenario
    # measures the first one's relay alone.
    l2_config = config.model_copy(
        update={
            "cache": config.cache.model_copy(update={"l1": False}),
            "outbox": config.outbox.model_copy(update={"relay": False}),
        }
    )
    results: list[Result] = []
    started = time.perf_counter()
    async with (
        DataLayer(config) as dl,
        DataLayer(l2_config) as l2_only,
        raw_pool(dl) as raw,
    ):
        await _reset(dl)
        redis_url = dl.redis_url or str(
            config.redis.url.get_secret_value() if config.redis.url else ""
        )
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            b = Bench(
                dl=dl, raw=raw, quick=args.quick, vectors=size, runs=args.runs, progress=progress
            )
            b.task = progress.add_task("starting", total=None)
            jobs: dict[str, Callable[[], Awaitable[list[Result]]]] = {
                "point-reads": lambda: relational.point_reads(b, l2_only),
                "writes": lambda: relational.writes(b),
                "claiming": lambda: relational.claiming(b),
                "heartbeats": lambda: heartbeats.heartbeats(b),
                "vector-ingest": lambda: vectors.ingest(b),
                "vector-search": lambda: vectors.search(b),
                "langchain": lambda: langchain.langchain(b),
                "rls": lambda: rls.rls(b),
                "cache": lambda: cache.cache(b, l2_only, redis_url),
                "locks": lambda: coord.locks(b),
                "pubsub": lambda: coord.pubsub(b),
                "concurrency": lambda: relational.concurrency(b),
                "pgbouncer": lambda: pgbouncer.pgbouncer(b),
                "warm-start": lambda: warmstart.warm_start(b, ROOT / ".bench-data" / "warm-start"),
                "observability": lambda: observability.observability(b),
                "recovery": lambda: recovery.recovery(b, ROOT / ".bench-data" / "recovery"),
                "audit": lambda: audit.audit(b),
                "encryption": lambda: encryption.encryption(b),
                "sync": lambda: sync.sync(b),
                "outbox": lambda: outbox.outbox(b),
                "changes": lambda: changes.changes(b),
                "events": lambda: events.events(b),
                "langgraph-store": lambda: langgraph_store.langgraph_store(b),
                "graph": lambda: graph.graph(b),
                "memory": lambda: memory.memory(b),
                "service": lambda: service.service(b),
            }
            for name in SCENARIOS:
                if name in chosen:
                    results += await jobs[name]()
                    await _reset(dl)
    print_table(results, console)
    missed = [r for r in results if r.met is False]
    console.print(
        f"{len(results)} figures in {time.perf_counter() - started:.0f} s; "
        f"targets met: {sum(1 for r in results if r.met)}, missed: {len(missed)}"
    )
    env = environment(
        {
            "quick": args.quick,
            "vectors": size,
            "runs": args.runs,
            "scenarios": chosen,
            "postgres": await _server_settings(dl_config=config),
        }
    )
    path = args.json or ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    write_json(path, results, env)
    console.print(f"results written to {path}")


async def _reset(dl: DataLayer) -> None:
    # The owner's: the application role may not truncate, and sees one tenant only. Every
    # table that references tasks goes in the same statement (TRUNCATE refuses otherwise).
    await dl.admin.execute("TRUNCATE tasks, task_dependencies, task_types, task_schedules, agents")
    await dl.redis.flushdb()


async def _server_settings(dl_config: DataLayerConfig) -> dict[str, Any]:
    async with DataLayer(dl_config) as dl:
        rows = await dl.fetch(
            # current_setting() gives the value with its unit ("512MB"); pg_settings' setting
            # is a count of its unit ("65536" of "8kB").
            "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'maintenance_work_mem', 'max_wal_size', 'fsync', "
            "'synchronous_commit', 'max_parallel_maintenance_workers', 'server_version')"
        )
    return {r["name"]: r["value"] for r in rows}


if __name__ == "__main__":
    asyncio.run(main(parse()))
