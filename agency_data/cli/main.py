"""The commands: up, migrate, health, top, roles, demo (and the tasks group)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Coroutine, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import psycopg
import typer
from psycopg.conninfo import conninfo_to_dict

from agency_data import __version__
from agency_data.cli._common import (
    ConfigOption,
    DataDirOption,
    console,
    error,
    errors_exit,
    load_config,
    load_read_only_config,
    run_job,
    table,
)
from agency_data.cli.audit import audit_app
from agency_data.cli.backup import backup_app
from agency_data.cli.export import export
from agency_data.cli.keys import keys_app
from agency_data.cli.monitor import top
from agency_data.cli.replica import replica_app
from agency_data.cli.retention import retention_app
from agency_data.cli.service import mcp, openapi, serve
from agency_data.cli.subjects import subjects_app
from agency_data.cli.tasks import tasks_app
from agency_data.config import DataLayerConfig
from agency_data.demo import DemoStep, run_demo
from agency_data.dsn import redact_dsn
from agency_data.errors import AgencyDataError, ConfigError, EmbeddedServerError
from agency_data.health import postgres_unreachable, versions_text
from agency_data.manager import DataLayer
from agency_data.migrations import MigrationReport, MigrationState, PlannedStep
from agency_data.models import HealthStatus
from agency_data.postgres.errors import to_agency_error
from agency_data.security.roles import RoleNames, setup_roles

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="agency-data: PostgreSQL + pgvector + Redis as one data layer for agent systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"agency-data {__version__}")
        raise typer.Exit()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # A user of the command wants the warning, not the library's source line that raised it.
    typer.echo(f"warning: {message}", err=True)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """agency-data: PostgreSQL + pgvector + Redis as one data layer for agent systems."""
    warnings.showwarning = _show_warning


class MigrateAction(StrEnum):
    """What ``agency-data migrate`` does."""

    UP = "up"
    DOWN = "down"
    STATUS = "status"


@app.command()
def up(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Also serve Prometheus metrics at /metrics on this port (0: any free port).",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="With --metrics-port: the address to listen on, 127.0.0.1 unless given "
            "(0.0.0.0: every interface).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the servers (embedded unless configured), migrate, print where they are, run until Ctrl-C.

    With --metrics-port, a line "Metrics: URL" follows the servers' lines: where to scrape.
    """
    if metrics_port is None and metrics_host is not None:
        # A host alone would serve nothing, silently.
        raise typer.BadParameter(
            "serves nothing without --metrics-port: give the port too",
            param_hint="'--metrics-host'",
        )
    host = "127.0.0.1" if metrics_host is None else metrics_host

    async def job() -> None:
        async with DataLayer(load_config(config, data_dir)) as dl:
            # Handlers first: whoever reads "ready" may signal at once.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            # Before "ready": a port in use ends the command with its error instead.
            endpoint = None if metrics_port is None else await dl.serve_metrics(metrics_port, host)
            found = (await dl.health()).warnings
            # Plain lines, never wrapped: scripts read the DSN and URL from here.
            typer.echo("ready")
            typer.echo(f"PostgreSQL: {redact_dsn(dl.conninfo)}")
            for replica in dl.replica_conninfos:
                typer.echo(f"Replica:    {redact_dsn(replica)}")
            configured = dl.config.redis.url
            redis_url = dl.redis_url or (configured.get_secret_value() if configured else None)
            typer.echo(f"Redis:      {redact_dsn(redis_url or '(configured server)')}")
            if endpoint is not None:
                typer.echo(f"Metrics:    {endpoint.url}")
            for warning in found:
                typer.echo(f"warning:    {warning}")
            await stop.wait()
            console.print("stopping")

    run_job(job)


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
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="With down: roll back without asking for confirmation."),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Apply (up), roll back (down) or list (status) the schema migrations.

    down prints what it destroys (tables and columns, with their rows) and asks first; --yes skips the question, and with no terminal to ask on it refuses (exit code 2). Both directions write a backup first when backups are on.
    """
    with errors_exit(), asyncio.Runner() as loop:
        cfg = load_config(config, data_dir, migration={"auto_migrate": False})

        def run(step: Coroutine[Any, Any, T]) -> T:
            return loop.run(step)

        dl = DataLayer(cfg)
        try:
            run(dl.connect())
            runner = dl.migrations()
            if action is MigrateAction.STATUS:
                _print_status(run(runner.status()))
            elif action is MigrateAction.UP:
                _print_report(run(runner.up(to=to, dry_run=dry_run)))
            elif dry_run:
                _print_report(run(runner.down(to=to, steps=steps, dry_run=True)))
            else:
                plan = run(runner.down(to=to, steps=steps, dry_run=True))
                if not plan.steps:
                    _print_report(plan)
                    return
                # The prompt waits outside the event loop, and the run then insists on the
                # very plan that was confirmed.
                if not yes:
                    _confirm_rollback(plan, redact_dsn(runner.conninfo), runner.backup_dir)
                keys = [step.key for step in plan.steps]
                _print_report(run(runner.down(to=to, steps=steps, expect=keys)))
        finally:
            run(dl.aclose())


@app.command()
def health(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check PostgreSQL and Redis, changing nothing. Exit code 0: ok, 1: degraded, 2: down.

    Read-only: no migration runs (pending ones are reported) and no backup is written. An
    embedded server is started for the check when nobody runs it, as any command would.
    """
    cfg = load_read_only_config(config, data_dir)
    report = run_job(lambda: _health_report(cfg))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        rows = [
            [
                part.name,
                "yes" if part.up else "no",
                f"{part.latency_ms:.2f} ms" if part.latency_ms is not None else "-",
                versions_text(part),
                part.error or "",
            ]
            for part in report.components.values()
        ]
        table(["component", "up", "latency", "versions", "error"], rows)
        for line in _health_lines(report):
            typer.echo(line)
        for warning in report.warnings:
            typer.echo(f"warning: {warning}")
        typer.echo(f"status: {report.status}")
    raise typer.Exit({"ok": 0, "degraded": 1}.get(report.status, 2))


def _health_lines(report: HealthStatus) -> list[str]:
    """Server connections, disk space, replication and alerts, one plain line each."""
    lines = []
    # The server's connections, every process's: this check's own pool says nothing of an app.
    server = report.components["postgresql"].details.get("server_connections")
    if server is not None:
        lines.append(f"connections: {server['used']} of {server['max']} in use (every client)")
    for volume, space in sorted(report.disk.items()):
        lines.append(
            f"disk ({volume}): {space.free_ratio:.0%} free, "
            f"{space.free_bytes / (1 << 30):.1f} of {space.total_bytes / (1 << 30):.1f} GiB"
        )
    replication = report.replication
    if replication is not None and replication.standby:
        lag = replication.lag_seconds
        lines.append(
            f"replication: this server is a replica, {lag:.1f} s behind"
            if lag is not None
            else "replication: this server is a replica"
        )
    elif replication is not None and replication.replicas:
        for name, lag in sorted(replication.replicas.items()):
            lines.append(f"replica {name}: {lag or 0:.1f} s behind")
    for alert in report.alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
        lines.append(
            f"alert: {alert['name']}{f' ({labels})' if labels else ''}: {alert['summary']}"
        )
    return lines


async def _health_report(cfg: DataLayerConfig) -> HealthStatus:
    dl = DataLayer(cfg)
    try:
        await dl.connect()
    except ConfigError:
        raise
    except EmbeddedServerError as exc:
        if exc.server != "postgres":
            raise
        return await postgres_unreachable(cfg, str(exc))
    except AgencyDataError as exc:
        # Messages of ours name host, port and database, never a password.
        return await postgres_unreachable(cfg, str(exc))
    try:
        report = await dl.health()
        try:
            states = await dl.migrations().status()
        except AgencyDataError:
            states = []  # the owner's connection failing is health's own finding
        counts = Counter(s.state for s in states if s.state != "applied")
        if counts:
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            report.warnings.append(
                f"{counts.total()} migration(s) not applied as registered ({summary}); "
                "see `agency-data migrate status`"
            )
        return report
    finally:
        await dl.aclose()


app.command()(top)
app.command()(export)
app.command()(serve)
app.command()(openapi)
app.command()(mcp)
app.add_typer(tasks_app, name="tasks")
app.add_typer(backup_app, name="backup")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(retention_app, name="retention")
app.add_typer(subjects_app, name="subjects")
app.add_typer(replica_app, name="replica")

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
        cfg = load_config(config, data_dir, migration={"auto_migrate": False})
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

    for line in run_job(job):
        typer.echo(line)


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
        return await run_demo(load_config(config, data_dir), show)

    steps = run_job(job)
    console.print(f"[green]demo finished[/] in {sum(s.seconds for s in steps):.2f} s")


def _print_status(states: Sequence[MigrationState]) -> None:
    rows = [
        [s.key, s.state, s.applied_at.isoformat(" ", "seconds") if s.applied_at else ""]
        for s in states
    ]
    table(["migration", "state", "applied at"], rows)


def _plan_lines(steps: Sequence[PlannedStep], *, done: bool = False) -> list[str]:
    """Each step, and for a down step what it destroys; plain text, one item a line."""
    lines: list[str] = []
    for step in steps:
        lines.append(
            f"{step.direction} {step.key}" + ("" if step.transactional else " (no transaction)")
        )
        if step.direction != "down":
            continue
        verb = "dropped" if done else "drops"
        lines.extend(f"  {verb} {loss.describe()}" for loss in step.data_loss)
        if not step.data_loss:
            lines.append(f"  {verb} no table or column")
        if step.loss_note:
            lines.append(f"  ({step.loss_note})")
    return lines


def _confirm_rollback(plan: MigrationReport, where: str, backup_dir: Path | None) -> None:
    """Show what the rollback destroys and ask; without a terminal to ask on, refuse."""
    typer.echo(f"Rolling back {len(plan.steps)} migration(s) of {where}:", err=True)
    for line in _plan_lines(plan.steps):
        typer.echo(f"  {line}", err=True)
    if backup_dir is not None:
        typer.echo(f"A backup of the database is written to {backup_dir} first.", err=True)
    else:
        typer.echo("No backup is written (migration.backup_before_migration is off).", err=True)
    if not sys.stdin.isatty():
        error(
            "not rolling back without a confirmation, and stdin is not a terminal to ask on: "
            "run again with --yes to roll back as planned above, or --dry-run to see the SQL"
        )
        raise typer.Exit(2)
    typer.echo("Roll back these migrations? [y/N] ", err=True, nl=False)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        typer.echo("Nothing was rolled back.", err=True)
        raise typer.Exit(1)


def _print_report(report: MigrationReport) -> None:
    if not report.steps:
        typer.echo(f"nothing to do ({report.direction}): the schema is up to date")
        return
    if report.dry_run:
        # The whole output is SQL: the plan in comments, each step's script after it.
        for step in report.steps:
            for line in _plan_lines([step]):
                typer.echo(f"-- {line}")
            typer.echo(step.sql.strip())
            typer.echo("")
        typer.echo(f"-- would run {len(report.steps)} migration(s); this dry run changed nothing")
        return
    for line in _plan_lines(report.steps, done=True):
        typer.echo(line)
    if report.backup_file is not None:
        typer.echo(f"backup written to {report.backup_file}")
    typer.echo(f"ran {len(report.steps)} migration(s) in {report.seconds:.2f} s")
