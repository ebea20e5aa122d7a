"""The task queue's SQL, built by pure functions that return ``(query, params)``.

Every statement names the tenant (row-level security enforces it as well). Times are the
server's: a lease, a due time or a backoff is measured by one clock, however many workers and
clocks there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString
from uuid import UUID

from agency_data.postgres.database import Params, Query

COLUMNS: LiteralString = (
    "id, tenant_id, agent_id, type, status, priority, data, result, error, attempts, "
    "max_attempts, created_at, updated_at, started_at, finished_at, run_at, key, lease_token, "
    "lease_expires_at, blocked_by, traceback"
)
# Reads show no lease token: only the claim that made it hands it out, so that whoever can
# read a task cannot act as its holder (they can still override, as an operator, by id).
READ_COLUMNS: LiteralString = (
    "id, tenant_id, agent_id, type, status, priority, data, result, error, attempts, "
    "max_attempts, created_at, updated_at, started_at, finished_at, run_at, key, "
    "NULL::uuid AS lease_token, lease_expires_at, blocked_by, traceback"
)
_T_COLUMNS: LiteralString = (
    "t.id, t.tenant_id, t.agent_id, t.type, t.status, t.priority, t.data, t.result, t.error, "
    "t.attempts, t.max_attempts, t.created_at, t.updated_at, t.started_at, t.finished_at, "
    "t.run_at, t.key, t.lease_token, t.lease_expires_at, t.blocked_by, t.traceback"
)
LIVE_KEY: LiteralString = (
    "(tenant_id, key) WHERE key IS NOT NULL AND status IN ('pending', 'running')"
)


@dataclass(frozen=True, slots=True)
class NewTask:
    """One validated row to insert."""

    id: UUID
    type: str
    data: str
    priority: int
    agent_id: UUID | None
    run_at: datetime | None
    delay: float
    max_attempts: int | None
    key: str | None
    status: str = "pending"
    blocked_by: int = 0
    has_dependents: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Defaults:
    """The configured defaults a type's policy overrides."""

    lease_seconds: float
    max_attempts: int
    retry_first: float
    retry_most: float
    retry_jitter: float


def insert(
    tenant: str, rows: list[NewTask], defaults: Defaults, on_conflict: str | None
) -> tuple[Query, Params]:
    """Insert ``rows``; with a key policy, a live task holding the same key wins the row.

    Many rows come as one array per column; one row as plain parameters (the common
    ``create``: arrays of one cost about a fifth of its speed).
    """
    values: list[Any]
    if len(rows) == 1:
        source: LiteralString = (
            "(VALUES (%s::uuid, %s::text, %s::jsonb, %s::int, %s::uuid, %s::timestamptz, "
            "%s::float8, %s::int, %s::text, %s::text, %s::int, %s::bool, %s::text, 1))"
        )
        values = list(_values(rows[0]))
    else:
        source = (
            "unnest(%s::uuid[], %s::text[], %s::jsonb[], %s::int[], %s::uuid[], "
            "%s::timestamptz[], %s::float8[], %s::int[], %s::text[], %s::text[], %s::int[], "
            "%s::bool[], %s::text[]) WITH ORDINALITY"
        )
        values = [list(c) for c in zip(*(_values(row) for row in rows), strict=True)]
    return (
        "INSERT INTO tasks (id, tenant_id, type, data, priority, agent_id, run_at, "
        "max_attempts, key, status, blocked_by, has_dependents, error, finished_at) "
        "SELECT i.id, %s, i.type, i.data, i.priority, i.agent_id, "
        "coalesce(i.run_at, clock_timestamp() + make_interval(secs => i.delay)), "
        "coalesce(i.max_attempts, p.max_attempts, %s), i.key, i.status, i.blocked_by, "
        "i.has_dependents, i.error, "
        # Born cancelled (a dependency had already ended): finished as it is made.
        "CASE WHEN i.status = 'pending' THEN NULL ELSE clock_timestamp() END "
        "FROM "
        + source
        + " AS i(id, type, data, priority, agent_id, run_at, delay, max_attempts, key, status, "
        "blocked_by, has_dependents, error, n) "
        "LEFT JOIN task_types AS p ON p.tenant_id = %s AND p.type = i.type "
        # In the order given: creation times (and so list order) follow it.
        "ORDER BY i.n" + _conflict(on_conflict) + " RETURNING " + COLUMNS,
        [tenant, defaults.max_attempts, *values, tenant],
    )


def _conflict(on_conflict: str | None) -> LiteralString:
    if on_conflict in ("return", "raise"):
        # "raise" too: the caller is told in words of its own, not the index's.
        return " ON CONFLICT " + LIVE_KEY + " DO NOTHING"
    if on_conflict == "replace":
        # Only a pending task can be replaced; a running one is left alone (and reported).
        return (
            " ON CONFLICT " + LIVE_KEY + " DO UPDATE SET data = EXCLUDED.data, "
            "priority = EXCLUDED.priority, agent_id = EXCLUDED.agent_id, "
            "run_at = EXCLUDED.run_at, max_attempts = EXCLUDED.max_attempts "
            "WHERE tasks.status = 'pending'"
        )
    return ""


def _values(row: NewTask) -> tuple[Any, ...]:
    return (
        row.id,
        row.type,
        row.data,
        row.priority,
        row.agent_id,
        row.run_at,
        row.delay,
        row.max_attempts,
        row.key,
        row.status,
        row.blocked_by,
        row.has_dependents,
        row.error,
    )


def live_with_keys(tenant: str, keys: list[str]) -> tuple[Query, Params]:
    """The live (pending or running) tasks holding ``keys``."""
    return (
        "SELECT " + READ_COLUMNS + " FROM tasks WHERE tenant_id = %s AND key = ANY(%s) "
        "AND status IN ('pending', 'running')",
        [tenant, keys],
    )


def mark_dependencies(tenant: str, ids: list[UUID]) -> tuple[Query, Params]:
    """Flag (and so lock) the tasks others are about to depend on; their status as of now."""
    # The row lock waits for a concurrent completion to commit, and the row read after it
    # is the committed one: a dependency cannot complete unseen between this and the insert.
    return (
        "UPDATE tasks SET has_dependents = true WHERE tenant_id = %s AND id = ANY(%s) "
        "RETURNING id, status",
        [tenant, ids],
    )


def insert_edges(tenant: str, edges: list[tuple[UUID, UUID]]) -> tuple[Query, Params]:
    """Record that each ``(task, dependency)`` pair's task waits on the dependency."""
    return (
        "INSERT INTO task_dependencies (tenant_id, task_id, depends_on) "
        "SELECT %s, task_id, depends_on FROM unnest(%s::uuid[], %s::uuid[]) "
        "AS e(task_id, depends_on)",
        [tenant, [e[0] for e in edges], [e[1] for e in edges]],
    )


def dependencies_of(tenant: str, task_id: UUID) -> tuple[Query, Params]:
    """The ids a task depends on."""
    return (
        "SELECT depends_on FROM task_dependencies WHERE tenant_id = %s AND task_id = %s "
        "ORDER BY depends_on",
        [tenant, task_id],
    )


def claim(
    tenant: str,
    agent_id: UUID,
    types: list[str] | None,
    n: int,
    lease_seconds: float | None,
    defaults: Defaults,
) -> tuple[Query, Params]:
    """Take up to ``n`` due tasks, leased for ``lease_seconds`` (or the type's, or default)."""
    type_filter: LiteralString = ""
    if types is not None:
        type_filter = "AND type = ANY(%s) "
    params: list[Any] = [tenant, *([types] if types is not None else []), tenant, n]
    params += [agent_id, lease_seconds, defaults.lease_seconds, tenant]
    # UPDATE ... RETURNING has no order of its own: the claimed rows are sorted again.
    return (
        "WITH next AS ("
        " SELECT id, type FROM tasks WHERE tenant_id = %s AND status = 'pending' "
        " AND blocked_by = 0 AND run_at <= now() "
        + type_filter
        # An anti-join, not "type <> ALL (paused types)": with one type queued the planner
        # reads that as matching almost nothing and sorts the whole queue instead of walking
        # the index (49 ms a claim at 100k tasks, against 1.2 ms).
        + " AND NOT EXISTS (SELECT 1 FROM task_types AS tt WHERE tt.tenant_id = %s"
        " AND tt.type = tasks.type AND tt.paused)"
        " ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED), "
        "claimed AS ("
        " UPDATE tasks AS t SET status = 'running', agent_id = %s,"
        " lease_token = gen_random_uuid(),"
        " lease_expires_at = clock_timestamp()"
        " + make_interval(secs => coalesce(%s::float8, p.lease_seconds, %s::float8))"
        " FROM next LEFT JOIN task_types AS p ON p.tenant_id = %s AND p.type = next.type"
        " WHERE t.id = next.id RETURNING " + _T_COLUMNS + ") "
        "SELECT * FROM claimed ORDER BY priority DESC, run_at, id",
        params,
    )


def rescue(tenant: str) -> tuple[Query, Params]:
    """Rescue expired leases: back to pending, or dead when out of attempts; a row each.

    Its own statement, run by a claim before it looks for work (a statement's later parts see
    the rows as they were when it began, so one statement could not claim what it rescued).
    """
    # At most 500 at once (the rest go with the next claim), oldest expiry first.
    # A rescued task is due at once: a crashed worker is seldom the task's fault, and its
    # attempts are bounded by max_attempts all the same.
    return (
        "UPDATE tasks AS t SET "
        "status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END, "
        "run_at = CASE WHEN t.attempts >= t.max_attempts THEN t.run_at "
        "ELSE clock_timestamp() END, "
        "error = format('attempt %%s lost its lease at %%s: the worker stopped heartbeating "
        "(crashed, killed or cut off)', t.attempts, t.lease_expires_at), "
        # No holder any more: the lost one's late calls are told so, whatever the status.
        "traceback = NULL, lease_token = NULL "
        "FROM (SELECT id FROM tasks WHERE tenant_id = %s AND status = 'running' "
        "AND lease_expires_at < now() ORDER BY lease_expires_at LIMIT 500 "
        "FOR UPDATE SKIP LOCKED) AS e WHERE t.id = e.id RETURNING t.id, t.status",
        [tenant],
    )


def next_wake(tenant: str, types: list[str] | None) -> tuple[Query, Params]:
    """Seconds until a scheduled task falls due or a lease runs out (NULL: neither)."""
    type_filter: LiteralString = "AND type = ANY(%s) " if types is not None else ""
    return (
        "SELECT extract(epoch FROM least("
        " (SELECT min(run_at) FROM tasks WHERE tenant_id = %s AND status = 'pending' "
        "  AND blocked_by = 0 AND run_at > now() " + type_filter + "),"
        " (SELECT min(lease_expires_at) FROM tasks WHERE tenant_id = %s AND status = 'running')"
        ") - clock_timestamp())::float8",
        [tenant, *([types] if types is not None else []), tenant],
    )


def heartbeat(
    tenant: str,
    beats: list[tuple[UUID, UUID, float | None]],
    defaults: Defaults,
) -> tuple[Query, Params]:
    """Extend the leases of ``(task, token, lease_seconds)``; the rows still held come back."""
    return (
        "UPDATE tasks AS t SET lease_expires_at = clock_timestamp() + make_interval(secs => "
        " coalesce(h.lease, (SELECT p.lease_seconds FROM task_types AS p "
        "  WHERE p.tenant_id = t.tenant_id AND p.type = t.type), %s::float8)) "
        "FROM unnest(%s::uuid[], %s::uuid[], %s::float8[]) AS h(id, token, lease) "
        "WHERE t.tenant_id = %s AND t.id = h.id AND t.lease_token = h.token "
        "AND t.status = 'running' RETURNING t.id, t.lease_expires_at",
        [
            defaults.lease_seconds,
            [b[0] for b in beats],
            [b[1] for b in beats],
            [b[2] for b in beats],
            tenant,
        ],
    )


def holders(tenant: str, ids: list[UUID]) -> tuple[Query, Params]:
    """What became of tasks a worker no longer holds: status, token, error."""
    return (
        "SELECT id, status, lease_token, error FROM tasks WHERE tenant_id = %s AND id = ANY(%s)",
        [tenant, ids],
    )


def complete(
    tenant: str, task_id: UUID, token: UUID | None, result: str | None
) -> tuple[Query, Params]:
    """Complete a running task (held by ``token``, when given)."""
    # Unfenced (an operator's override), the holder's token goes, so that the holder is
    # told someone else finished its task rather than taking it for its own resend.
    fence: LiteralString = " AND lease_token = %s" if token is not None else ""
    clear: LiteralString = "" if token is not None else ", lease_token = NULL"
    return (
        "UPDATE tasks SET status = 'completed', result = %s::jsonb, error = NULL, "
        "traceback = NULL"
        + clear
        + " WHERE tenant_id = %s AND id = %s AND status = 'running'"
        + fence
        + " RETURNING "
        + COLUMNS,
        [result, tenant, task_id, *([token] if token is not None else [])],
    )


def fail(
    tenant: str,
    task_id: UUID,
    token: UUID | None,
    error: str,
    traceback: str | None,
    retry: bool,
    defaults: Defaults,
) -> tuple[Query, Params]:
    """Fail a running task: back to pending after a backoff, or dead, or failed for good."""
    fence: LiteralString = " AND t.lease_token = %(token)s" if token is not None else ""
    clear: LiteralString = "" if token is not None else ", lease_token = NULL"
    # The step doubles from retry_first with every attempt up to retry_most, and is then
    # shortened by up to retry_jitter, at random: tasks failing together do not come back
    # together, even at the ceiling, and none waits longer than retry_most.
    step: LiteralString = (
        "least(coalesce((SELECT p.retry_most FROM task_types AS p WHERE p.tenant_id = "
        "t.tenant_id AND p.type = t.type), %(most)s::float8), "
        "coalesce((SELECT p.retry_first FROM task_types AS p WHERE p.tenant_id = t.tenant_id "
        "AND p.type = t.type), %(first)s::float8) * power(2, least(t.attempts - 1, 60))) "
        "* (1 - %(jitter)s::float8 * random())"
    )
    return (
        "UPDATE tasks AS t SET "
        "status = CASE WHEN NOT %(retry)s THEN 'failed' "
        " WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END, "
        "run_at = CASE WHEN %(retry)s AND t.attempts < t.max_attempts "
        " THEN clock_timestamp() + make_interval(secs => " + step + ") ELSE t.run_at END, "
        "error = %(error)s, traceback = %(traceback)s"
        + clear
        + " WHERE t.tenant_id = %(tenant)s AND t.id = %(id)s AND t.status = 'running'"
        + fence
        + " RETURNING "
        + _T_COLUMNS,
        {
            "retry": retry,
            "most": defaults.retry_most,
            "first": defaults.retry_first,
            "jitter": defaults.retry_jitter,
            "error": error,
            "traceback": traceback,
            "tenant": tenant,
            "id": task_id,
            "token": token,
        },
    )


def move(
    tenant: str,
    task_id: UUID,
    to: LiteralString,
    from_: list[str],
    *,
    reason: str | None = None,
) -> tuple[Query, Params]:
    """Move a task from one of ``from_`` to ``to`` (cancel, retry)."""
    return (
        "UPDATE tasks SET status = '" + to + "', error = coalesce(%s, error) "
        "WHERE tenant_id = %s AND id = %s AND status = ANY(%s) RETURNING " + COLUMNS,
        [reason, tenant, task_id, from_],
    )


def requeue_dead(
    tenant: str, ids: list[UUID] | None, types: list[str] | None, limit: int
) -> tuple[Query, Params]:
    """Send dead tasks back to the queue with their attempts counted afresh.

    A key is unique among live tasks, so a dead task whose key a live task holds stays dead,
    and of several dead tasks sharing a key only the latest goes back.
    """
    where: LiteralString = ""
    params: list[Any] = [tenant]
    if ids is not None:
        where += " AND id = ANY(%s)"
        params.append(ids)
    if types is not None:
        where += " AND type = ANY(%s)"
        params.append(types)
    params.append(limit)
    return (
        "UPDATE tasks AS t SET status = 'pending', attempts = 0, run_at = clock_timestamp() "
        "FROM (SELECT id FROM ("
        " SELECT DISTINCT ON (key IS NULL, coalesce(key, id::text)) id, finished_at"
        " FROM tasks AS d"
        " WHERE tenant_id = %s AND status = 'dead'"
        + where
        + " AND (key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS l"
        "  WHERE l.tenant_id = d.tenant_id AND l.key = d.key"
        "  AND l.status IN ('pending', 'running')))"
        " ORDER BY key IS NULL, coalesce(key, id::text), finished_at DESC) AS latest"
        " ORDER BY finished_at, id LIMIT %s) AS d "
        # Rechecked on the row itself: a concurrent requeue may have taken it first.
        "WHERE t.id = d.id AND t.status = 'dead' RETURNING " + _T_COLUMNS,
        params,
    )


def state_of(tenant: str, task_id: UUID) -> tuple[Query, Params]:
    """A task as it is now (token included), for telling a worker what happened."""
    return (
        "SELECT " + COLUMNS + " FROM tasks WHERE tenant_id = %s AND id = %s",
        [tenant, task_id],
    )


def stats(tenant: str) -> tuple[Query, Params]:
    """The numbers behind :class:`~agency_data.models.TaskStats`, in one round trip."""
    return (
        "SELECT "
        "(SELECT coalesce(jsonb_object_agg(status, by_type), '{}') FROM ("
        "  SELECT status, jsonb_object_agg(type, n) AS by_type FROM ("
        "   SELECT status, type, count(*) AS n FROM tasks WHERE tenant_id = %s "
        "   GROUP BY status, type) AS c GROUP BY status) AS s) AS counts, "
        "extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending' "
        " AND blocked_by = 0 AND run_at <= now() AND type <> ALL (paused.types)))::float8"
        " AS oldest_pending_age, "
        "count(*) FILTER (WHERE status = 'pending' AND run_at > now()) AS scheduled, "
        "count(*) FILTER (WHERE status = 'pending' AND blocked_by > 0) AS blocked, "
        "count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now()) "
        " AS expired_leases, "
        "min(lease_expires_at) FILTER (WHERE status = 'running' AND lease_expires_at >= now()) "
        " AS next_lease_expiry, "
        "paused.types AS paused_types "
        "FROM (SELECT ARRAY(SELECT type FROM task_types WHERE tenant_id = %s AND paused "
        " ORDER BY type) AS types) AS paused "
        "LEFT JOIN tasks ON tenant_id = %s AND status IN ('pending', 'running') "
        "GROUP BY paused.types",
        [tenant, tenant, tenant],
    )


def give_back(tenant: str, task_id: UUID, token: UUID, reason: str) -> tuple[Query, Params]:
    """Hand a held task back to the queue at once (dead if that was its last attempt).

    The attempt counts: a task that is always cut short must not come back for ever.
    """
    return (
        "UPDATE tasks AS t SET "
        "status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END, "
        "run_at = CASE WHEN t.attempts >= t.max_attempts THEN t.run_at "
        "ELSE clock_timestamp() END, error = %s, traceback = NULL "
        "WHERE t.tenant_id = %s AND t.id = %s AND t.lease_token = %s AND t.status = 'running' "
        "RETURNING " + _T_COLUMNS,
        [reason, tenant, task_id, token],
    )


def unclaim(tenant: str, held: list[tuple[UUID, UUID]]) -> tuple[Query, Params]:
    """Hand claimed tasks back as if never claimed: pending, due as before, the attempt
    uncounted; only those still running under the given tokens. A row (id) each."""
    return (
        "UPDATE tasks AS t SET status = 'pending', attempts = greatest(t.attempts - 1, 0) "
        "FROM unnest(%s::uuid[], %s::uuid[]) AS h(id, token) "
        "WHERE t.tenant_id = %s AND t.id = h.id AND t.lease_token = h.token "
        "AND t.status = 'running' RETURNING t.id",
        [[task_id for task_id, _ in held], [token for _, token in held], tenant],
    )


POLICY_COLUMNS: LiteralString = "type, paused, lease_seconds, max_attempts, retry_first, retry_most"


def set_policy(tenant: str, type: str, values: dict[str, Any]) -> tuple[Query, Params]:
    """Set a type's lease, attempts and backoff (None: the configured default)."""
    return (
        "INSERT INTO task_types (tenant_id, type, lease_seconds, max_attempts, retry_first, "
        "retry_most) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, type) DO UPDATE "
        "SET lease_seconds = EXCLUDED.lease_seconds, max_attempts = EXCLUDED.max_attempts, "
        "retry_first = EXCLUDED.retry_first, retry_most = EXCLUDED.retry_most, "
        "updated_at = clock_timestamp() RETURNING " + POLICY_COLUMNS,
        [
            tenant,
            type,
            values["lease_seconds"],
            values["max_attempts"],
            values["retry_first"],
            values["retry_most"],
        ],
    )


def set_paused(tenant: str, type: str, paused: bool) -> tuple[Query, Params]:
    """Pause or resume claiming of one type."""
    return (
        "INSERT INTO task_types (tenant_id, type, paused) VALUES (%s, %s, %s) "
        "ON CONFLICT (tenant_id, type) DO UPDATE SET paused = EXCLUDED.paused, "
        "updated_at = clock_timestamp() RETURNING " + POLICY_COLUMNS,
        [tenant, type, paused],
    )


def policies(tenant: str, type: str | None) -> tuple[Query, Params]:
    """The types with a policy of their own (or just ``type``)."""
    if type is None:
        return (
            "SELECT " + POLICY_COLUMNS + " FROM task_types WHERE tenant_id = %s ORDER BY type",
            [tenant],
        )
    return (
        "SELECT " + POLICY_COLUMNS + " FROM task_types WHERE tenant_id = %s AND type = %s",
        [tenant, type],
    )
