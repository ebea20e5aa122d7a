"""A process the change-feed and outbox tests kill with SIGKILL.

``python -u tests/feed_process.py consume LOG`` reads the change feed of ``agents`` as the named
consumer ``killed`` of tenant ``acme`` and appends each change to LOG as a JSON line (flushed and
synced before the next is read), after a first line naming the cursor it resumed from.
``python -u tests/feed_process.py publish N`` publishes N messages to the stream ``kill`` in one
transaction (with no relay of its own), prints ``committed`` once it has committed, and waits
to be killed. The database is ``FEED_DSN`` (its owner ``FEED_ADMIN_DSN``), Redis
``FEED_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import orjson

from agency_data import DataLayer, DataLayerConfig


def config() -> DataLayerConfig:
    return DataLayerConfig(
        postgresql={
            "dsn": os.environ["FEED_DSN"],
            "admin_dsn": os.environ["FEED_ADMIN_DSN"],
            "pool_min_size": 1,
            "pool_max_size": 3,
        },
        redis={"url": os.environ["FEED_REDIS_URL"]},
        migration={"auto_migrate": False, "backup_before_migration": False},
        embedded={"data_dir": os.path.join(tempfile.gettempdir(), f"unused-{os.getpid()}")},
        outbox={"relay": False},
    )


async def consume(log_path: str) -> None:
    async with DataLayer(config()) as dl:
        saved = [c.cursor for c in await dl.tenant("acme").changes.consumers()]
        since = None if saved else "start"
        feed = dl.changes(["agents"], tenant="acme", consumer="killed", since=since, batch=7)
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - a test's log, written per change
            # The cursor it resumes from (none the first time: it starts at the beginning).
            log.write(orjson.dumps({"start": saved[0] if saved else None}) + b"\n")
            async for change in feed:
                log.write(orjson.dumps(change.model_dump(mode="json")) + b"\n")
                log.flush()
                os.fsync(log.fileno())


async def publish(count: int) -> None:
    async with DataLayer(config()) as dl:
        async with dl.transaction() as tx:
            for n in range(count):
                await tx.publish("kill", {"n": n})
        print("committed", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        asyncio.run(consume(sys.argv[2]))
    else:
        asyncio.run(publish(int(sys.argv[2])))
