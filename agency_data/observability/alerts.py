"""Alert rules evaluated in process on the live metrics: each fires once and resolves once.

The rules are the ones shipped for Prometheus in ``deploy/prometheus/agency-data-rules.yml``
(same names, same meaning); their bounds are ``monitoring.alerts``. Every
``monitoring.interval`` seconds the DataLayer takes a sample and evaluates them. A condition
must hold for its rule's duration before the alert fires; it resolves the first evaluation
the condition no longer holds (or its series is gone: a dropped collection, a closed pool).
Each change is delivered to the callbacks of :meth:`Alerts.on`, to the ``agency_data.alerts``
log, and to ``monitoring.alerts.webhook_url`` if set.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from agency_data.config import AlertsConfig
from agency_data.errors import ValidationError
from agency_data.inputs import brief
from agency_data.models import DEFAULT_TENANT, CacheStats
from agency_data.observability.instrument import Telemetry
from agency_data.observability.sampler import FeedSample, Sample
from agency_data.observability.timings import Timings

__all__ = ["RULE_NAMES", "Alert", "AlertCallback", "Alerts"]

_log = logging.getLogger("agency_data.alerts")

RULE_NAMES: tuple[str, ...] = (
    "AgencyDataPoolSaturated",
    "AgencyDataOperationSlow",
    "AgencyDataCacheHitRateLow",
    "AgencyDataBackendDown",
    "AgencyDataDiskSpaceLow",
    "AgencyDataVectorIndexInvalid",
    "AgencyDataVectorIndexBloated",
    "AgencyDataVectorRecallLow",
    "AgencyDataDenialsRepeated",
    "AgencyDataChangeFeedFull",
    "AgencyDataChangeConsumerLost",
    "AgencyDataOutboxStalled",
    "AgencyDataOutboxRefused",
)
# The rules judged on live counters every round, and those judged on a part of the sample,
# which a round may fail to read (PostgreSQL down or slow): theirs then carry over.
_LIVE_RULES = (
    "AgencyDataPoolSaturated",
    "AgencyDataOperationSlow",
    "AgencyDataCacheHitRateLow",
    "AgencyDataVectorRecallLow",
    "AgencyDataDenialsRepeated",
    "AgencyDataOutboxRefused",
)
_SAMPLED_RULES = {
    "backends": ("AgencyDataBackendDown",),
    "disk": ("AgencyDataDiskSpaceLow",),
    "indexes": ("AgencyDataVectorIndexInvalid", "AgencyDataVectorIndexBloated"),
    "feeds": (
        "AgencyDataChangeFeedFull",
        "AgencyDataChangeConsumerLost",
        "AgencyDataOutboxStalled",
    ),
}
# Operations with no p95 budget unless one is configured: bulk and administrative ones take as
# long as their input, and claims and lock acquisitions wait by design. The Prometheus rule
# has the same pattern.
_UNBUDGETED = re.compile(
    r".*_many|admin[.].*|tasks[.](claim|sweep|requeue_dead|run_due_schedules)|lock[.]acquire"
    r"|embeddings[.](stream_store|batch_search|measure_recall)"
)
_CRITICAL = frozenset(
    {"AgencyDataBackendDown", "AgencyDataDiskSpaceLow", "AgencyDataVectorIndexInvalid"}
)
_WEBHOOK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Alert:
    """One alert's change of state: it started firing, or it resolved."""

    name: str
    labels: dict[str, str]
    status: Literal["firing", "resolved"]
    severity: Literal["critical", "warning"]
    value: float
    summary: str
    action: str
    started_at: datetime
    ended_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (times as ISO 8601)."""
        return {
            "name": self.name,
            "labels": self.labels,
            "status": self.status,
            "severity": self.severity,
            "value": self.value,
            "summary": self.summary,
            "action": self.action,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


AlertCallback = Callable[[Alert], Awaitable[None] | None]


@dataclass(frozen=True)
class _Finding:
    """One rule's judgement of one series at one evaluation."""

    name: str
    labels: tuple[tuple[str, str], ...]
    breached: bool
    value: float
    summary: str
    action: str
    hold: float


@dataclass
class _State:
    pending_since: float
    firing: Alert | None = None


@dataclass
class _Snapshot:
    at: float
    operations: dict[str, Timings] = field(default_factory=dict)
    cache: tuple[int, int, int] = (0, 0, 0)  # hits (l1 + l2), l2 misses, reads
    denials: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # outbox messages Redis refused


class Alerts:
    """The rules, their state, and where their changes go (``dl.alerts``)."""

    def __init__(
        self,
        config: AlertsConfig,
        telemetry: Telemetry,
        *,
        pools: Callable[[], dict[str, Any]],
        cache_stats: Callable[[], CacheStats | None],
        denials: Callable[[], dict[str, int]],
    ) -> None:
        self.config = config
        self._telemetry = telemetry
        self._pools = pools
        self._cache_stats = cache_stats
        self._denials = denials
        self._callbacks: list[AlertCallback] = []
        self._states: dict[tuple[str, tuple[tuple[str, str], ...]], _State] = {}
        self._history: deque[_Snapshot] = deque()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._last_delivery: asyncio.Task[None] | None = None

    # -- public ------------------------------------------------------------------------------

    def on(self, callback: AlertCallback) -> Callable[[], None]:
        """Call ``callback(alert)`` (a function or coroutine function) at each change.

        Returns a function that removes the callback. A callback's exception is logged, never
        raised into the layer.
        """
        if not callable(callback):
            raise ValidationError(
                f"callback must be callable, not {brief(callback)}", field="callback"
            )
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def firing(self) -> list[Alert]:
        """The alerts firing now."""
        # list() copies in one step: the /metrics thread calls this while the loop evaluates.
        return [s.firing for s in list(self._states.values()) if s.firing is not None]

    async def evaluate(self, sample: Sample | None) -> list[Alert]:
        """Judge every rule once on ``sample`` and the live counters; deliver and return changes."""
        now = time.monotonic()
        snapshot = self._snapshot(now)
        findings = list(self._judge(sample, snapshot, now))
        judged = set(_LIVE_RULES)
        if sample is not None:
            judged.update(
                rule
                for part, rules in _SAMPLED_RULES.items()
                if part in sample.read
                for rule in rules
            )
        changes = self._advance(findings, judged, now)
        for alert in changes:
            await self._deliver(alert)
        return changes

    async def aclose(self) -> None:
        """Wait for webhook deliveries still in flight."""
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    # -- state ---------------------------------------------------------------------------------

    def _advance(self, findings: list[_Finding], judged: set[str], now: float) -> list[Alert]:
        changes: list[Alert] = []
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        wall = datetime.now(UTC)
        for finding in findings:
            key = (finding.name, finding.labels)
            seen.add(key)
            state = self._states.get(key)
            if not finding.breached:
                if state is not None:
                    del self._states[key]
                    if state.firing is not None:
                        changes.append(self._resolved(state.firing, finding.value, wall))
                continue
            if state is None:
                state = self._states[key] = _State(pending_since=now)
            if state.firing is None and now - state.pending_since >= finding.hold:
                state.firing = Alert(
                    name=finding.name,
                    labels=dict(finding.labels),
                    status="firing",
                    severity="critical" if finding.name in _CRITICAL else "warning",
                    value=finding.value,
                    summary=finding.summary,
                    action=finding.action,
                    started_at=wall,
                )
                changes.append(state.firing)
        for key in [k for k in self._states if k not in seen and k[0] in judged]:
            # The series is gone (a dropped collection, a pool closed): nothing to fire on.
            # A rule whose part of the sample could not be read this round keeps its state.
            state = self._states.pop(key)
            if state.firing is not None:
                changes.append(self._resolved(state.firing, state.firing.value, wall))
        return changes

    @staticmethod
    def _resolved(alert: Alert, value: float, wall: datetime) -> Alert:
        return replace(alert, status="resolved", value=value, ended_at=wall)

    async def _deliver(self, alert: Alert) -> None:
        line = orjson.dumps({"event": "alert", **alert.as_dict()}).decode()
        _log.log(logging.WARNING if alert.status == "firing" else logging.INFO, line)
        for callback in list(self._callbacks):
            try:
                outcome = callback(alert)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the others
                _log.exception("an alert callback failed")
        if self.config.webhook_url is not None:
            # One after another: a receiver must see an alert resolve after it fired.
            previous = self._last_delivery
            task = asyncio.create_task(
                self._post(alert, previous), name="agency-data-alert-webhook"
            )
            self._last_delivery = task
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _post(self, alert: Alert, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        assert self.config.webhook_url is not None
        url = self.config.webhook_url.get_secret_value()
        body = orjson.dumps(_webhook_payload(alert))
        try:
            await asyncio.to_thread(_post_json, url, body)
        except Exception as exc:  # noqa: BLE001 - delivery failures are logged, not raised
            # The URL may carry a token: name the alert, not the address.
            _log.warning(
                "could not deliver alert %s to the webhook: %s", alert.name, type(exc).__name__
            )

    # -- counters over windows -----------------------------------------------------------------

    def _snapshot(self, now: float) -> _Snapshot:
        snapshot = _Snapshot(at=now)
        for op in list(self._telemetry.operations.values()):
            key = op.name if op.tenant is None else f"{op.name}\0{op.tenant}"
            snapshot.operations[key] = op.ok.copy()
        stats = self._cache_stats()
        if stats is not None:
            # A read is an L1 hit, or a lookup further down: in L2 (L1 misses go there, and
            # every read while L1 is not trusted), or none when there is no L2 (an L1 miss).
            hits = stats.l1_hits + stats.l2_hits
            lookups = max(stats.l1_misses, stats.l2_hits + stats.l2_misses)
            snapshot.cache = (hits, stats.l2_misses, stats.l1_hits + lookups)
        snapshot.denials = dict(self._denials())
        snapshot.refused = self._telemetry.outbox_refused
        self._history.append(snapshot)
        longest = max(
            self.config.operation_window,
            self.config.cache_window,
            self.config.denials_window,
            self.config.outbox_refused_window,
        )
        while len(self._history) > 1 and now - self._history[1].at >= longest:
            self._history.popleft()
        return snapshot

    def _since(self, now: float, window: float) -> _Snapshot | None:
        # What the counters were one window ago: the latest snapshot at least that old, else
        # the oldest there is (the window is not full yet); None when the current snapshot is
        # the only one, and the counts since start are the window.
        older = [s for s in self._history if now - s.at >= window]
        if older:
            return older[-1]
        first = self._history[0]
        return None if first.at == now else first

    # -- the rules -----------------------------------------------------------------------------

    def _judge(self, sample: Sample | None, now_snap: _Snapshot, now: float) -> Iterator[_Finding]:
        c = self.config
        yield from self._pool_rule()
        yield from self._operation_rule(now_snap, now)
        yield from self._cache_rule(now_snap, now)
        yield from self._denial_rule(now_snap, now)
        yield from self._refused_rule(now_snap, now)
        if sample is not None and sample.feeds is not None:
            yield from _feed_rules(sample.feeds, c)
        if sample is not None:
            for backend, up in sorted(sample.backends.items()):
                yield _Finding(
                    "AgencyDataBackendDown",
                    (("backend", backend),),
                    not up,
                    0.0 if not up else 1.0,
                    f"{backend} did not answer its probe",
                    f"check that {backend} is running and reachable; writes to PostgreSQL are "
                    "refused while it is down, the cache degrades to misses while Redis is",
                    c.backend_down_for,
                )
            for volume, (free, total) in sorted(sample.disk.items()):
                share = free / total if total else 1.0
                yield _Finding(
                    "AgencyDataDiskSpaceLow",
                    (("volume", volume),),
                    share < c.disk_free,
                    share,
                    f"{share:.1%} of the {volume} volume is free ({free // (1 << 20)} MiB)",
                    "free space or grow the volume before PostgreSQL refuses writes",
                    c.disk_low_for,
                )
            for name, index in sorted(sample.indexes.items()):
                labels = (("collection", name),)
                if index.present:
                    yield _Finding(
                        "AgencyDataVectorIndexInvalid",
                        labels,
                        not index.valid,
                        1.0 if index.valid else 0.0,
                        f"the vector index of {name!r} is invalid (a failed concurrent build)",
                        f"rebuild it: await dl.admin.reindex({name!r})",
                        0.0,
                    )
                if index.dead_ratio is not None:
                    yield _Finding(
                        "AgencyDataVectorIndexBloated",
                        labels,
                        index.dead_ratio > c.dead_rows,
                        index.dead_ratio,
                        f"{index.dead_ratio:.0%} of {name!r}'s rows are dead",
                        f"await dl.admin.optimize({name!r}) (VACUUM, then rebuild if needed)",
                        c.dead_rows_for,
                    )
        for name, recall in sorted(self._telemetry.recall.items()):
            yield _Finding(
                "AgencyDataVectorRecallLow",
                (("collection", name),),
                recall < c.recall,
                recall,
                f"the index of {name!r} finds an estimated {recall:.0%} of the true neighbours",
                f"await dl.admin.optimize({name!r}) to rebuild or retune the index",
                c.recall_low_for,
            )

    def _pool_rule(self) -> Iterator[_Finding]:
        for name, pool in sorted(self._pools().items()):
            stats = pool.get_stats()
            used = stats.get("pool_size", 0) - stats.get("pool_available", 0)
            busy = (max(used, 0) + stats.get("requests_waiting", 0)) / pool.max_size
            yield _Finding(
                "AgencyDataPoolSaturated",
                (("pool", name),),
                busy >= self.config.pool_saturation,
                busy,
                f"the {name} pool is at {busy:.0%} of its {pool.max_size} connections",
                "raise postgresql.pool_max_size, or find what holds connections (long "
                "transactions, slow queries: agency-data top)",
                self.config.pool_saturation_for,
            )

    def _operation_rule(self, now_snap: _Snapshot, now: float) -> Iterator[_Finding]:
        c = self.config
        then = self._since(now, c.operation_window)
        for key, timings in sorted(now_snap.operations.items()):
            name, _, tenant = key.partition("\0")
            window = timings
            if then is not None and key in then.operations:
                window = timings.minus(then.operations[key])
            budget = c.operation_budgets.get(name)
            if budget is None:
                if _UNBUDGETED.fullmatch(name):
                    continue
                budget = c.operation_p95
            p95 = window.quantile(0.95) if window.count >= c.operation_min_calls else None
            labels = (("operation", name),) + ((("tenant", tenant),) if tenant else ())
            yield _Finding(
                "AgencyDataOperationSlow",
                labels,
                p95 is not None and p95 > budget,
                p95 or 0.0,
                f"p95 of {name} is {(p95 or 0) * 1000:.0f} ms (budget {budget * 1000:.0f} ms)",
                "see the slow-query log and agency-data top for the statements behind it",
                c.operation_slow_for,
            )

    def _cache_rule(self, now_snap: _Snapshot, now: float) -> Iterator[_Finding]:
        c = self.config
        if self._cache_stats() is None:
            return
        then = self._since(now, c.cache_window)
        hits, reads = now_snap.cache[0], now_snap.cache[2]
        if then is not None:
            hits, reads = hits - then.cache[0], reads - then.cache[2]
        rate = hits / reads if reads else 1.0
        yield _Finding(
            "AgencyDataCacheHitRateLow",
            (),
            reads >= c.cache_min_reads and rate < c.cache_hit_rate,
            rate,
            f"the cache answered {rate:.0%} of {reads} reads",
            "check the TTLs and what is invalidated; a cold start or Redis restart also does it",
            c.cache_low_for,
        )

    def _denial_rule(self, now_snap: _Snapshot, now: float) -> Iterator[_Finding]:
        c = self.config
        then = self._since(now, c.denials_window)
        for kind, count in sorted(now_snap.denials.items()):
            recent = count - then.denials.get(kind, 0) if then is not None else count
            yield _Finding(
                "AgencyDataDenialsRepeated",
                (("kind", kind),),
                recent > c.denials,
                float(recent),
                f"{recent} {kind} denials in the last {c.denials_window:.0f} s",
                "look for a misconfigured client or an attempt to read another tenant's rows",
                0.0,
            )

    def _refused_rule(self, now_snap: _Snapshot, now: float) -> Iterator[_Finding]:
        window = self.config.outbox_refused_window
        then = self._since(now, window)
        recent = now_snap.refused - (then.refused if then is not None else 0)
        yield _Finding(
            "AgencyDataOutboxRefused",
            (),
            recent > 0,
            float(recent),
            f"Redis refused {recent} outbox message(s) in the last {window:.0f} s",
            "they are set aside, not sent: SELECT destination, error FROM outbox WHERE "
            "failed_at IS NOT NULL shows why (a key of another type at the stream's key, say); "
            "fix that, publish them again and delete those rows",
            0.0,
        )


def _feed_rules(feeds: FeedSample, c: AlertsConfig) -> Iterator[_Finding]:
    # A consumer behind by half of what is kept is what holds the feed back; else the config
    # (or a feed nothing prunes) is.
    if feeds.laggard is not None and 2 * feeds.laggard_behind >= feeds.retained > 0:
        action = (
            f"the named consumer {feeds.laggard} is {feeds.laggard_behind} changes behind and "
            f"holds them: resume it, or drop it if it is gone ({_drop_call(feeds.laggard)}); "
            "at the cap it is marked lost"
        )
    else:
        action = (
            "no named consumer holds them: changes.keep keeps more changes than max_rows "
            "(raise changes.max_rows or lower changes.keep), or nothing prunes the feed (each "
            "relay prunes it every minute: run one, outbox.relay = true)"
        )
    yield _Finding(
        "AgencyDataChangeFeedFull",
        (),
        feeds.fill >= c.changes_fill,
        feeds.fill,
        f"the change feed keeps {feeds.retained} changes, {feeds.fill:.0%} of "
        f"changes.max_rows = {feeds.max_rows}",
        action,
        c.changes_full_for,
    )
    yield _Finding(
        "AgencyDataChangeConsumerLost",
        (),
        feeds.lost > 0,
        float(feeds.lost),
        f"{feeds.lost} named change-feed consumer(s) lost changes they had not read "
        f"(changes.max_rows = {feeds.max_rows}): {', '.join(feeds.lost_names)}"
        + (", ..." if feeds.lost > len(feeds.lost_names) else ""),
        "each must reload what it derives from the changes and read on from since='now' once "
        + (f"dropped: {_drop_call(feeds.lost_names[0])}" if feeds.lost_names else "dropped")
        + "; if consumers fall this far behind in normal running, raise changes.max_rows",
        0.0,
    )
    age = feeds.oldest_unsent or 0.0
    yield _Finding(
        "AgencyDataOutboxStalled",
        (),
        age > c.outbox_age,
        age,
        f"the oldest of {feeds.unsent} unsent outbox message(s) committed {age:.0f} s ago",
        "no relay is sending them: run one (outbox.relay = true in a process, or await "
        "dl.outbox.relay()), check that Redis is reachable (AgencyDataBackendDown) and the "
        "relays' log ('relaying the outbox failed')",
        0.0,
    )


def _drop_call(who: str) -> str:
    # "tenant/name": tenant ids have no '/'.
    tenant, _, name = who.partition("/")
    scope = "dl" if tenant == DEFAULT_TENANT else f"dl.tenant({tenant!r})"
    return f"await {scope}.changes.drop({name!r})"


def _webhook_payload(alert: Alert) -> dict[str, Any]:
    # Alertmanager's webhook shape, so receivers written for it read ours.
    return {
        "version": "4",
        "status": alert.status,
        "receiver": "agency-data",
        "alerts": [
            {
                "status": alert.status,
                "labels": {"alertname": alert.name, "severity": alert.severity, **alert.labels},
                "annotations": {"summary": alert.summary, "action": alert.action},
                "startsAt": alert.started_at.isoformat(),
                "endsAt": alert.ended_at.isoformat() if alert.ended_at else None,
                "value": alert.value,
            }
        ],
    }


def _post_json(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=_WEBHOOK_TIMEOUT) as response:
        response.read()
