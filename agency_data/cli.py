"""The ``agency-data`` command line: a thin layer over the public API."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from agency_data.config import DataLayerConfig
from agency_data.demo import DemoStep, run_demo
from agency_data.errors import AgencyDataError
from agency_data.manager import DataLayer
from agency_data.migrations import MigrationReport

__all__ = ["app"]

app = typer.Typer(
    help="agency-data: PostgreSQL + pgvector + Redis as one data layer for agent systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (else AGENCY_DATA_CONFIG_FILE / env vars)."
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory of the embedded servers.")
]


class MigrateAction(StrEnum):
    """What ``agency-data migrate`` does."""

    UP = "up"
    DOWN = "down"
    STATUS = "status"


def _config(
    config_file: Path | None, data_dir: Path | None = None, **sections: Any
) -> DataLayerConfig:
    overrides: dict[str, Any] = dict(sections)
    if data_dir is not None:
        overrides["embedded"] = {"data_dir": data_dir}
    base = DataLayerConfig.load(config_file)
    if not overrides:
        return base
    merged = base.model_dump()
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values}
    # Secrets come out of model_dump as SecretStr and go back in as such.
    return DataLayerConfig.load(config_file, **merged)


def _run(job: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(job())  # type: ignore[arg-type]
    except AgencyDataError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def up(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Start the servers (embedded unless configured), migrate, print where they are, run until Ctrl-C."""

    async def job() -> None:
        async with DataLayer(_config(config, data_dir)) as dl:
            # Plain lines, never wrapped: scripts read the DSN and URL from here.
            typer.echo("ready")
            typer.echo(f"PostgreSQL: {_safe_dsn(dl)}")
            typer.echo(f"Redis:      {dl.redis_url or '(configured server)'}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            console.print("stopping")

    _run(job)


@app.command()
def migrate(
    action: Annotated[MigrateAction, typer.Argument()] = MigrateAction.UP,
    to: Annotated[
        str | None, typer.Option(help="Target version ('0' with down: everything).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="With down: how many migrations to undo.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and SQL; change nothing.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Apply (up), roll back (down) or list (status) the schema migrations."""

    async def job() -> None:
        cfg = _config(config, data_dir, migration={"auto_migrate": False})
        async with DataLayer(cfg) as dl:
            runner = dl.migrations()
            if action is MigrateAction.STATUS:
                table = Table("migration", "state", "applied at")
                for state in await runner.status():
                    table.add_row(state.key, state.state, str(state.applied_at or ""))
                console.print(table)
                return
            if action is MigrateAction.UP:
                report = await runner.up(to=to, dry_run=dry_run)
            else:
                report = await runner.down(to=to, steps=steps, dry_run=dry_run)
            _print_report(report)

    _run(job)


@app.command()
def health(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check PostgreSQL and Redis. Exit code 0: ok, 1: degraded, 2: down."""

    async def job() -> str:
        async with DataLayer(_config(config, data_dir)) as dl:
            report = await dl.health()
        if as_json:
            console.print_json(report.model_dump_json())
        else:
            table = Table("component", "up", "latency", "versions", "error")
            for part in report.components.values():
                table.add_row(
                    part.name,
                    "yes" if part.up else "[red]no[/]",
                    f"{part.latency_ms:.2f} ms" if part.latency_ms is not None else "-",
                    ", ".join(f"{k} {v}" for k, v in part.versions.items()),
                    part.error or "",
                )
            console.print(table)
            console.print(f"status: [bold]{report.status}[/]")
        return report.status

    status = _run(job)
    raise typer.Exit({"ok": 0, "degraded": 1}.get(status, 2))


@app.command()
def demo(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """A short end-to-end tour on the embedded servers (or the configured ones), with timings."""

    def show(step: DemoStep) -> None:
        console.print(
            f"[bold cyan]{step.title:<18}[/] {step.seconds * 1000:8.1f} ms  {step.outcome}",
            soft_wrap=True,
        )

    async def job() -> list[DemoStep]:
        return await run_demo(_config(config, data_dir), show)

    steps = _run(job)
    console.print(f"[green]demo finished[/] in {sum(s.seconds for s in steps):.2f} s")


def _print_report(report: MigrationReport) -> None:
    verb = "would run" if report.dry_run else "ran"
    if not report.steps:
        console.print(f"nothing to do ({report.direction}): the schema is up to date")
        return
    for step in report.steps:
        console.print(
            f"[bold]{report.direction} {step.key}[/]"
            + ("" if step.transactional else " (no transaction)")
        )
        if report.dry_run:
            console.print(step.sql.strip(), markup=False, highlight=False)
    if report.backup_file is not None:
        console.print(f"backup written to {report.backup_file}")
    console.print(f"{verb} {len(report.steps)} migration(s) in {report.seconds:.2f} s")


def _safe_dsn(dl: DataLayer) -> str:
    from agency_data.config import redact_url

    return redact_url(dl.conninfo) if "://" in dl.conninfo else "(configured server)"
