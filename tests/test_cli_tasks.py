"""``agency-data tasks``: stats, dead letters, requeue, pause/resume and the scheduler process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

from agency_data import DataLayer, TaskStatus
from tests.conftest import DatabaseDsn
from tests.test_cli import CLI, agency_data, cli_env


async def _one_dead(dl: DataLayer, type: str) -> str:
    agent = await dl.agents.create(name=f"w-{type}", type="t")
    task = await dl.tasks.create(type, max_attempts=1)
    (held,) = await dl.tasks.claim(agent.id, types=[type])
    await dl.tasks.fail(held, ValueError(f"{type} broke"))
    return str(task.id)


async def test_stats_dead_and_requeue(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    first = await _one_dead(dl, "embed")
    await _one_dead(dl, "summarize")
    await dl.tasks.create("embed", delay=3600)
    other = dl.tenant("acme")
    await other.tasks.create("acme-only")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data(*args, dsn=database, redis_url=redis_url, tmp_path=tmp_path)

    stats = await asyncio.to_thread(run, "tasks", "stats")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert lines[0].split() == ["status", "type", "tasks"]
    assert ["dead", "embed", "1"] in [line.split() for line in lines]
    assert ["pending", "embed", "1"] in [line.split() for line in lines]
    assert "acme-only" not in stats.stdout
    assert "scheduled for later: 1" in stats.stdout
    acme = await asyncio.to_thread(run, "tasks", "stats", "--tenant", "acme")
    assert ["pending", "acme-only", "1"] in [line.split() for line in acme.stdout.splitlines()]

    dead = await asyncio.to_thread(run, "tasks", "dead", "--type", "embed")
    assert dead.returncode == 0, dead.stderr
    assert first in dead.stdout
    assert "ValueError: embed broke" in dead.stdout
    assert "summarize" not in dead.stdout

    back = await asyncio.to_thread(run, "tasks", "requeue-dead", first)
    assert back.stdout.strip() == "requeued 1 dead task(s)"
    requeued = await dl.tasks.get(first)
    assert requeued.status is TaskStatus.PENDING
    assert requeued.attempts == 0
    rest = await asyncio.to_thread(run, "tasks", "requeue-dead")
    assert rest.stdout.strip() == "requeued 1 dead task(s)"
    assert await dl.tasks.count(status="dead") == 0

    bad = await asyncio.to_thread(run, "tasks", "requeue-dead", "not-a-uuid")
    assert bad.returncode == 2
    assert "error:" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_pause_and_resume(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    agent = await dl.agents.create(name="w", type="t")
    await dl.tasks.create("embed")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return agency_data(*args, dsn=database, redis_url=redis_url, tmp_path=tmp_path)

    paused = await asyncio.to_thread(run, "tasks", "pause", "embed")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "paused embed"
    assert await dl.tasks.claim(agent.id) == []
    assert (await dl.tasks.stats()).paused_types == ["embed"]
    resumed = await asyncio.to_thread(run, "tasks", "resume", "embed")
    assert resumed.stdout.strip() == "resumed embed"
    assert len(await dl.tasks.claim(agent.id)) == 1


async def test_scheduler_runs_until_interrupted(
    dl: DataLayer, database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    await dl.tasks.schedule("tick", type="tick", every=0.5, data={"from": "cli"})
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "tasks",
        "scheduler",
        env=cli_env(database, redis_url, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert line.decode().strip() == "scheduler running for tenant default"
        deadline = time.monotonic() + 20
        while await dl.tasks.count(type="tick") < 2:
            assert time.monotonic() < deadline, "the scheduler enqueued nothing"
            await asyncio.sleep(0.1)
        ticks = (await dl.tasks.list(type="tick")).items
        assert all(t.data == {"from": "cli"} for t in ticks)
        assert len({t.key for t in ticks}) == len(ticks)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err
    assert b"scheduler stopped" in out
    assert b"Traceback" not in err
