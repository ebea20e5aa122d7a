"""Data subject rights at their edges: schedules about the subject, numeric ids, no key name
keeping the subject, the cache's metrics intact."""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from agency_data import DataLayer
from tests.conftest import DatabaseDsn
from tests.test_subjects import MARK, SUBJECT, subject_config


async def test_schedule_about_the_subject_is_exported_and_erased(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(subject_config(database, redis_url, tmp_path)) as dl:
        acme = dl.tenant("acme")
        await acme.tasks.schedule(
            "ann-digest", type="mail", every=3600, data={"user": SUBJECT, "note": MARK}
        )
        document = await dl.subjects.export("acme", SUBJECT)
        exported = MARK in str(document)
        await dl.subjects.erase("acme", SUBJECT)
        with psycopg.connect(database.superuser) as conn:
            rows = conn.execute(
                "SELECT to_jsonb(s)::text FROM task_schedules s WHERE tenant_id = 'acme'"
            ).fetchall()
        # (sealed or not, the name and the plain data hold the mark here: no encryption)
        assert (exported, MARK in str(rows)) == (True, False)


async def test_invalidate_tags_is_still_observed(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(subject_config(database, redis_url, tmp_path)) as dl:
        cache = dl.tenant("acme").cache
        await cache.set("k", 1, tags=["t"])
        await cache.invalidate_tags("t")
        telemetry = dl._telemetry
        op = telemetry.operations.get("cache.invalidate_tags")
        assert op is not None
        assert sum(op.ok.counts) == 1


async def test_no_redis_key_name_keeps_the_subject(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    """Checked: the tag set (whose name holds the subject) goes with the erasure."""
    async with DataLayer(subject_config(database, redis_url, tmp_path)) as dl:
        cache = dl.tenant("acme").cache
        await cache.set("p", {"n": MARK}, tags=["subject:" + SUBJECT])
        await dl.subjects.erase("acme", SUBJECT)
        client = redis.Redis.from_url(redis_url)
        try:
            names = [k.decode() for k in client.scan_iter(match="ad:{acme}:*")]
        finally:
            client.close()
        assert not [n for n in names if SUBJECT in n]


async def test_a_numeric_subject_id_is_found(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async with DataLayer(subject_config(database, redis_url, tmp_path)) as dl:
        task = await dl.tenant("acme").tasks.create("mail", {"user": 42, "note": MARK})
        document = await dl.subjects.export("acme", "42")
        report = await dl.subjects.erase("acme", "42")
        assert (
            [t["id"] for t in document.get("tasks", {}).get("tasks", [])],
            report.removed.get("tasks"),
        ) == ([str(task.id)], 1)
