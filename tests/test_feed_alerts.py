"""The outbox and the change feed, bounded and monitored (issue 17), against the real servers.

A named consumer that stops holds the feed's changes back until the cap: the feed never keeps
more than ``changes.max_rows`` (plus the last commit's changes) after a prune, the fill alert
fires before the cap and the lost-consumer alert at it, and dropping the consumer resolves them.
An outbox nobody relays fires once its oldest message has waited ``outbox_age``; one Redis
refuses fires at once. Each alert's gauges are in the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from agency_data import ConfigError, DataLayer
from agency_data.observability.alerts import Alert
from agency_data.redis.keys import Keys
from tests.conftest import DatabaseDsn, make_config

CAP = 20
# Evaluated by the tests (dl.check_alerts()), with no wait before a rule fires.
QUIET_LOOP = {"interval": 3600}


class Heard:
    """What the alert callbacks received."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def of(self, name: str) -> list[str]:
        return [a.status for a in self.alerts if a.name == name]

    def last(self, name: str) -> Alert:
        return [a for a in self.alerts if a.name == name][-1]


async def watched_layer(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[DataLayer, Heard]]:
    alerts = {"changes_full_for": 0, **sections.pop("alerts", {})}
    config = make_config(
        database,
        redis_url,
        tmp_path,
        # No relay: nothing is sent or pruned but when the test says so.
        outbox={"relay": False},
        monitoring={**QUIET_LOOP, "alerts": alerts},
        **sections,
    )
    async with DataLayer(config) as dl:
        heard = Heard()
        dl.alerts.on(heard)
        yield dl, heard


async def gauges(dl: DataLayer) -> dict[str, float]:
    """The scrape's unlabelled samples by name."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(await dl.metrics_text()):
        for sample in family.samples:
            if not sample.labels:
                found[sample.name] = sample.value
    return found


async def stop_after_one(feed: Any) -> None:
    """A named consumer that reads one change and is never heard of again."""
    reading = feed(["agents"], since="start", consumer="indexer")
    async with contextlib.aclosing(reading):
        async for _ in reading:
            break


async def test_a_stopped_consumer_is_cut_at_the_cap_alerts_fire_and_dropping_it_resolves(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in watched_layer(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"], "max_rows": CAP, "keep": 3600},
        alerts={"changes_fill": 0.8},
    ):
        acme = dl.tenant("acme")
        await acme.agents.create(name="first", type="worker")
        await stop_after_one(acme.changes)
        for n in range(14):
            await acme.agents.create(name=f"a{n}", type="worker")
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeFeedFull") == []  # 15 of 20: under 80%
        await acme.agents.create(name="a14", type="worker")
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeFeedFull") == ["firing"]
        full = heard.last("AgencyDataChangeFeedFull")
        assert full.value == pytest.approx(16 / CAP)
        assert "16 changes, 80% of changes.max_rows = 20" in full.summary
        # The consumer holds them, and the fix for it is named.
        assert "acme/indexer is 16 changes behind" in full.action
        assert "await dl.tenant('acme').changes.drop('indexer')" in full.action
        scraped = await gauges(dl)
        assert scraped["agency_data_changes_retained"] == 16
        assert scraped["agency_data_changes_max_rows"] == CAP
        assert scraped["agency_data_change_consumers_lost"] == 0

        # Writes go on past the cap, with a prune each round (the relay's loop prunes every
        # minute): the feed never keeps more than the cap and the last commit's change.
        for round_ in range(3):
            for n in range(15):
                await acme.agents.create(name=f"r{round_}-{n}", type="worker")
            await dl.changes.prune()
            status = await dl.changes.status()
            assert status.retained <= CAP + 1, status
            assert status.lost == 1
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeConsumerLost") == ["firing"]
        lost = heard.last("AgencyDataChangeConsumerLost")
        assert lost.value == 1
        assert "acme/indexer" in lost.summary
        assert "await dl.tenant('acme').changes.drop('indexer')" in lost.action
        assert (await gauges(dl))["agency_data_change_consumers_lost"] == 1
        # Still full: keep (an hour) holds the newest max_rows now, not the lost consumer.
        assert heard.of("AgencyDataChangeFeedFull") == ["firing"]

        await acme.changes.drop("indexer")
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeConsumerLost") == ["firing", "resolved"]
        assert {a.name for a in dl.alerts.firing()} == {"AgencyDataChangeFeedFull"}


async def test_the_fill_alert_resolves_once_the_consumer_holding_the_feed_is_dropped(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in watched_layer(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"], "max_rows": CAP, "keep": 0},
        alerts={"changes_fill": 0.5},
    ):
        await dl.agents.create(name="first", type="worker")
        await stop_after_one(dl.changes)
        for n in range(12):
            await dl.agents.create(name=f"a{n}", type="worker")
        await dl.changes.prune()  # keep is 0: only the consumer holds them
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeFeedFull") == ["firing"]
        assert "await dl.changes.drop('indexer')" in heard.last("AgencyDataChangeFeedFull").action
        await dl.changes.drop("indexer")
        await asyncio.sleep(0.05)  # keep = 0 s: the newest change is older than that now
        await dl.changes.prune()
        assert (await dl.changes.status()).retained == 0
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeFeedFull") == ["firing", "resolved"]
        assert heard.of("AgencyDataChangeConsumerLost") == []


async def test_an_outbox_nobody_relays_fires_once_its_oldest_message_waits_too_long(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in watched_layer(database, redis_url, tmp_path, alerts={"outbox_age": 3.0}):
        for n in range(2):
            async with dl.transaction() as tx:
                await tx.publish("jobs", {"n": n})
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxStalled") == []  # committed just now
        scraped = await gauges(dl)
        assert scraped["agency_data_outbox_unsent"] == 2
        assert 0 <= scraped["agency_data_outbox_oldest_unsent_seconds"] < 3
        await asyncio.sleep(3.2)
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxStalled") == ["firing"]
        stalled = heard.last("AgencyDataOutboxStalled")
        assert stalled.value > 3.0
        assert "oldest of 2 unsent outbox message(s)" in stalled.summary
        assert "outbox.relay = true" in stalled.action
        assert await dl.outbox.relay() == 2
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxStalled") == ["firing", "resolved"]
        scraped = await gauges(dl)
        assert scraped["agency_data_outbox_unsent"] == 0
        assert scraped["agency_data_outbox_oldest_unsent_seconds"] == 0


async def test_a_message_redis_refuses_fires_at_once_and_resolves_after_the_window(
    database: DatabaseDsn, redis_url: str, tmp_path: Path
) -> None:
    async for dl, heard in watched_layer(
        database, redis_url, tmp_path, alerts={"outbox_refused_window": 1.0}
    ):
        client = aioredis.Redis.from_url(redis_url)
        try:
            # A string where the stream should be: Redis refuses the XADD (WRONGTYPE).
            await client.set(Keys("default").stream("jobs"), "not a stream")
        finally:
            await client.aclose()
        async with dl.transaction() as tx:
            await tx.publish("jobs", {"n": 1})
            await tx.publish("other", {"n": 2})
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxRefused") == []
        assert await dl.outbox.relay() == 2
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxRefused") == ["firing"]
        refused = heard.last("AgencyDataOutboxRefused")
        assert refused.value == 1
        assert "failed_at IS NOT NULL" in refused.action
        scraped = await gauges(dl)
        assert scraped["agency_data_outbox_refused_total"] == 1
        assert scraped["agency_data_outbox_unsent"] == 0  # set aside is not waiting
        assert heard.of("AgencyDataOutboxStalled") == []
        await asyncio.sleep(1.2)  # the window passes with no more refused
        await dl.check_alerts()
        assert heard.of("AgencyDataOutboxRefused") == ["firing", "resolved"]


async def test_a_cancelled_or_blocked_sample_keeps_the_feed_alerts_as_they_were(
    database: DatabaseDsn, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async for dl, heard in watched_layer(
        database,
        redis_url,
        tmp_path,
        changes={"tables": ["agents"], "max_rows": 5, "keep": 3600},
    ):
        await dl.agents.create(name="first", type="worker")
        await stop_after_one(dl.changes)
        for n in range(10):
            await dl.agents.create(name=f"a{n}", type="worker")
        await dl.changes.prune()
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeConsumerLost") == ["firing"]
        async with await psycopg.AsyncConnection.connect(database.superuser) as blocker:
            # Every read of the consumers waits on this lock: the feeds part cannot be read.
            await blocker.execute("LOCK TABLE change_consumers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(dl.check_alerts(), 1.0)
            # Cut short by the sampler's statement timeout (5 s) this time.
            await asyncio.wait_for(dl.check_alerts(), 30)
            assert "could not sample the outbox and change feed gauges" in caplog.text
            await blocker.execute("DELETE FROM change_consumers")
            await blocker.commit()
        assert heard.of("AgencyDataChangeConsumerLost") == ["firing"]
        assert heard.of("AgencyDataChangeFeedFull") == ["firing"]
        # Read again once the lock is gone: the consumer was deleted, the alert resolves.
        await dl.check_alerts()
        assert heard.of("AgencyDataChangeConsumerLost") == ["firing", "resolved"]


async def test_bad_bounds_are_refused_when_configured(tmp_path: Path) -> None:
    for bad in (
        {"changes_fill": 0},
        {"changes_fill": 1.5},
        {"changes_full_for": -1},
        {"outbox_age": 0},
        {"outbox_refused_window": 0},
        {"outbox_age": "soon"},
    ):
        with pytest.raises(ConfigError):
            DataLayer(monitoring={"alerts": bad}, embedded={"data_dir": tmp_path})
