"""``agency-data audit verify|show``: check a tenant's audit chain, and read its records."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated

import typer

from agency_data.audit import SYSTEM_TRAIL, Anchor, AuditRecord, ChainReport
from agency_data.cli._common import (
    ConfigOption,
    DataDirOption,
    error,
    load_read_only_config,
    run_job,
    table,
)
from agency_data.errors import AgencyDataError
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT

__all__ = ["audit_app"]

_log = logging.getLogger("agency_data.audit")

audit_app = typer.Typer(
    help="The audit trail: every change to the audited tables, chained per tenant.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="The tenant whose trail.")]
SystemOption = Annotated[
    bool, typer.Option("--system", help="The system trail: the layer's own actions.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@audit_app.command()
def verify(
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", "-t", help="Only this tenant's chain (default: every chain)."),
    ] = None,
    system: SystemOption = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="SEQ:HASH an earlier verify printed (or audit.anchor_interval logged) for "
            "the chain named; repeatable. The chain must still match it."
        ),
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Walk the audit chains; name the first broken record of each. Exit 1 if any is broken.

    The head printed for each chain is an anchor: kept elsewhere, it proves later that
    nothing up to it was rewritten (pass it back with --anchor).
    """
    cfg = load_read_only_config(config, data_dir)
    if system and tenant is not None:
        error("--system and --tenant name different chains: give one")
        raise typer.Exit(2)
    if anchor and tenant is None and not system:
        error("--anchor needs the chain it belongs to: --tenant T or --system")
        raise typer.Exit(2)
    name = SYSTEM_TRAIL if system else tenant
    try:
        kept = [Anchor.parse(name, text) for text in anchor or []] if name else []
    except AgencyDataError as exc:
        error(str(exc))
        raise typer.Exit(2) from exc

    async def job() -> list[ChainReport]:
        async with DataLayer(cfg) as dl:
            if system:
                return [await dl.admin.system_audit.verify(kept)]
            if tenant is not None:
                return [await dl.tenant(tenant).audit.verify(kept)]
            return await dl.admin.verify_audit()

    reports = run_job(job)
    for report in reports:
        _log.info(
            "audit anchor: tenant %s, record %s, hash %s",
            report.tenant,
            report.head_seq,
            report.head_hash,
        )
    broken = [report for report in reports if not report.ok]
    if as_json:
        typer.echo(json.dumps([json.loads(r.model_dump_json()) for r in reports], indent=2))
        raise typer.Exit(1 if broken else 0)
    if not reports:
        typer.echo("no audit records")
    for report in reports:
        state = "intact" if report.ok else f"BROKEN at record {report.broken_at}: {report.problem}"
        head = f", head {report.head_seq}:{report.head_hash}" if report.head_hash else ""
        typer.echo(f"{report.tenant}: {report.records} records, {state}{head}")
    if broken:
        error(f"{len(broken)} of {len(reports)} chains broken")
    raise typer.Exit(1 if broken else 0)


@audit_app.command()
def show(
    tenant: TenantOption = DEFAULT_TENANT,
    system: SystemOption = False,
    actor: Annotated[str | None, typer.Option(help="Only this actor's records.")] = None,
    entity_type: Annotated[str | None, typer.Option(help="Only this table's.")] = None,
    entity_id: Annotated[str | None, typer.Option(help="Only this row's.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """A tenant's records, newest first, filtered."""
    cfg = load_read_only_config(config, data_dir)
    if system and tenant != DEFAULT_TENANT:
        error("--system and --tenant name different chains: give one")
        raise typer.Exit(2)

    async def job() -> list[AuditRecord]:
        async with DataLayer(cfg) as dl:
            trail = dl.admin.system_audit if system else dl.tenant(tenant).audit
            return await trail.show(
                actor=actor,
                entity_type=entity_type,
                entity_id=entity_id,
                since=since,
                until=until,
                limit=limit,
            )

    records = run_job(job)
    if as_json:
        typer.echo(json.dumps([json.loads(r.model_dump_json()) for r in records], indent=2))
        return
    table(
        ["seq", "at (UTC)", "actor", "operation", "entity", "id"],
        [
            [
                str(r.seq),
                r.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                r.actor,
                r.operation,
                r.entity_type,
                r.entity_id or "",
            ]
            for r in records
        ],
    )
