"""Review of issue 17 against data subject rights: what an erasure leaves in the change feed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agency_data import DataLayer
from tests.conftest import DatabaseDsn, make_config

SUBJECT = "ann@example.com"


@pytest.mark.xfail(
    strict=True,
    reason="SubjectRights.erase (subjects/rights.py) deletes the subject's rows but not the "
    "changes that tracked tables captured of them (insert new values, the erasing delete's old "
    "values): the subject's data stays in `changes`, readable by the tenant's feed, for "
    "changes.keep seconds or as long as a named consumer lags",
)
async def test_erasing_a_subject_leaves_no_trace_in_the_change_feed(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    config = make_config(
        database,
        redis_url,
        tmp_path,
        subjects={"tasks": ["user"], "agents": ["owner"]},
        changes={"tables": ["tasks", "agents"]},
        outbox={"relay": False},
    )
    async with DataLayer(config) as dl:
        acme = dl.tenant("acme")
        await acme.tasks.create("mail", {"user": SUBJECT})
        await acme.tasks.create("mail", {"user": "bob@example.com"})
        await acme.agents.create("assistant", "w", capabilities={"owner": SUBJECT})
        report = await dl.subjects.erase("acme", SUBJECT)
        assert report.removed == {"tasks": 1, "agents": 1}
        rows = await dl.admin.fetch(
            "SELECT table_name, op, old::text AS old, new::text AS new FROM changes "
            "WHERE tenant_id = 'acme'"
        )
        kept = [r for r in rows if SUBJECT in f"{r['old']} {r['new']}"]
        assert kept == []
        # What the tenant's own feed hands out.
        seen = [c async for c in acme.changes(["tasks", "agents"], since="start", wait=False)]
        assert not [c for c in seen if SUBJECT in f"{c.old} {c.new}"]
