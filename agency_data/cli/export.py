"""``agency-data export SOURCE``: a tenant's rows as JSON lines on stdout, masked by default."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from agency_data.cli._common import ConfigOption, DataDirOption, load_read_only_config, run_job
from agency_data.manager import DataLayer
from agency_data.models import DEFAULT_TENANT

__all__ = ["export"]


def export(
    source: Annotated[str, typer.Argument(help="agents, tasks, or a collection's name.")],
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Whose rows.")] = DEFAULT_TENANT,
    unmasked: Annotated[
        bool,
        typer.Option(
            "--unmasked", help="The values as stored: for a reader entitled to them (masking.*)."
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write every row of SOURCE for the tenant as one JSON object a line, oldest first.

    Values under masking.paths are hidden and strings masked by masking.rules, unless
    --unmasked.
    """
    cfg = load_read_only_config(config, data_dir)

    async def job() -> int:
        written = 0
        async with DataLayer(cfg) as dl:
            async for row in dl.tenant(tenant).export(source, masked=not unmasked):
                sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
                written += 1
        sys.stdout.flush()
        return written

    run_job(job)
