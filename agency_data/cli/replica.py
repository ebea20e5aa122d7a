"""``agency-data replica create|promote|rejoin|drop``: streaming standbys of the embedded server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agency_data.backup.replicas import (
    ReplicaStatus,
    create_replica,
    drop_replica,
    promote_replica,
    rejoin_primary,
)
from agency_data.cli._common import ConfigOption, errors_exit, load_read_only_config
from agency_data.manager import embedded_settings

__all__ = ["replica_app"]

replica_app = typer.Typer(
    help="Streaming standbys of the embedded PostgreSQL: read replicas and failover.",
    no_args_is_help=True,
)

NewDirOption = Annotated[
    Path,
    typer.Option("--data-dir", help="The standby's data directory: a new or empty folder."),
]
FromOption = Annotated[
    Path | None,
    typer.Option(
        "--from",
        help="The primary's data directory (default: embedded.data_dir of the configuration).",
    ),
]


@replica_app.command()
def create(data_dir: NewDirOption, source: FromOption = None, config: ConfigOption = None) -> None:
    """Make a streaming standby of the embedded primary in a new data directory.

    Copies the primary with pg_basebackup (starting the primary if it is not running), keeps a replication slot for the standby on the primary, and checks that the standby streams. Name the folder in embedded.replicas and the layer starts the standby with the primary and sends lag-tolerant reads to it.
    """
    cfg = load_read_only_config(config, None)
    primary = source or cfg.embedded.data_dir
    settings = embedded_settings(cfg)
    with errors_exit():
        status = create_replica(
            primary, data_dir, settings=settings, start_timeout=cfg.embedded.start_timeout
        )
    _report(status, f"standby of {primary} made in {data_dir}")
    typer.echo(
        f'read from it: embedded.replicas = ["{data_dir}"] '
        f"(or AGENCY_DATA_EMBEDDED__REPLICAS='[\"{data_dir}\"]')"
    )


@replica_app.command()
def promote(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The standby's data directory.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even though the primary it follows still answers."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Make a standby the primary (failover): it stops following and takes writes.

    Refused while the primary it follows still answers (two primaries would both take writes), unless --force. Clients with a multi-host DSN (host=A,B target_session_attrs=read-write) find it at their next connection. The former primary must not take writes again: stop it, and rejoin it as a standby of this one.
    """
    cfg = load_read_only_config(config, None)
    with errors_exit():
        promote_replica(
            data_dir,
            settings=embedded_settings(cfg),
            start_timeout=cfg.embedded.start_timeout,
            force=force,
        )
    typer.echo(f"promoted {data_dir}: it is a primary now")


@replica_app.command()
def rejoin(
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="The former primary's data directory (stopped)."),
    ],
    primary: Annotated[
        Path, typer.Option("--primary", help="The data directory of the primary to follow.")
    ],
    config: ConfigOption = None,
) -> None:
    """Make a former primary a standby of the new one, rewinding it with pg_rewind.

    Only the blocks it changed after the histories parted are copied back; writes it took that the new primary never saw are discarded.
    """
    cfg = load_read_only_config(config, None)
    with errors_exit():
        status = rejoin_primary(
            data_dir,
            primary,
            settings=embedded_settings(cfg),
            start_timeout=cfg.embedded.start_timeout,
        )
    _report(status, f"{data_dir} follows {primary} again")


@replica_app.command()
def drop(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The standby's data directory.")],
    config: ConfigOption = None,
) -> None:
    """Remove a stopped standby: its replication slot on the primary it follows, and its copy.

    Take it out of embedded.replicas first. The primary it follows must answer (its slot goes too). A promoted standby is a primary and is refused.
    """
    cfg = load_read_only_config(config, None)
    with errors_exit():
        primary = drop_replica(data_dir, start_timeout=cfg.embedded.start_timeout)
    typer.echo(f"dropped the standby in {data_dir} and its slot on the primary at {primary}")


def _report(status: ReplicaStatus, done: str) -> None:
    typer.echo(done)
    lag = "unknown" if status.lag_bytes is None else f"{status.lag_bytes} bytes behind"
    typer.echo(f"streaming through slot {status.slot}, {lag}")
