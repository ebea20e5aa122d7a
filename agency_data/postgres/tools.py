"""Running PostgreSQL's client programs (pg_dump, pg_basebackup, ...) against a server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agency_data.dsn import redact_dsn

__all__ = ["run_client_tool"]


async def run_client_tool(tool: Path, args: list[str], conninfo: str) -> tuple[int, str]:
    """Run ``tool --dbname=<conninfo> args``; its exit code and its stderr, passwords hidden.

    The password travels in the environment (PGPASSWORD), never on a command line that other
    users can read.
    """
    params = conninfo_to_dict(conninfo)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    process = await asyncio.create_subprocess_exec(
        str(tool),
        f"--dbname={make_conninfo('', **params)}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, stderr = await process.communicate()
    return process.returncode or 0, redact_dsn(stderr.decode(errors="replace").strip())
