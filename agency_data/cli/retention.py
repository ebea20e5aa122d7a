"""``agency-data retention run``: apply the retention policies now."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agency_data.cli._common import ConfigOption, DataDirOption, load_config, run_job, table
from agency_data.manager import DataLayer
from agency_data.retention import RetentionReport

__all__ = ["retention_app"]

retention_app = typer.Typer(
    help="Retention: remove old rows by the configured policies, archiving first if asked.",
    no_args_is_help=True,
)


@retention_app.command()
def run(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Apply every policy of retention.policies once, in batches; print what each removed."""

    async def job() -> RetentionReport:
        # Loaded inside the job: a bad setting is an error line, not a traceback.
        async with DataLayer(load_config(config, data_dir)) as dl:
            return await dl.retention.run()

    report = run_job(job)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "target": r.target,
                        "removed": r.removed,
                        "batches": r.batches,
                        "archive": str(r.archive) if r.archive else None,
                    }
                    for r in report.results
                ],
                indent=2,
            )
        )
        return
    table(
        ["policy", "removed", "batches", "archive"],
        [[r.target, str(r.removed), str(r.batches), str(r.archive or "")] for r in report.results],
    )
