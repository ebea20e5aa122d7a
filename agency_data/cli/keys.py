"""``agency-data keys``: the service's API keys (``create``, ``issued``, ``revoke``) and field
encryption's data keys (``list``, ``rotate``, ``reencrypt``, ``retire``, ``destroy``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from agency_data.cli._common import (
    ConfigOption,
    DataDirOption,
    error,
    load_config,
    run_job,
    table,
)
from agency_data.manager import DataLayer
from agency_data.security.api_keys import ApiKey, ApiKeyRole
from agency_data.security.rekey import ReencryptReport

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="API keys of the service (create, issued, revoke), and field encryption's data keys "
    "(list, rotate, reencrypt, retire, destroy: one per tenant, wrapped by the KEK).",
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


@keys_app.command()
def create(
    tenant: TenantArgument,
    role: Annotated[ApiKeyRole, typer.Option("--role", "-r", help="What the key may do.")],
    name: Annotated[
        str | None, typer.Option(help="The key's name: the audit trail's actor (default: its id).")
    ] = None,
    expires_in: Annotated[
        float | None, typer.Option(min=1, help="Seconds until the key stops working by itself.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make an API key for the service and print it: it is shown this once (only its digest
    is kept). Details of the key go to stderr, the key alone to stdout."""

    async def job() -> tuple[ApiKey, str]:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.api_keys.create(tenant, role, name=name, expires_in=expires_in)

    key, secret = run_job(job)
    typer.echo(
        f"API key {key.id} ({key.name}) for tenant {key.tenant_id}, role {key.role.value}; "
        "store it now, it is not shown again:",
        err=True,
    )
    typer.echo(secret)


@keys_app.command()
def issued(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys.")
    ] = None,
    revoked: Annotated[bool, typer.Option(help="Also list revoked keys.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The API keys issued (never their secrets), oldest first."""

    async def job() -> list[ApiKey]:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.api_keys.list(tenant, revoked=revoked)

    rows = [
        [
            key.id,
            key.tenant_id,
            key.role.value,
            key.name,
            key.created_at.isoformat(timespec="seconds"),
            "" if key.expires_at is None else key.expires_at.isoformat(timespec="seconds"),
            "" if key.revoked_at is None else key.revoked_at.isoformat(timespec="seconds"),
        ]
        for key in run_job(job)
    ]
    table(["id", "tenant", "role", "name", "created", "expires", "revoked"], rows)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `keys issued`).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key: requests carrying it are refused from the next one on."""

    async def job() -> ApiKey:
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.admin.api_keys.revoke(key_id)

    key = run_job(job)
    typer.echo(f"revoked API key {key.id} ({key.name}) of tenant {key.tenant_id}")
