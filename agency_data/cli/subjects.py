"""``agency-data subjects export|erase|erase-tenant``: a data subject's rights."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from agency_data.cli._common import ConfigOption, DataDirOption, error, load_config, run_job
from agency_data.manager import DataLayer
from agency_data.subjects import ErasureReport

__all__ = ["subjects_app"]

subjects_app = typer.Typer(
    help="Data subject rights: what a tenant holds about someone, exported or erased.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="The tenant.")]
SubjectArgument = Annotated[str, typer.Argument(help="The subject's id, as subjects.* find it.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")]


@subjects_app.command()
def export(
    subject: SubjectArgument,
    tenant: TenantOption,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print everything the tenant holds about SUBJECT, as one JSON document."""

    async def job() -> dict[str, object]:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.subjects.export(tenant, subject)

    document = run_job(job)
    sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


@subjects_app.command()
def erase(
    subject: SubjectArgument,
    tenant: TenantOption,
    yes: YesOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove everything the tenant holds about SUBJECT from every store."""
    _confirm(yes, f"everything tenant {tenant} holds about this subject")

    async def job() -> ErasureReport:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.subjects.erase(tenant, subject)

    _print(run_job(job))


@subjects_app.command("erase-tenant")
def erase_tenant(
    tenant: TenantOption,
    yes: YesOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove everything of a tenant from every store, and destroy its data keys."""
    _confirm(yes, f"every row, Redis key and data key of tenant {tenant}")

    async def job() -> ErasureReport:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.subjects.erase_tenant(tenant)

    _print(run_job(job))


def _confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        error(f"erasing {what} cannot be undone: run again with --yes")
        raise typer.Exit(2)
    typer.echo(f"Erase {what}? This cannot be undone. [y/N] ", err=True, nl=False)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        error("nothing erased")
        raise typer.Exit(1)


def _print(report: ErasureReport) -> None:
    for place, count in sorted(report.removed.items()):
        typer.echo(f"{place}: {count} removed")
    typer.echo(f"{report.total} removed in all")
