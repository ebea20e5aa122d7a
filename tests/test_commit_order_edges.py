"""Commit order (migration 0016) at its edges. One strict xfail names a limit: SET
CONSTRAINTS ALL IMMEDIATE fires the deferred commit-order trigger early, and the commit-order
lock is then held until that transaction ends."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest

from agency_data import DataLayer
from tests.conftest import DatabaseDsn


@pytest.mark.xfail(
    strict=True,
    reason="agency_data_order_commit (migration 0016) is a DEFERRABLE constraint trigger: SET "
    "CONSTRAINTS ALL IMMEDIATE (ORMs run it to check deferred constraints early) fires it "
    "mid-transaction, and the commit-order advisory lock is then held until that transaction "
    "ends: every other publishing or captured commit of the database waits for it (and can "
    "deadlock with it on a row lock)",
)
async def test_set_constraints_immediate_does_not_hold_every_other_commit(
    dl: DataLayer, database: DatabaseDsn
) -> None:
    async with await psycopg.AsyncConnection.connect(database.owner) as holder:
        await holder.execute(
            "INSERT INTO outbox (kind, destination, message) VALUES ('stream', 'held', '{}')"
        )
        with contextlib.suppress(psycopg.Error):  # refusing it would be a fix as well
            await holder.execute("SET CONSTRAINTS ALL IMMEDIATE")
        try:

            async def publish() -> None:
                async with dl.transaction() as tx:
                    await tx.publish("elsewhere", {"n": 1})

            # The holder's transaction stays open (doing other work): an unrelated publisher
            # commits at once, as it does without the SET CONSTRAINTS.
            await asyncio.wait_for(publish(), 3)
        finally:
            await holder.rollback()
