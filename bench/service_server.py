"""The service benchmark's server: ``python -m bench.service_server`` serves the HTTP API in a
process of its own, as a deployment would, over the servers the benchmark already runs.

It reads one JSON line on stdin (``dsn``, ``admin_dsn``, ``redis_url``, ``pool_max_size``),
prints ``listening <url>`` once it listens, and stops when stdin closes (its parent is done,
or gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from agency_data import DataLayer, DataLayerConfig
from agency_data.config import ServiceConfig
from agency_data.service.server import running


def config_of(settings: dict[str, Any]) -> DataLayerConfig:
    """The server's config: the benchmark's servers, no migration (the benchmark's layer
    already ran them), the same pool size as the benchmark's in-process layer."""
    return DataLayerConfig(
        postgresql={
            "dsn": settings["dsn"],
            "admin_dsn": settings["admin_dsn"],
            "pool_min_size": 4,
            "pool_max_size": settings["pool_max_size"],
            "pool_timeout": 30,
            "statement_timeout": 0,
        },
        redis={"url": settings["redis_url"]},
        migration={"auto_migrate": False, "backup_before_migration": False},
        outbox={"relay": False},
    )


async def main() -> None:
    loop = asyncio.get_running_loop()
    settings = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    for noisy in ("agency_data.slow_query", "agency_data.alerts"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    async with (
        DataLayer(config_of(settings)) as dl,
        running(dl, ServiceConfig(port=0, request_timeout=60)) as service,
    ):
        print(f"listening {service.url}", flush=True)
        # Until the parent closes our stdin: read() returns at end of file.
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
