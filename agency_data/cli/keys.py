"""``agency-data keys list|rotate|reencrypt|retire|destroy``: the tenants' data keys."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agency_data.cli._common import ConfigOption, DataDirOption, error, load_config, run_job
from agency_data.manager import DataLayer
from agency_data.security.rekey import ReencryptReport

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="Field encryption's data keys: one per tenant, wrapped by the KEK, kept in the key store.",
    no_args_is_help=True,
)

TenantArgument = Annotated[str, typer.Option("--tenant", "-t", help="The tenant.")]


@keys_app.command("list")
def list_keys(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """The tenants with data keys in the key store."""

    async def job() -> list[str]:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return dl.admin.keys.tenants()

    for tenant in run_job(job):
        typer.echo(tenant)


@keys_app.command()
def rotate(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Re-wrap every data key under encryption.kek (after moving the old one to
    encryption.previous_keks); the old KEK is then no longer needed."""

    async def job() -> int:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.keys.rotate()

    typer.echo(f"{run_job(job)} data keys re-wrapped")


@keys_app.command()
def reencrypt(
    tenant: TenantArgument,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 500,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Rewrite the tenant's encrypted values under a new data key, online, in batches (the
    older keys stay until `keys retire`)."""

    async def job() -> ReencryptReport:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.keys.reencrypt(tenant, batch_size=batch_size)

    report = run_job(job)
    for place, count in sorted(report.rewritten.items()):
        typer.echo(f"{place}: {count} rewritten")
    typer.echo(f"active key {report.key_id}")


@keys_app.command()
def retire(
    tenant: TenantArgument,
    grace: Annotated[
        float,
        typer.Option(help="Seconds a key must have been replaced for (open transactions)."),
    ] = 3600.0,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove the tenant's older keys that no stored value uses any more."""

    async def job() -> list[str]:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.keys.retire(tenant, grace=grace)

    removed = run_job(job)
    typer.echo(f"removed {', '.join(removed)}" if removed else "no key to remove")


@keys_app.command()
def destroy(
    tenant: TenantArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Crypto-shred a tenant: remove its data keys, so that its encrypted values (in
    PostgreSQL, Redis and every backup) can never be read again."""
    if not yes:
        if not sys.stdin.isatty():
            error("destroying keys cannot be undone: run again with --yes")
            raise typer.Exit(2)
        typer.echo(
            f"Destroy every data key of tenant {tenant}? This cannot be undone. [y/N] ",
            err=True,
            nl=False,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise typer.Exit(1)

    async def job() -> bool:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.keys.destroy(tenant)

    typer.echo(
        f"tenant {tenant}: keys destroyed" if run_job(job) else f"tenant {tenant} had no keys"
    )
