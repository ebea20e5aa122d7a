"""What the commands share: the config they load, how they print, and how errors exit."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agency_data.config import DataLayerConfig
from agency_data.errors import AgencyDataError

__all__ = [
    "ConfigOption",
    "DataDirOption",
    "console",
    "err_console",
    "error",
    "errors_exit",
    "load_config",
    "plain",
    "run_job",
    "table",
]

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (else AGENCY_DATA_CONFIG_FILE / env vars)."
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory of the embedded servers.")
]


def load_config(
    config_file: Path | None, data_dir: Path | None = None, **sections: Any
) -> DataLayerConfig:
    overrides: dict[str, Any] = dict(sections)
    if data_dir is not None:
        overrides["embedded"] = {"data_dir": data_dir}
    base = DataLayerConfig.load(config_file)
    if not overrides:
        return base
    merged = base.model_dump()
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values}
    # Secrets come out of model_dump as SecretStr and go back in as such.
    return DataLayerConfig.load(config_file, **merged)


def load_read_only_config(config_file: Path | None, data_dir: Path | None) -> DataLayerConfig:
    """The config for a command that only looks (health, top, backup): no migration runs, and
    one pooled connection is enough."""
    with errors_exit():
        return load_config(
            config_file,
            data_dir,
            migration={"auto_migrate": False},
            postgresql={"pool_min_size": 1},
        )


def plain() -> bool:
    """True when stdout is no terminal: plain lines then, never wrapped nor cut."""
    return not sys.stdout.isatty()


def error(message: str) -> None:
    """Print ``error: message`` to stderr (in red on a terminal)."""
    if sys.stderr.isatty():
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    else:
        typer.echo(f"error: {message}", err=True)


@contextmanager
def errors_exit() -> Iterator[None]:
    """Turn an AgencyDataError into its message and exit code 2."""
    try:
        yield
    except AgencyDataError as exc:
        error(str(exc))
        raise typer.Exit(2) from exc


def run_job(job: Callable[[], Awaitable[T]]) -> T:
    """Run ``job`` in a new event loop, errors exiting as :func:`errors_exit` says."""
    with errors_exit():
        return asyncio.run(job())  # type: ignore[arg-type]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table: rich on a terminal (long cells fold onto more lines), aligned text otherwise."""
    if plain():
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            typer.echo(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
        return
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
