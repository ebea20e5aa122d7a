"""The ``agency-data`` command line: a thin layer over the public API."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from agency_data.config import DataLayerConfig, redact_dsn
from agency_data.demo import DemoStep, run_demo
from agency_data.errors import AgencyDataError
from agency_data.manager import DataLayer
from agency_data.migrations import MigrationReport
from agency_data.postgres.errors import to_agency_error
from agency_data.security.roles import RoleNames, setup_roles

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
            # Handlers first: whoever reads "ready" may signal at once.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            warnings = (await dl.health()).warnings
            # Plain lines, never wrapped: scripts read the DSN and URL from here.
            typer.echo("ready")
            typer.echo(f"PostgreSQL: {redact_dsn(dl.conninfo)}")
            configured = dl.config.redis.url
            redis_url = dl.redis_url or (configured.get_secret_value() if configured else None)
            typer.echo(f"Redis:      {redact_dsn(redis_url or '(configured server)')}")
            for warning in warnings:
                typer.echo(f"warning:    {warning}")
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
            for warning in report.warnings:
                console.print(f"[yellow]warning:[/] {warning}", markup=True, highlight=False)
            console.print(f"status: [bold]{report.status}[/]")
        return report.status

    status = _run(job)
    raise typer.Exit({"ok": 0, "degraded": 1}.get(status, 2))


roles_app = typer.Typer(help="The owner, application and read-only roles.", no_args_is_help=True)
app.add_typer(roles_app, name="roles")

_PASSWORD_ENV = {
    "owner": "AGENCY_DATA_OWNER_PASSWORD",
    "app": "AGENCY_DATA_APP_PASSWORD",
    "readonly": "AGENCY_DATA_READONLY_PASSWORD",
}


@roles_app.command("setup")
def roles_setup(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create the roles and grants (idempotent). Connects with postgresql.admin_dsn (else dsn).

    Run it as a superuser, or a role with CREATEROLE that owns the database. Passwords are
    set from AGENCY_DATA_OWNER_PASSWORD / _APP_PASSWORD / _READONLY_PASSWORD when given (the
    application role's also from postgresql.dsn when it names that role); none is printed.
    """

    async def job() -> list[str]:
        cfg = _config(config, data_dir, migration={"auto_migrate": False})
        names = RoleNames.from_config(cfg.postgresql)
        if cfg.postgresql.is_embedded:
            # Connecting sets the embedded server's roles up.
            async with DataLayer(cfg):
                return [f"the embedded server's roles are in place: {_role_line(names)}"]
        conninfo = cfg.postgresql.admin_conninfo() or cfg.postgresql.conninfo()
        passwords = _passwords(cfg, names)
        async with await _connect(conninfo) as conn:
            done = await setup_roles(
                conn, names, passwords=passwords, migrations_table=cfg.migration.table_name
            )
        return [*done, f"roles in place: {_role_line(names)}"]

    for line in _run(job):
        console.print(line, markup=False, highlight=False)


def _role_line(names: RoleNames) -> str:
    return f"owner {names.owner}, application {names.app}, read-only {names.readonly}"


def _passwords(cfg: DataLayerConfig, names: RoleNames) -> dict[str, str]:
    passwords: dict[str, str] = {}
    dsn = cfg.postgresql.dsn
    if dsn is not None:
        params = conninfo_to_dict(dsn.get_secret_value())
        if params.get("user") == names.app and params.get("password"):
            passwords[names.app] = str(params["password"])
    for key, variable in _PASSWORD_ENV.items():
        value = os.environ.get(variable)
        if value:
            passwords[getattr(names, key)] = value
    return passwords


async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise to_agency_error(exc, "connecting to set the roles up") from exc


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
