"""``agency-data tasks``: the queue at a glance, its dead letters, pauses, and the scheduler."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from agency_data.cli._common import ConfigOption, DataDirOption, load_config, run_job, table
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT, Task

__all__ = ["tasks_app"]

tasks_app = typer.Typer(
    help="The task queue: counts, dead letters, pausing types, the scheduler.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="The tenant's queue.")]
TypeOption = Annotated[
    list[str] | None, typer.Option("--type", help="Only this task type (repeat for more).")
]


def _layer(config: Path | None, data_dir: Path | None, *, reading: bool = False) -> DataLayer:
    # A command that only reads leaves the schema as it is (as `health` does).
    sections = {"migration": {"auto_migrate": False}} if reading else {}
    return DataLayer(load_config(config, data_dir, **sections))


@tasks_app.command("stats")
def stats(
    tenant: TenantOption = DEFAULT_TENANT,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Tasks by status and type, the oldest due task's wait, leases, paused types."""

    async def job() -> None:
        async with _layer(config, data_dir, reading=True) as dl:
            report = await dl.tenant(tenant).tasks.stats()
        rows = [
            [status, type, str(n)]
            for status, by_type in sorted(report.counts.items())
            for type, n in sorted(by_type.items())
        ]
        table(["status", "type", "tasks"], rows)
        age = report.oldest_pending_age
        typer.echo(f"oldest due task waiting: {'-' if age is None else f'{age:.1f} s'}")
        typer.echo(f"scheduled for later: {report.scheduled}")
        typer.echo(f"waiting on dependencies: {report.blocked}")
        typer.echo(f"expired leases (rescued by the next claim): {report.expired_leases}")
        expiry = report.next_lease_expiry
        typer.echo(f"next lease expiry: {'-' if expiry is None else expiry.isoformat()}")
        typer.echo(f"paused types: {', '.join(report.paused_types) or '-'}")

    run_job(job)


@tasks_app.command("dead")
def dead(
    tenant: TenantOption = DEFAULT_TENANT,
    type: TypeOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 20,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The dead letters: tasks that used up their attempts, with their last error."""

    async def job() -> list[Task]:
        async with _layer(config, data_dir, reading=True) as dl:
            page = await dl.tenant(tenant).tasks.list(status="dead", type=type, limit=limit)
            return page.items

    rows = [
        [
            str(t.id),
            t.type,
            f"{t.attempts}/{t.max_attempts}",
            t.finished_at.isoformat(" ", "seconds") if t.finished_at else "",
            t.error or "",
        ]
        for t in run_job(job)
    ]
    table(["id", "type", "attempts", "died at", "last error"], rows)


@tasks_app.command("requeue-dead")
def requeue_dead(
    ids: Annotated[list[str] | None, typer.Argument(help="Task ids (default: all dead).")] = None,
    tenant: TenantOption = DEFAULT_TENANT,
    type: TypeOption = None,
    limit: Annotated[int, typer.Option(help="Send back at most this many.")] = 1000,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Send dead tasks back to the queue, each with its attempts counted afresh."""

    async def job() -> list[Task]:
        async with _layer(config, data_dir) as dl:
            return await dl.tenant(tenant).tasks.requeue_dead(ids, type=type, limit=limit)

    back = run_job(job)
    typer.echo(f"requeued {len(back)} dead task(s)")


@tasks_app.command("pause")
def pause(
    type: Annotated[str, typer.Argument(help="The task type to stop claiming.")],
    tenant: TenantOption = DEFAULT_TENANT,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Stop claims of a task type in every process (running tasks go on)."""
    _set_paused(type, True, tenant, config, data_dir)


@tasks_app.command("resume")
def resume(
    type: Annotated[str, typer.Argument(help="The task type to claim again.")],
    tenant: TenantOption = DEFAULT_TENANT,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Let a paused task type be claimed again (waiting workers wake)."""
    _set_paused(type, False, tenant, config, data_dir)


def _set_paused(
    type: str, paused: bool, tenant: str, config: Path | None, data_dir: Path | None
) -> None:
    async def job() -> None:
        async with _layer(config, data_dir) as dl:
            tasks = dl.tenant(tenant).tasks
            await (tasks.pause(type) if paused else tasks.resume(type))

    run_job(job)
    typer.echo(f"{'paused' if paused else 'resumed'} {type}")


@tasks_app.command("scheduler")
def scheduler(
    tenant: TenantOption = DEFAULT_TENANT,
    sweep: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="Also rescue expired leases.")
    ] = True,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Enqueue the periodic schedules' tasks until Ctrl-C; run it in as many processes as you like."""

    async def job() -> None:
        async with _layer(config, data_dir) as dl:
            loop = asyncio.get_running_loop()
            running = asyncio.create_task(dl.tenant(tenant).tasks.run_scheduler(sweep=sweep))
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, running.cancel)
            typer.echo(f"scheduler running for tenant {tenant}")
            try:
                await running
            except asyncio.CancelledError:
                typer.echo("scheduler stopped")

    run_job(job)
