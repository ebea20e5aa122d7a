"""Backup, restore, point-in-time recovery and replicas: throughput, recovery time, lag.

The scenario runs embedded servers of its own under ``.bench-data/recovery`` (a primary with
WAL archiving, a standby made by ``agency-data replica create``), so that stopping and
restoring them leaves the other scenarios alone; with an external server it is skipped.

- **Backup** (MB/s of the set's size): ``dl.backups.create()`` (base backup, manifest facts,
  Valkey snapshot) beside ``pg_basebackup`` alone into a folder, the same work without ours;
  and a set compressed with gzip level 1 (``backup.compress = 1``), by the database's size.
- **Restore** (MB/s): ``dl.backups.restore()`` (``pg_combinebackup`` into a new data
  directory) beside copying the set's files, then the time for the restored server to start
  and answer (the RTO of a restore from the latest set, without WAL to replay).
- **Point-in-time recovery**: after a set, writes make WAL; the time to restore to a point
  after them and replay that WAL until the server answers, and the WAL replayed per second.
- **Replica lag** under the write benchmark (``tasks.create``, 64 callers): the standby's
  replay lag sampled every 50 ms (p50, p99, max), and the writes per second beside the same
  load with no standby following; then with the standby synchronous (each commit waits for
  its flush), the price of losing no acknowledged write in a failover.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from agency_data import DataLayer, DataLayerConfig
from agency_data.backup.replicas import create_replica
from agency_data.embedded import EmbeddedPostgres, postgres_bin_dir
from agency_data.postgres.tools import run_client_tool
from bench.context import Bench
from bench.harness import Result
from bench.vectors import make_items

SCENARIO = "recovery"
DIM = 384
CALLERS = 64


async def recovery(b: Bench, root: Path) -> list[Result]:
    """Backup and restore throughput, recovery time, and replica lag under writes."""
    if not b.dl.config.postgresql.is_embedded:
        b.progress.console.print("recovery: skipped, it runs embedded servers of its own")
        return []
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    primary, standby, sets = root / "primary", root / "standby", root / "sets"
    redis = b.dl.config.redis
    base = {
        "migration": {"backup_before_migration": False},
        "postgresql": {"pool_min_size": 4, "pool_max_size": 20, "statement_timeout": 0},
        "redis": {"url": b.dl.redis_url} if redis.is_embedded else redis,
    }

    def config(*, compress: int = 0, replicas: list[Path] | None = None) -> DataLayerConfig:
        return DataLayerConfig(
            embedded={"data_dir": primary, "replicas": replicas or [], "stop_on_close": False},
            backup={"directory": sets / str(compress), "archive_wal": True, "compress": compress},
            **base,
        )

    results: list[Result] = []
    try:
        async with DataLayer(config()) as dl:
            b.step("recovery: loading the database")
            await _load(b, dl)
            results += await _backups(b, dl, config, root)
            results += await _point_in_time(b, dl, root)
        b.step("recovery: making a standby")
        await asyncio.to_thread(create_replica, primary, standby)
        results += await _lag(b, config, primary, standby)
    finally:
        for folder in (standby, primary):
            server = EmbeddedPostgres(folder)
            if server.is_running():
                server.stop()
    shutil.rmtree(root, ignore_errors=True)
    return results


async def _load(b: Bench, dl: DataLayer) -> None:
    n = b.size(5_000, 50_000)
    await dl.embeddings.create_collection("docs", dimension=DIM)
    docs = dl.embeddings.collection("docs")
    rng = b.rng(14)
    for start in range(0, n, 5_000):
        vectors = rng.normal(size=(min(5_000, n - start), DIM)).astype("float32")
        await docs.store_many(make_items(vectors, start))
    await docs.create_index("hnsw")
    await dl.tasks.create_many([{"type": "step", "data": {"i": i}} for i in range(n)])


async def _backups(b: Bench, dl: DataLayer, config: Any, root: Path) -> list[Result]:
    b.step("recovery: backup sets")
    made = []
    for _ in range(b.size(1, 3)):
        started = time.perf_counter()
        made.append((await dl.backups.create(), time.perf_counter() - started))
    full, ours = min(made, key=lambda m: m[1])
    size_mb = full.manifest.size_bytes / 1e6
    raw = []
    for i in range(b.size(1, 3)):
        target = root / f"raw-{i}"
        started = time.perf_counter()
        code, message = await run_client_tool(
            postgres_bin_dir() / "pg_basebackup",
            ["-D", str(target), "-Fp", "-X", "stream", "-c", "fast"],
            EmbeddedPostgres(root / "primary").dsn("postgres"),
        )
        raw.append(time.perf_counter() - started)
        assert code == 0, message
        shutil.rmtree(target)
    async with DataLayer(config(compress=1)) as gz:
        started = time.perf_counter()
        packed = await gz.backups.create()
        packed_s = time.perf_counter() - started
    results = [
        Result(
            SCENARIO,
            f"full backup set ({size_mb:.0f} MB)",
            "MB/s",
            size_mb / ours,
            size_mb / min(raw),
            "pg_basebackup alone",
        ),
        Result(
            SCENARIO,
            f"full set, gzip 1 ({packed.manifest.size_bytes / 1e6:.0f} MB stored)",
            "MB/s",
            size_mb / packed_s,
            size_mb / ours,
            "the plain set",
        ),
    ]
    b.step("recovery: restores")
    restored_s, copied_s, answer_s = [], [], []
    for i in range(b.size(1, 3)):
        target = root / f"restored-{i}"
        started = time.perf_counter()
        await dl.backups.restore(full.name, target)
        restored_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.to_thread(shutil.copytree, full.path, root / f"copy-{i}")
        copied_s.append(time.perf_counter() - started)
        shutil.rmtree(root / f"copy-{i}")
        answer_s.append(await asyncio.to_thread(_start_and_answer, target))
        shutil.rmtree(target)
    results += [
        Result(
            SCENARIO,
            "restore a set (pg_combinebackup)",
            "MB/s",
            size_mb / min(restored_s),
            size_mb / min(copied_s),
            "copying the set's files",
        ),
        Result(
            SCENARIO,
            "restored server starts and answers",
            "s",
            min(answer_s),
            higher_is_better=False,
            extra={"restore_s": min(restored_s)},
        ),
    ]
    return results


async def _point_in_time(b: Bench, dl: DataLayer, root: Path) -> list[Result]:
    b.step("recovery: point-in-time recovery")
    superuser = EmbeddedPostgres(root / "primary").dsn("agency_data")
    full = await dl.backups.create()
    before = _lsn(superuser)
    rounds = b.size(4, 20)
    for r in range(rounds):
        await dl.tasks.create_many(
            [{"type": "wal", "data": {"r": r, "i": i, "pad": "x" * 200}} for i in range(5_000)]
        )
    wal_mb = (_lsn(superuser) - before) / 1e6
    target = await dl.fetch_value("SELECT now()")
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    await _archived(superuser)
    restored = root / "pitr"
    started = time.perf_counter()
    await dl.backups.restore(full.name, restored, target_time=target)
    answer = await asyncio.to_thread(_start_and_answer, restored)
    total = time.perf_counter() - started
    shutil.rmtree(restored)
    return [
        Result(
            SCENARIO,
            f"point-in-time recovery, {wal_mb:.0f} MB of WAL",
            "s",
            total,
            higher_is_better=False,
            extra={"wal_mb": wal_mb, "replay_mb_per_s": wal_mb / answer},
        )
    ]


async def _lag(b: Bench, config: Any, primary: Path, standby: Path) -> list[Result]:
    seconds = b.size(3.0, 8.0)
    rates: dict[str, list[float]] = {}
    lags: dict[str, list[float]] = {}
    superuser = EmbeddedPostgres(primary).dsn("postgres")
    # In turns, so that each setup sees the same machine (the standby's replay competes with
    # the primary for the 2 cores); the best run of each is reported.
    for _ in range(b.size(1, 3)):
        for label, replicas, sync in (
            ("no standby", None, False),
            ("async standby", [standby], False),
            ("sync standby", [standby], True),
        ):
            b.step(f"recovery: writes, {label}")
            if replicas is None:
                # Stopped: no WAL sender, nothing slows the primary.
                server = EmbeddedPostgres(standby)
                if server.is_running():
                    server.stop()
            async with DataLayer(config(replicas=replicas)) as dl:
                with psycopg.connect(superuser, autocommit=True) as conn:
                    names = "'*'" if sync else "''"
                    conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = {names}")
                    conn.execute("SELECT pg_reload_conf()")
                rate, sampled = await _writes(dl, seconds, superuser if replicas else None)
                with psycopg.connect(superuser, autocommit=True) as conn:
                    # Commits must not wait for a standby that the next turn stops.
                    conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
                    conn.execute("SELECT pg_reload_conf()")
            rates.setdefault(label, []).append(rate)
            lags.setdefault(label, []).extend(sampled)
    best = {label: max(found) for label, found in rates.items()}
    async_lag = sorted(lags["async standby"]) or [0.0]
    return [
        Result(
            SCENARIO,
            f"tasks.create, {CALLERS} callers, async standby",
            "ops/s",
            best["async standby"],
            best["no standby"],
            "no standby",
            extra={
                "lag_ms_p50": statistics.median(async_lag),
                "lag_ms_p99": async_lag[int(0.99 * (len(async_lag) - 1))],
                "lag_ms_max": async_lag[-1],
            },
        ),
        Result(
            SCENARIO,
            f"replica replay lag p99 under {CALLERS} writers",
            "ms",
            async_lag[int(0.99 * (len(async_lag) - 1))],
            higher_is_better=False,
        ),
        Result(
            SCENARIO,
            f"tasks.create, {CALLERS} callers, sync standby",
            "ops/s",
            best["sync standby"],
            best["no standby"],
            "no standby",
        ),
    ]


async def _writes(
    dl: DataLayer, seconds: float, superuser: str | None
) -> tuple[float, list[float]]:
    done = 0
    stop = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await dl.tasks.create("lagging", {"n": done})
            done += 1

    async def sampler() -> list[float]:
        lags: list[float] = []
        if superuser is None:
            return lags
        async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as conn:
            while time.perf_counter() < stop:
                row = await (
                    await conn.execute(
                        "SELECT EXTRACT(EPOCH FROM replay_lag) * 1000 FROM pg_stat_replication"
                    )
                ).fetchone()
                if row is not None and row[0] is not None:
                    lags.append(float(row[0]))
                await asyncio.sleep(0.05)
        return lags

    started = time.perf_counter()
    sampled, *_ = await asyncio.gather(sampler(), *(writer() for _ in range(CALLERS)))
    return done / (time.perf_counter() - started), sampled


def _start_and_answer(data_dir: Path) -> float:
    server = EmbeddedPostgres(data_dir)
    started = time.perf_counter()
    server.acquire()
    try:
        with psycopg.connect(server.dsn("agency_data"), autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM agents").fetchone()
        return time.perf_counter() - started
    finally:
        server.release()


def _lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    assert row is not None
    return int(row[0])


async def _archived(dsn: str) -> None:
    # The segment just switched out must reach the archive before a restore can replay it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        current = row[0]
        for _ in range(600):
            done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if done is not None and done[0] is not None and done[0] >= _previous(current):
                return
            await asyncio.sleep(0.05)
    raise RuntimeError("the WAL archive did not catch up within 30 s")


def _previous(segment: str) -> str:
    # The segment before ``segment`` (timeline, log, seg in hex; 256 segments of 16 MB a log).
    timeline, log, seg = segment[:8], int(segment[8:16], 16), int(segment[16:], 16)
    if seg == 0:
        log, seg = log - 1, 0xFF
    else:
        seg -= 1
    return f"{timeline}{log:08X}{seg:08X}"
