"""``agency-data audit verify|show``: check a tenant's audit chain, and read its records."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Annotated

import typer

from agency_data.audit import AuditRecord, ChainReport
from agency_data.cli._common import (
    ConfigOption,
    DataDirOption,
    error,
    load_read_only_config,
    run_job,
    table,
)
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT

__all__ = ["audit_app"]

_log = logging.getLogger("agency_data.audit")

audit_app = typer.Typer(
    help="The audit trail: every change to the audited tables, chained per tenant.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="The tenant whose trail.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@audit_app.command()
def verify(
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Walk a tenant's chain; name the first broken record. Exit 1 if the chain is broken.

    The head's hash printed at the end is an anchor: kept elsewhere, it proves later that nothing up to it was rewritten.
    """
    cfg = load_read_only_config(config, data_dir)

    async def job() -> ChainReport:
        async with DataLayer(cfg) as dl:
            return await dl.tenant(tenant).audit.verify()

    report = run_job(job)
    _log.info(
        "audit anchor: tenant %s, record %s, hash %s", tenant, report.head_seq, report.head_hash
    )
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        raise typer.Exit(0 if report.ok else 1)
    if not report.ok:
        error(f"record {report.broken_at}: {report.problem}")
    typer.echo(f"{report.records} records, {'intact' if report.ok else 'BROKEN'}")
    if report.head_hash is not None:
        typer.echo(f"head: record {report.head_seq}, hash {report.head_hash}")
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command()
def show(
    tenant: TenantOption = DEFAULT_TENANT,
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

    async def job() -> list[AuditRecord]:
        async with DataLayer(cfg) as dl:
            return await dl.tenant(tenant).audit.show(
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
                r.at.strftime("%Y-%m-%d %H:%M:%S"),
                r.actor,
                r.operation,
                r.entity_type,
                r.entity_id or "",
            ]
            for r in records
        ],
    )
