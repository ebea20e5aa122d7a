"""Read replicas: lag-tolerant reads go to a streaming standby that is close enough behind.

The reads the stores mark as tolerating lag (``get``, ``list``, ``count``, ``search``,
``find_similar``, ``batch_search``, ``hybrid_search``; ``fetch(..., replica=True)``; and
``transaction(readonly=True)``) run on a replica whose lag is at most
``postgresql.max_replica_lag`` seconds; every other statement, and every read inside a
transaction, runs on the primary. Replicas are taken in turn.

Lag is measured every ``postgresql.replica_check_interval`` seconds: the primary's flushed
WAL position is read first, then each replica's replayed position; a replica that has
replayed that far is 0 s behind, otherwise it is behind by the time since the last commit
it replayed. A replica not in recovery (promoted) is no replica and is skipped.

Read-your-writes (``consistent=True``): the end of the primary's WAL, read when the call
starts, covers every commit acknowledged before it (the caller's included); the read
goes to a replica that has replayed that far, waiting up to ``postgresql.replica_wait``
seconds for one to get there, else to the primary.

A replica that fails a read (down, or the read cancelled by a recovery conflict) is marked
down until the next check finds it answering, and the read runs again on the primary: the
caller sees no error. Each fallback is counted by reason, and a replica going down or coming
back is logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row

from agency_data.config import PostgresConfig
from agency_data.errors import (
    BackendUnavailable,
    PoolTimeout,
    QueryError,
    SerializationFailure,
)
from agency_data.postgres.errors import ServerUnreachable
from agency_data.postgres.pool import Pool, open_pool

if TYPE_CHECKING:
    from agency_data.postgres.database import Database

__all__ = [
    "Replica",
    "ReplicaState",
    "Replicas",
    "open_replicas",
]

_log = logging.getLogger("agency_data.postgres.replicas")

T = TypeVar("T")

# Fallback reasons (the label of agency_data_replica_fallbacks_total): no replica answering,
# every answering one too far behind, none caught up with a consistent read's position (or
# lacking a table or column the primary has), the primary's position unreadable, the chosen
# replica's pool busy, a replica failing the read itself.
REASONS = ("down", "lag", "behind", "primary", "busy", "failed")

# What a standby that has not yet replayed a migration or a new collection answers: no such
# table, column, function, schema or type.
_NOT_REPLAYED_YET = frozenset({"42P01", "42703", "42883", "3F000", "42704"})

# Seconds a read waits for a replica's connection before the primary serves it.
_CHECKOUT_BOUND = 0.25

_STATE_SQL = (
    "SELECT pg_is_in_recovery() AS in_recovery, "
    "pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replayed, "
    "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_commit"
)
_PRIMARY_LSN_SQL = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint AS lsn"
# Where the primary's WAL ends: past every commit made so far, including those acknowledged
# before reaching the disk (synchronous_commit = off), which the flushed position may not be.
_INSERTED_SQL = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS lsn"
_REPLAYED_SQL = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replayed"


@dataclass
class ReplicaState:
    """What the latest check found: answering, in recovery, how far behind."""

    up: bool = False
    lag: float | None = None
    replayed: int = 0


@dataclass
class Replica:
    """One replica: its pool, its state, and its views per tenant."""

    name: str
    pool: Pool
    state: ReplicaState = field(default_factory=ReplicaState)
    reads: int = 0
    was_up: bool = False
    checked: bool = False
    views: dict[tuple[str | None, bool, bool], Database] = field(default_factory=dict)
    # The connections its reads have out, cut off when it stops answering.
    lent: set[AsyncConnection[DictRow]] = field(default_factory=set)
    # The checks' own connection (outside the pool), made again when it breaks.
    check_conn: AsyncConnection[DictRow] | None = None

    def abandon(self) -> None:
        """End the reads waiting on this replica now: they run again on the primary.

        Their sockets are shut down, so each read fails at once as on a lost connection (a
        cancelled query would wait seconds for the hung server to acknowledge it).
        """
        for conn in list(self.lent):
            _shut(conn)


class Replicas:
    """The replicas of one DataLayer, the choice among them, and their lag checks."""

    def __init__(self, replicas: list[Replica], primary: Database, config: PostgresConfig) -> None:
        self.replicas = replicas
        self._primary = primary
        self._config = config
        self._turn = itertools.count()
        self.fallbacks: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._checker: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every replica once (so the first reads may use them), then keep checking."""
        await self.check()
        self._checker = asyncio.create_task(self._check_forever(), name="agency-data-replicas")

    async def aclose(self) -> None:
        """Stop checking and close the replicas' pools."""
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
        for replica in self.replicas:
            if replica.check_conn is not None:
                await replica.check_conn.close()
            await replica.pool.close()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.replica_check_interval)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the checker must outlive one bad round
                _log.exception("checking the read replicas failed")

    async def check(self) -> None:
        """Measure every replica's lag now (the primary's position first, then each one's)."""
        try:
            primary = await self._primary_lsn()
        except BackendUnavailable:
            primary = None  # lag is then judged by the time since the last replayed commit
        await asyncio.gather(*(self._check_one(replica, primary) for replica in self.replicas))

    async def _check_one(self, replica: Replica, primary: int | None) -> None:
        state = ReplicaState()
        try:
            # On a connection of the check's own, outside the pool: a pool whose every
            # connection is out on reads (to a replica that may have hung) must not keep the
            # check from finding out.
            conn = await self._check_connection(replica)
            row = await _ask(conn, _STATE_SQL, self._check_bound())
        except TimeoutError:
            self._set(replica, state, f"no answer within {self._check_bound():.1f} s")
            return
        except Exception as exc:  # noqa: BLE001 - down or refusing: unusable
            self._set(replica, state, f"unreachable ({type(exc).__name__})")
            return
        assert row is not None
        if not row["in_recovery"]:
            self._set(replica, state, "not in recovery (promoted?): no longer a replica")
            return
        state.up = True
        state.replayed = int(row["replayed"] or 0)
        if primary is not None and state.replayed >= primary:
            state.lag = 0.0
        else:
            since = row["since_commit"]
            state.lag = float(since) if since is not None else None
        self._set(replica, state, None)

    async def _check_connection(self, replica: Replica) -> AsyncConnection[DictRow]:
        conn = replica.check_conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        replica.check_conn = None
        bound = self._check_bound()
        # libpq's own bound (whole seconds) on the connect; the timer, in case a server that
        # accepted the socket never answers the startup (no query to cancel yet).
        conn = await asyncio.wait_for(
            AsyncConnection.connect(
                str(replica.pool.conninfo),
                autocommit=True,
                row_factory=dict_row,
                prepare_threshold=None,
                connect_timeout=max(2, int(bound)),
            ),
            bound + 1,
        )
        replica.check_conn = conn
        return conn

    def _set(self, replica: Replica, state: ReplicaState, problem: str | None) -> None:
        was_up = replica.state.up
        first, replica.checked = not replica.checked, True
        replica.state = state
        if problem is not None:
            replica.abandon()
            if was_up or first:
                _log.warning("read replica %s is out of use: %s", replica.name, problem)
        elif not was_up and replica.was_up:
            _log.info("read replica %s is back in use", replica.name)
        replica.was_up = replica.was_up or state.up

    def _check_bound(self) -> float:
        # Long enough that a replica busy on a loaded machine still answers a check (a cut
        # check ends the reads on it too), short enough to find a hung one within seconds.
        return max(2.0, self._config.replica_check_interval)

    # -- routing -------------------------------------------------------------------------------

    async def run(
        self, primary: Database, read: Callable[[Database], Awaitable[T]], consistent: bool
    ) -> T:
        """``read`` on a replica that fits (its view of ``primary``'s tenant), else on ``primary``."""
        replica, reason = await self._choose(consistent)
        if replica is None:
            self.fallbacks[reason] += 1
            return await read(primary)
        try:
            result = await read(self._view(replica, primary))
        except PoolTimeout:
            # Every connection of the replica's pool busy: the replica is fine, just full.
            self.fallbacks["busy"] += 1
            return await read(primary)
        except (BackendUnavailable, SerializationFailure) as exc:
            # A read runs again safely; a recovery conflict cancels it on a standby only.
            self._failed(replica, exc)
            return await read(primary)
        except QueryError as exc:
            if exc.sqlstate not in _NOT_REPLAYED_YET:
                raise
            # Something the primary has (a collection, or a column a migration just added)
            # that the standby has not replayed yet: it is behind, not broken.
            self.fallbacks["behind"] += 1
            return await read(primary)
        replica.reads += 1
        return result

    async def borrow(
        self, stack: AsyncExitStack, consistent: bool
    ) -> AsyncConnection[DictRow] | None:
        """A replica's connection for a read-only transaction, returned when ``stack`` closes;
        None when no replica fits (the caller then uses the primary's)."""
        replica, reason = await self._choose(consistent)
        if replica is None:
            self.fallbacks[reason] += 1
            return None
        try:
            conn = await stack.enter_async_context(replica.pool.connection())
        except Exception as exc:  # noqa: BLE001 - busy or unreachable: the primary serves
            if isinstance(exc, psycopg_pool.PoolTimeout) and not isinstance(exc, ServerUnreachable):
                self.fallbacks["busy"] += 1  # every connection out: the replica is fine
            else:
                self._failed(replica, exc)
            return None
        # Noted like a read's, so that a check finding the replica hung cuts it too;
        # forgotten before the pool takes the connection back.
        replica.lent.add(conn)
        stack.callback(replica.lent.discard, conn)
        replica.reads += 1
        return conn

    def _failed(self, replica: Replica, why: Exception | str) -> None:
        if replica.state.up:
            _log.warning("read replica %s failed; reading the primary: %s", replica.name, why)
        replica.state = ReplicaState()
        replica.abandon()
        self.fallbacks["failed"] += 1

    async def _choose(self, consistent: bool) -> tuple[Replica | None, str]:
        answering = [r for r in self.replicas if r.state.up]
        if not answering:
            return None, "down"
        bound = self._config.max_replica_lag
        close = [r for r in answering if r.state.lag is not None and r.state.lag <= bound]
        if not close:
            return None, "lag"
        start = next(self._turn)
        ordered = [close[(start + i) % len(close)] for i in range(len(close))]
        if not consistent:
            return ordered[0], ""
        return await self._caught_up(ordered)

    async def _caught_up(self, ordered: list[Replica]) -> tuple[Replica | None, str]:
        try:
            needed = int(await self._primary.fetch_value(_INSERTED_SQL))
        except BackendUnavailable:
            return None, "primary"  # the read on the primary then says what is wrong
        for replica in ordered:
            if replica.state.replayed >= needed:
                return replica, ""
        deadline = monotonic() + self._config.replica_wait
        pause = 0.001
        while True:
            for replica in ordered:
                replayed = await self._replayed(replica, max(0.25, deadline - monotonic()))
                if replayed is not None and replayed >= needed:
                    return replica, ""
            if monotonic() + pause > deadline:
                return None, "behind"
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def _replayed(self, replica: Replica, bound: float) -> int | None:
        # Bounded by what is left of replica_wait (a replica that does not answer in that
        # time cannot serve this read anyway), but not so tightly that a busy one has its
        # connection cut for answering in 60 ms.
        try:
            async with replica.pool.connection(timeout=min(bound, replica.pool.timeout)) as conn:
                row = await _ask(conn, _REPLAYED_SQL, bound)
        except Exception:  # noqa: BLE001 - unreachable or hung now: the next check says more
            return None
        if row is None or row["replayed"] is None:
            return None
        replayed = int(row["replayed"])
        replica.state.replayed = max(replica.state.replayed, replayed)
        return replayed

    async def _primary_lsn(self) -> int:
        return int(await self._primary.fetch_value(_PRIMARY_LSN_SQL))

    def _view(self, replica: Replica, primary: Database) -> Database:
        key = (primary.tenant, primary.raw, primary.names_tenant)
        view = replica.views.get(key)
        if view is None:
            view = primary.on_pool(replica.pool, replica.lent)
            replica.views[key] = view
        return view

    def stats(self) -> list[tuple[str, ReplicaState, int]]:
        """Each replica's name, latest state and reads served, for the metrics."""
        return [(r.name, r.state, r.reads) for r in self.replicas]


async def open_replicas(
    config: PostgresConfig,
    conninfos: list[str],
    primary: Database,
    cursor_factory: type[AsyncCursor[Any]] | None,
) -> Replicas:
    """Pools on ``conninfos`` (opened in the background: a replica that is down is skipped
    until it answers), checked once before this returns."""
    replicas = []
    try:
        for index, conninfo in enumerate(conninfos):
            pool = await open_pool(
                config,
                conninfo,
                name=f"agency-data-replica-{index}",
                cursor_factory=cursor_factory,
                # A replica that cannot give a connection soon is passed over for the primary.
                timeout=min(config.pool_timeout, _CHECKOUT_BOUND),
                # Through PgBouncer like the primary's, when the config says so.
                pgbouncer=config.pgbouncer,
                wait=False,
            )
            replicas.append(Replica(name=f"replica-{index}", pool=pool))
        made = Replicas(replicas, primary, config)
        await made.start()
    except BaseException:
        for replica in replicas:
            await replica.pool.close()
        raise
    return made


async def _ask(conn: AsyncConnection[DictRow], query: LiteralString, bound: float) -> DictRow:
    """The row of ``query``, or TimeoutError after ``bound`` seconds.

    A standby that hangs (stopped, or cut off) answers nothing while its socket stays open.
    Cancelling the query would wait seconds more for the server to acknowledge the cancel;
    the socket is shut instead, which ends the wait at once.
    """
    cut: list[bool] = []

    def cut_off() -> None:
        cut.append(True)
        _shut(conn)

    timer = asyncio.get_running_loop().call_later(bound, cut_off)
    try:
        row = await (await conn.execute(query)).fetchone()
    except psycopg.OperationalError:
        if cut:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
    assert row is not None
    return row


def _shut(conn: AsyncConnection[Any]) -> None:
    # shutdown() acts on the connection itself, through a duplicate of its descriptor: the
    # read waiting on the original wakes to end-of-file, and the pool discards the connection.
    try:
        with socket.fromfd(conn.pgconn.socket, socket.AF_UNIX, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass  # closed meanwhile: nothing left to cut off
