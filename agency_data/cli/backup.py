"""``agency-data backup create|list|verify``: backup sets of the layer's database."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from agency_data.backup import Backups, BackupSet
from agency_data.backup.drill import VerifyReport
from agency_data.cli._common import (
    ConfigOption,
    DataDirOption,
    error,
    load_read_only_config,
    run_job,
    table,
)
from agency_data.embedded import postgres_bin_dir
from agency_data.manager import DataLayer

__all__ = ["backup_app"]

backup_app = typer.Typer(
    help="Backup sets: full or incremental base backups with a manifest, verified on demand.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@backup_app.command()
def create(
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental", help="Copy only what changed since the latest set (its parent)."
        ),
    ] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Take a backup set: a base backup of the server with the WAL that makes it consistent."""
    cfg = load_read_only_config(config, data_dir)

    async def job() -> BackupSet:
        async with DataLayer(cfg) as dl:
            return await dl.backups.create(incremental=incremental)

    made = run_job(job)
    if as_json:
        typer.echo(made.manifest.model_dump_json(indent=2))
        return
    typer.echo(f"created {made.name} in {made.path.parent}")
    typer.echo(
        f"{made.manifest.kind}, {made.manifest.size_bytes / (1 << 20):.1f} MiB, "
        f"LSN {made.manifest.start_lsn} to {made.manifest.stop_lsn}"
    )


@backup_app.command("list")
def list_sets(
    as_json: JsonOption = False, config: ConfigOption = None, data_dir: DataDirOption = None
) -> None:
    """The sets in the repository, oldest first, with their sizes and what they cover."""
    cfg = load_read_only_config(config, data_dir)

    async def job() -> Backups:
        async with DataLayer(cfg) as dl:
            return dl.backups

    backups = run_job(job)
    sets = backups.list()
    if as_json:
        typer.echo(json.dumps([json.loads(s.manifest.model_dump_json()) for s in sets], indent=2))
        return
    table(
        ["set", "kind", "parent", "finished (UTC)", "size", "stop LSN"],
        [
            [
                s.name,
                s.manifest.kind,
                s.manifest.parent or "",
                s.manifest.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                f"{s.manifest.size_bytes / (1 << 20):.1f} MiB",
                s.manifest.stop_lsn,
            ]
            for s in sets
        ],
    )
    if not sets:
        typer.echo("note: no backup set yet; agency-data backup create takes one", err=True)
        return
    window = backups.window()
    if window is not None:
        reach = "any time between" if window.continuous else "the end of a set, between"
        typer.echo(
            f"recoverable: {reach} {window.earliest:%Y-%m-%d %H:%M:%S} and "
            f"{window.latest:%Y-%m-%d %H:%M:%S} UTC"
        )


@backup_app.command()
def verify(
    name: Annotated[str, typer.Argument(help="The set's name, or latest.")] = "latest",
    drill: Annotated[
        bool,
        typer.Option(
            "--drill/--no-drill",
            help="Also restore the set into a throwaway cluster and check it there.",
        ),
    ] = True,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Check a set: every file against its checksum (pg_verifybackup), then a restore drill. Exit 1 if anything failed.

    The drill restores the set into a temporary folder, starts it, runs amcheck on the B-tree indexes, compares each table's rows and the collections catalog with the manifest, checks the vector indexes are valid and that sample searches return the source's ids, then deletes the copy.
    """
    cfg = load_read_only_config(config, data_dir)

    async def job() -> VerifyReport:
        async with DataLayer(cfg) as dl:
            return await dl.backups.verify(name, drill=drill)

    report = run_job(job)
    if as_json:
        typer.echo(json.dumps({"ok": report.ok, **report.model_dump()}, indent=2))
        raise typer.Exit(0 if report.ok else 1)
    for problem in report.problems:
        error(problem)
    rows = [["checksums", "no" if report.problems else "yes", f"{len(report.problems)} problems"]]
    rows += [[c.name, "yes" if c.ok else "no", c.detail] for c in report.checks]
    table(["check", "ok", "detail"], rows)
    typer.echo(f"{report.set}: {'verified' if report.ok else 'FAILED'}")
    raise typer.Exit(0 if report.ok else 1)


@backup_app.command()
def restore(
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            help="An empty folder: the new embedded data directory to restore into.",
        ),
    ],
    name: Annotated[str, typer.Argument(help="The set's name, or latest.")] = "latest",
    repository: Annotated[
        Path | None,
        typer.Option(
            "--repository",
            help="The backup sets' folder (default: backup.directory, else "
            "<embedded.data_dir>/backup-sets of the configuration).",
        ),
    ] = None,
    target_time: Annotated[
        str | None,
        typer.Option(
            help="Replay the archived WAL up to this time, ISO 8601 with its zone "
            "(2026-12-05T10:30:00+00:00); needs backup.archive_wal.",
        ),
    ] = None,
    target_lsn: Annotated[
        str | None, typer.Option(help="Replay the archived WAL up to this LSN (0/3000060).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Restore a set (with the sets it builds on) into a new data directory; start it with up.

    Needs no running server. The restored database is as it was when the backup finished, or at --target-time / --target-lsn (point-in-time recovery from the archived WAL; the set must have finished before the target). Valkey gets the set's snapshot (sessions, locks, streams, the cache); after a point-in-time recovery it starts empty, as a cache may. A folder that holds a data directory already is refused.
    """
    cfg = load_read_only_config(config, None)
    when = None
    if target_time is not None:
        try:
            when = datetime.fromisoformat(target_time)
        except ValueError:
            error(f"--target-time {target_time!r} is not an ISO 8601 time")
            raise typer.Exit(2) from None
    source = repository or cfg.backup.directory or cfg.embedded.data_dir / "backup-sets"
    backups = Backups(source, None, "", postgres_bin_dir(), cfg.migration.table_name)
    pgdata = run_job(
        lambda: backups.restore(name, data_dir, target_time=when, target_lsn=target_lsn)
    )
    restored = backups.list()
    label = name if name != "latest" or not restored else f"{restored[-1].name} (latest)"
    typer.echo(f"restored {label} from {source} into {pgdata}")
    if (data_dir / "valkey").exists():
        typer.echo("Valkey: the set's snapshot, loaded at the first start")
    else:
        typer.echo("Valkey: starts empty (a point-in-time recovery, or a set without a snapshot)")
    typer.echo(f"start it with: agency-data up --data-dir {data_dir}")
